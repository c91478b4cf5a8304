"""Training data: video lists → clips (or cached latents) → resumable, per-rank batches.

Every random choice (clip start, flip, replacement of a bad file, cached variant) comes from a seed that is a
pure function of (train.seed, epoch, position in the epoch), so a run resumed at batch N sees exactly the
batches an uninterrupted run would have seen, with any number of DataLoader workers.
"""
import hashlib
import json
import logging
import os
import random
import signal
from pathlib import Path

import torch
from safetensors import safe_open

from tools.video import read as video_io
from tools.video.frames import TRANSFORMS, cascadev_train_crop, center_crop, resize_short_side
from tools.video.lists import VideoListError, read_video_list
from tools.video.read import VideoReadError, probe_video

log = logging.getLogger('cascadev.data')

CACHE_FORMAT = 'cascadev-latents-1'
MAX_TRIES = 50  # replacement attempts for one sample before giving up


class DataError(ValueError):
    """A data list or cache is unusable; the message is one line naming the file, the rule and the fix."""


def derive_seed(*ints):
    """A 63-bit seed that depends on every integer given (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr(tuple(int(i) for i in ints)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, 'little') >> 1


# ---- video lists -----------------------------------------------------------------------------------

def collect_videos(video_list):
    """All paths of `data.video_list` (a string or a list of entries), in order, duplicates kept."""
    entries = [video_list] if isinstance(video_list, (str, os.PathLike)) else list(video_list or [])
    if not entries:
        raise DataError("data.video_list is empty; set it to .txt/.json lists or folders of videos "
                        "(e.g. --cfg-options \"data.video_list=['data/train.txt']\")")
    try:
        paths = [p for entry in entries for p in read_video_list(entry)]
    except VideoListError as e:
        raise DataError(str(e)) from None
    if not paths:
        raise DataError(f"data.video_list {entries}: no videos found; check the lists and folders")
    return paths


class BadSamples:
    """Bad files seen anywhere in the run: each is logged once; too many stops the run with the list."""

    def __init__(self, total, max_fraction, report_path=None):
        self.total, self.max_fraction, self.report_path = total, max_fraction, report_path
        self.seen = {}

    def add(self, bad):
        """`bad`: iterable of (path, reason). Raises DataError once more than max_fraction of the list is bad."""
        for path, reason in bad:
            if path not in self.seen:
                self.seen[path] = reason
                log.warning(f"skipping bad video {path}: {reason} (replaced by another clip)")
        if len(self.seen) > self.max_fraction * self.total:
            listing = '\n'.join(f'{p}\t{r}' for p, r in self.seen.items())
            where = ''
            if self.report_path:
                Path(self.report_path).parent.mkdir(parents=True, exist_ok=True)
                Path(self.report_path).write_text(listing + '\n')
                where = f' (full list: {self.report_path})'
            shown = ', '.join(list(self.seen)[:10]) + (', ...' if len(self.seen) > 10 else '')
            raise DataError(f"{len(self.seen)} of {self.total} videos in data.video_list are bad, more than "
                            f"data.max_bad_fraction={self.max_fraction}: {shown}{where}; fix or remove them")


# ---- clips -----------------------------------------------------------------------------------------

def frames_needed(data_cfg):
    """Frames a video needs for one clip: stride·frames, as the original asks (RECIPE.md §12)."""
    return data_cfg.num_frames_per_video * data_cfg.time_stride


def read_frames(path, num_frames, stride, start):
    """RGB uint8 frames (T, H, W, 3): start, start+stride, ... of the file (the one place data decodes)."""
    return video_io.read_frames(path, num_frames=num_frames, stride=stride, start=start)[0]


def frames_to_clip(frames, size, transform='crop', flip=False):
    """RGB uint8 frames (T, H, W, 3) -> training clip (3, T, size, size) float32 in [-1, 1].

    transform 'crop' (the original's, RECIPE.md §12): no resizing; the centred size x size window at native
    scale, zero-padded (black, centred) where a side is smaller (tools.video.frames.cascadev_train_crop).
    'resize_crop': the short side resized to `size` (antialiased bilinear), then the centre square: for
    videos whose resolution differs much from the model's. `flip` mirrors the whole clip after the crop.
    Values map as (x/255 − 0.5)/0.5.
    """
    if transform not in TRANSFORMS:
        raise DataError(f"data.transform={transform!r}; use one of {', '.join(TRANSFORMS)}")
    if transform == 'crop':
        frames = cascadev_train_crop(frames, size)                          # (T, size, size, 3)
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(255).sub(0.5).div(0.5)   # (3, T, H, W)
    if transform == 'resize_crop':
        video = center_crop(resize_short_side(video, size), size, size)
    return (video.flip(-1) if flip else video).contiguous()


def load_clip(path, data_cfg, start, flip):
    """The clip of `path` at frame `start` under data_cfg (frames, stride, sample_size, transform): (3, T, S, S)."""
    frames = read_frames(path, data_cfg.num_frames_per_video, data_cfg.time_stride, start)
    return frames_to_clip(frames, data_cfg.sample_size, data_cfg.get('transform', 'crop'), flip)


def random_clip(path, data_cfg, seed):
    """(clip, start, flip): start uniform over [0, N − stride·frames], flip with p = 0.5 (data.random_flip),
    both drawn from `seed`; VideoReadError for unreadable or short files."""
    info = probe_video(path)
    need = frames_needed(data_cfg)
    if info.num_frames < need:
        raise VideoReadError(f"{path}: too short ({info.num_frames} frames; a clip of "
                             f"{data_cfg.num_frames_per_video} frames at stride {data_cfg.time_stride} needs {need})")
    rng = random.Random(seed)
    start = rng.randrange(info.num_frames - need + 1)
    flip = bool(data_cfg.random_flip) and rng.random() < 0.5
    return load_clip(path, data_cfg, start, flip), start, flip


class VideoClips(torch.utils.data.Dataset):
    """Indexed by (index, sample_seed); returns {'video' (3,T,S,S), 'path', 'bad': [(path, reason)]}."""

    def __init__(self, paths, data_cfg):
        self.paths, self.data_cfg = list(paths), data_cfg
        self.known_bad = {}  # per worker: files already found bad are skipped without a second read

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, item):
        index, seed = item
        bad = []
        for attempt in range(MAX_TRIES):
            path = self.paths[index]
            if path not in self.known_bad:
                try:
                    video, _, _ = random_clip(path, self.data_cfg, derive_seed(seed, attempt, 0))
                    return {'video': video, 'path': path, 'bad': bad}
                except Exception as e:  # decoder errors come in many types; the reason is reported
                    self.known_bad[path] = _reason(e, path)
            bad.append((path, self.known_bad[path]))
            index = random.Random(derive_seed(seed, attempt, 1)).randrange(len(self.paths))
        raise DataError(f"data.video_list: {MAX_TRIES} videos in a row were bad (last: {bad[-1][0]}: "
                        f"{bad[-1][1]}); check the lists")


def _reason(exc, path):
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return msg[len(path) + 2:] if msg.startswith(f'{path}: ') else msg


# ---- cached latents --------------------------------------------------------------------------------

def cache_meta(cfg):
    """The settings a latent cache depends on; training refuses a cache written with other values."""
    return {'num_frames_per_video': cfg.data.num_frames_per_video, 'time_stride': cfg.data.time_stride,
            'sample_size': cfg.data.sample_size, 'transform': cfg.data.get('transform', 'crop'),
            'scale_factor': cfg.scale_factor}


def read_cache_index(folder, cfg):
    """All clips listed by `folder/index_*.json` -> {video path: [clip entries]} (entries carry shard/key/flip)."""
    folder = Path(folder)
    indices = sorted(folder.glob('index_*.json'))
    if not indices:
        raise DataError(f"data.cached_latents: {folder} has no index_*.json; write it with "
                        f"python tools/cache_latents.py CONFIG --out {folder}")
    videos = {}
    for index in indices:
        meta = json.loads(index.read_text())
        if meta.get('format') != CACHE_FORMAT:
            raise DataError(f"{index}: format {meta.get('format')!r} is not {CACHE_FORMAT!r}; re-run "
                            f"tools/cache_latents.py")
        want = cache_meta(cfg)
        for key, value in want.items():
            if meta['meta'].get(key) != value:
                raise DataError(f"{index}: latents were cached with {key}={meta['meta'].get(key)} but the config "
                                f"has {value}; re-run tools/cache_latents.py with this config or fix the config")
        for clip in meta['clips']:
            clip = dict(clip, shard=str(folder / clip['shard']))
            videos.setdefault(clip['path'], []).append(clip)
    if not videos:
        raise DataError(f"data.cached_latents: {folder} lists no clips; re-run tools/cache_latents.py")
    return videos


class CachedClips(torch.utils.data.Dataset):
    """Indexed by (index, sample_seed); returns {'mean', 'std' (4,T,h,w), 'ref' (16,T,h/4,w/4), 'path', 'bad'}."""

    def __init__(self, videos, data_cfg):
        self.paths = sorted(videos)
        self.clips = [[c for c in videos[p] if data_cfg.random_flip or not c['flip']] or videos[p]
                      for p in self.paths]
        self.handles = {}  # per worker: open shards (memory-mapped)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, item):
        index, seed = item
        clip = random.Random(seed).choice(self.clips[index])
        shard = self.handles.get(clip['shard'])
        if shard is None:
            shard = self.handles[clip['shard']] = safe_open(clip['shard'], framework='pt')
        get = lambda name: shard.get_tensor(f"{clip['key']}.{name}")  # noqa: E731
        return {'mean': get('mean'), 'std': get('std'), 'ref': get('ref'), 'path': self.paths[index], 'bad': []}


# ---- batches ---------------------------------------------------------------------------------------

class ClipSampler:
    """Infinite batch sampler of (index, sample_seed) for one rank, starting at global batch `start`.

    Epoch e is a permutation drawn from (seed, e), tiled when the list is shorter than one global batch;
    batch b of the epoch takes items [b·B·W, (b+1)·B·W) and rank r the r-th block of B of them.
    """

    def __init__(self, num_items, batch_size, seed=0, rank=0, world_size=1, start=0):
        self.n, self.batch, self.seed, self.rank, self.world, self.start = \
            num_items, batch_size, seed, rank, world_size, start
        self.batches_per_epoch = max(1, num_items // (batch_size * world_size))

    def epoch_order(self, epoch):
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        need = self.batches_per_epoch * self.batch * self.world
        perm = torch.cat([torch.randperm(self.n, generator=g) for _ in range(-(-need // self.n))])
        return perm[:need].tolist()

    def __iter__(self):
        it, order, order_epoch = self.start, None, None
        while True:
            epoch, b = divmod(it, self.batches_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = self.epoch_order(epoch), epoch
            first = (b * self.world + self.rank) * self.batch
            yield [(order[first + j], derive_seed(self.seed, epoch, first + j)) for j in range(self.batch)]
            it += 1


def collate(samples):
    """Stack tensors, keep paths as a list, concatenate the bad-file reports."""
    out = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if isinstance(samples[0][k], torch.Tensor)}
    out['path'] = [s['path'] for s in samples]
    out['bad'] = [b for s in samples for b in s['bad']]
    return out


def _init_worker(worker_id):
    """Workers leave Ctrl-C / SIGTERM to the main process, which saves a checkpoint and shuts them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    info = torch.utils.data.get_worker_info()
    torch.manual_seed(info.seed % 2 ** 63)  # samples draw from their own seeds; this only tidies the globals
    random.seed(info.seed)


def build_dataset(cfg, hold_out_last=False):
    """(dataset, missing, total, held_out) from cfg.data: cached latents if data.cached_latents, else clips.

    `missing` lists (path, 'file not found') for list entries that do not exist (left out of the dataset),
    `total` counts every listed video, and with `hold_out_last` the last usable video (when there are at
    least two) is left out of training and returned as `held_out` (else None).
    """
    if cfg.data.get('cached_latents'):
        videos = read_cache_index(cfg.data.cached_latents, cfg)
        held_out = sorted(videos)[-1] if hold_out_last and len(videos) >= 2 else None
        videos.pop(held_out, None)
        return CachedClips(videos, cfg.data), [], len(videos) + (held_out is not None), held_out
    paths = collect_videos(cfg.data.video_list)
    missing = [(p, 'file not found') for p in paths if not os.path.isfile(p)]
    gone = {p for p, _ in missing}
    usable = [p for p in paths if p not in gone]
    if not usable:
        raise DataError(f"data.video_list: none of the {len(paths)} listed videos exists (first: {paths[0]}); "
                        f"check the paths in the lists (relative paths start at the list's folder)")
    held_out = usable[-1] if hold_out_last and len(set(usable)) >= 2 else None
    usable = [p for p in usable if p != held_out]
    return VideoClips(usable, cfg.data), missing, len(paths), held_out


def build_loader(dataset, cfg, rank=0, world_size=1, start=0):
    """An endless DataLoader of this rank's batches, starting at global batch `start`."""
    sampler = ClipSampler(len(dataset), cfg.train.batch_size, cfg.train.seed, rank, world_size, start)
    workers = cfg.data.get('num_workers', 0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate, worker_init_fn=_init_worker,
        persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
        prefetch_factor=2 if workers > 0 else None)
    return loader, sampler
