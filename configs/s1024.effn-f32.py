# The released CascadeV model: 1x32x32 compression, 1024px, 8-frame clips, and the recipe it was trained with.
# Fine-tune it on your own data: replace video_list below, then `bash train_vae.sh configs/s1024.effn-f32.py`.
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
data = dict(
    # your training videos: .txt lists (one path per line, relative to the list's folder), .json lists,
    # folders of videos or video files; e.g. ['data/train.txt', '/data/clips/']
    video_list=['data/train.txt'],
    num_frames_per_video=8,
    time_stride=4,
    sample_size=1024,
    transform='crop',        # native-scale centre crop, as the release was trained ('resize_crop': resize first)
)
vae = dict(sample_posterior=True)                              # x0 = a sample of the SVD VAE posterior
optimizer = dict(lr=2e-5, auto_lr=dict(rule='sqrt', base_batch_size=256))   # 2.5e-6 at 1 GPU x batch 4
train = dict(load_from='pretrained/s1024.effn-f32.pth')      # fine-tune the release (None: from scratch)
