# Reconstruction sampler defaults (recon.py flags override them).
sampling = dict(
    scheduler='EulerA',      # EulerA | DDIM | DPMS
    steps=8,
    seed=42,
    tile_blend='smooth',     # smooth (no seams) | overwrite (the original's last-tile-wins)
)
device = 'auto'              # auto | cpu | cuda
dtype = 'auto'               # auto (bf16 on CUDA GPUs with native bf16, else fp32) | fp32 | fp16 | bf16
