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
# A demo that visibly learns in well under a minute on a CPU: 60 steps, a 20-step warm-up to lr 5e-4, a log line
# (the mean loss of the last 10 steps) every 10 steps, a checkpoint every 20 (a one-video list makes every step an
# epoch, hence no epoch-end saves).
optimizer = dict(lr=5e-4, auto_lr=dict(rule='sqrt', base_batch_size=1))   # the released rule; at batch 1 lr as given
lr_schedule = dict(warmup_steps=20)
train = dict(batch_size=1, max_steps=60, mixed_precision='no', save_model_steps=20, save_epoch_end=False,
             eval_every=0, log_every=10, load_from=None)
sampling = dict(steps=2)
