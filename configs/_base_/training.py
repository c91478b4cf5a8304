# Optimisation and bookkeeping, as the released model was trained (README "Training").
train = dict(
    batch_size=4,            # per GPU
    max_steps=None,          # stop after this many optimizer steps (None: run num_epochs)
    num_epochs=100,
    joint_training=0.1,      # probability that a batch is trained "as images" (per-frame attention)
    mixed_precision='fp16',  # no | fp16 | bf16
    grad_clip=0.01,          # max gradient norm (None: no clipping; the norm is still logged)
    save_model_steps=1000,
    save_epoch_end=True,     # also save at the end of every epoch
    keep_last=3,             # checkpoints kept (None or 0: all)
    eval_every=1000,         # steps between held-out preview reconstructions (0: off)
    log_every=10,
    seed=0,
    ema_decay=None,          # e.g. 0.9999 to keep an EMA of the weights
    max_nonfinite=10,        # consecutive non-finite steps before the run stops
    load_from=None,          # DiT weights to start from (.pth or .safetensors); None: random init (from scratch)
)
optimizer = dict(
    type='CAME',             # CAME | AdamW
    lr=2e-5,                 # base lr, at base_batch_size when auto_lr is set
    auto_lr=dict(rule='sqrt', base_batch_size=256),   # lr x (effective batch / 256) ** 0.5 ('linear': ** 1);
                                                      # None: lr as given
    betas=(0.9, 0.999, 0.9999),
    eps=(1e-30, 1e-16),
    weight_decay=0.0,
)
lr_schedule = dict(warmup_steps=1000)
