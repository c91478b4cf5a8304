# Training data: clips of num_frames_per_video frames at time_stride (README "Training").
data = dict(
    video_list=[],           # .txt (one path per line) / .json (list of paths or {"path": ...}) files, or folders
    num_frames_per_video=8,
    time_stride=4,
    sample_size=1024,        # clip frames are sample_size x sample_size
    transform='crop',        # 'crop': centre crop at native scale, zero pad where smaller (the original's);
                             # 'resize_crop': short side resized to sample_size, then centre crop
    random_flip=True,        # mirror the whole clip with probability 0.5
    num_workers=4,           # DataLoader worker processes per GPU
    max_bad_fraction=0.1,    # stop when more than this fraction of the list is unreadable
    cached_latents=None,     # folder written by tools/cache_latents.py; skips both encoders
    eval_video=None,         # clip for the train.eval_every previews; None: hold out the last listed video
)
