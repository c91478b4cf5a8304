# Ablation: full 3D attention over all tokens of the clip in every layer (no grid layers).
_base_ = ['../s1024.effn-f32.py']

model = dict(attn_strides=None)
