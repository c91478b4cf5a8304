# Ablation: grid attention in every layer (the released [1, 4] / [4, 1] alternation, no full-3D layers).
_base_ = ['../s1024.effn-f32.py']

model = dict(attn_strides=[[1, 4], [4, 1]] * 14)
