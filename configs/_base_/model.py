# Refiner DiT (PixArt-Sigma XL/2 with 3D + grid attention) and the frozen stages.
model = dict(
    input_size=128,          # latent pixels of one spatial tile (= sample_size / 8)
    patch_size=2,
    in_channels=20,          # 4 noisy SVD-latent channels + 16 compressor channels
    hidden_size=1152,
    depth=28,
    num_heads=16,
    mlp_ratio=4.0,
    learn_sigma=True,        # 8 output channels: eps and the variance interpolation value
    pe_interpolation=1.0,
    attn_strides=None,       # per layer: None = full 3D attention, [ts, xs] = grid attention
    lats_per_vid=8,          # frames per temporal window
    fp32_attention=False,
    grad_checkpointing=False,
)

sr_scale = 4                 # compressor latent (H/32) -> SVD latent (H/8)
scale_factor = 0.13025       # SVD VAE latent scale

compressor = dict(chunk_size=8)      # frames per compressor call (memory flat in clip length)
previewer = dict(chunk_size=8)
vae = dict(
    config=dict(),           # empty: read config.json from weights.vae; keys given: build that (small) VAE
    decode_chunk=4,          # frames per SVD temporal-decoder call (as SVD was used)
    decode_overlap=2,        # frames shared (blended) by consecutive decoder chunks; 0 = the original's (README)
    encode_chunk=8,
    sample_posterior=True,   # training target x0: a posterior sample (False: the posterior mean)
    tile_size=0,             # >0: decode in spatial tiles of this many latent pixels (very large frames)
    tile_overlap=16,         # latent pixels blended between neighbouring decoder tiles
)

# Where the released weights live (fetched by `bash pretrained/download.sh`).
weights = dict(
    dit='pretrained/s1024.effn-f32.pth',
    compressor='pretrained/effnet_encoder.safetensors',
    previewer='pretrained/previewer.safetensors',
    vae='pretrained/svd_vae',
)
random_init = False          # True (every stage) or a list of stages: seeded random weights in place of the
                             # released files above; a `weights` entry naming another file is always loaded
init_seed = 0
