# Ablation: factorised 2+1D attention, alternating per layer between
#   per-frame spatial attention [-1, 1]: one window per frame, each over the whole frame, and
#   per-position temporal attention [1, -1]: one window over all frames per token position.
# -1 = one window per position of that axis, so the same file holds at any clip length and tile size
# (at the released size [-1, 1] = [8, 1] and [1, -1] = [1, 64]: lats_per_vid 8, 64 x 64 tokens per tile).
_base_ = ['../s1024.effn-f32.py']

model = dict(attn_strides=[[-1, 1], [1, -1]] * 14)
