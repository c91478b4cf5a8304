# Toy-size config with the released structure: tests and CI run it end to end on CPU in seconds.
# The released files get seeded random weights (random_init): outputs are meaningless by design. A DiT you
# trained with this config is loaded when you name it (weights.dit=WORK_DIR/checkpoints/step_N/model.safetensors).
_base_ = ['./s1024.effn-f32.py']

random_init = True
model = dict(
    input_size=8,            # 64-pixel tiles
    depth=4,
    hidden_size=64,
    num_heads=4,
    lats_per_vid=4,
    fp32_attention=False,
    grad_checkpointing=False,
    attn_strides=[[1, 2], [2, 1], None, None],
)
vae = dict(
    config=dict(             # a small AutoencoderKLTemporalDecoder
        block_out_channels=[32, 32, 32, 32],   # 4 levels: 8x down-sampling as in SVD; widths: multiples of 32 (GroupNorm)
        down_block_types=['DownEncoderBlock2D'] * 4,
        layers_per_block=1,
        latent_channels=4,
        sample_size=64,
    ),
    decode_chunk=4,
)
data = dict(num_frames_per_video=4, time_stride=2, sample_size=64, num_workers=0)
optimizer = dict(auto_lr=dict(rule='sqrt', base_batch_size=1))   # the released rule; at tiny's batch 1 the lr as given
train = dict(batch_size=1, max_steps=10, mixed_precision='no', save_model_steps=5,
             eval_every=0, log_every=1, load_from=None)
sampling = dict(steps=2)
