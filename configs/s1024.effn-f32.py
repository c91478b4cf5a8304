# The released CascadeV model: 1x32x32 compression, 1024px, 8-frame clips.
_base_ = [
    './_base_/model.py', './_base_/diffusion.py', './_base_/sampling.py',
    './_base_/data.py', './_base_/training.py',
]

model = dict(
    input_size=128,
    depth=28,
    hidden_size=1152,
    num_heads=16,
    pe_interpolation=2.0,
    lats_per_vid=8,
    fp32_attention=True,
    grad_checkpointing=True,
    attn_strides=[[1, 4], [4, 1], [1, 4], [4, 1],
                  [1, 4], [4, 1], [1, 4], [4, 1],
                  None, None, None, None,
                  [1, 4], [4, 1], [1, 4], [4, 1],
                  [1, 4], [4, 1], [1, 4], [4, 1],
                  None, None, None, None,
                  None, None, None, None],
)
data = dict(num_frames_per_video=8, time_stride=4, sample_size=1024)
