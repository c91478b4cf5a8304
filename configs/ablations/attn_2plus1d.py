# Ablation: factorised 2+1D attention, alternating per layer between
#   per-frame spatial attention [L, 1]: L windows of one frame each, one window over the whole frame, and
#   per-position temporal attention [1, G]: one window over all L frames, G x G windows of one token each,
# with L = lats_per_vid = 8 and G = input_size / patch_size = 64 tokens per side.
_base_ = ['../s1024.effn-f32.py']

model = dict(attn_strides=[[8, 1], [1, 64]] * 14)
