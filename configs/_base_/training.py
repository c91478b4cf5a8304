# Optimisation and bookkeeping, as the released model was trained.
train = dict(
    batch_size=4,            # per GPU
    max_steps=None,          # stop after this many optimizer steps (None: run num_epochs)
    num_epochs=100,
    joint_training=0.1,      # probability that a batch is trained "as images" (per-frame attention)
    mixed_precision='fp16',  # no | fp16 | bf16
    grad_clip=0.01,
    save_model_steps=1000,
    keep_last=3,
    eval_every=1000,         # steps between held-out preview reconstructions
    log_every=10,
    seed=0,
    ema_decay=None,          # e.g. 0.9999 to keep an EMA of the weights
    max_nonfinite=10,        # consecutive non-finite steps before the run stops
    load_from=None,          # e.g. pretrained/s1024.effn-f32.pth to fine-tune
)
optimizer = dict(
    type='CAME',             # CAME | AdamW
    lr=2e-5,
    betas=(0.9, 0.999, 0.9999),
    eps=(1e-30, 1e-16),
    weight_decay=0.0,
)
lr_schedule = dict(warmup_steps=1000)
