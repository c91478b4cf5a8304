"""The latent cache: training clips encoded once by both frozen encoders, so training can skip them
(data.cached_latents=DIR; read back by tools.training.data.read_cache_index and CachedClips).

For every video of data.video_list, K clips (starts evenly spaced over [0, N − stride·frames]) are read
exactly as training reads them (data.transform), and also mirrored when data.random_flip is set. Each of
several launched processes encodes every world-th video (its own share) and writes its own index. Each clip
stores the SVD posterior mean and std (× scale_factor, (4, T, S/8, S/8)) and the raw compressor latent
((16, T, S/32, S/32)), fp32, in shards `latents_r{rank}_{i}.safetensors` (keys `{clip}.mean|std|ref`) listed
by `index_r{rank}.json` (format CACHE_FORMAT, the cache_meta settings, the clips and the bad files).
Training draws x0 = mean + std·ε (vae.sample_posterior) or mean, exactly as from the encoders.
"""
import json
import logging
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors.torch import save_file

from models.weights import DTYPES, build_compressor, build_vae, check_weights
from tools.files import atomic_write
from tools.training.data import CACHE_FORMAT, BadSamples, cache_meta, collect_videos, frames_needed, load_clip
from tools.video.read import VideoReadError, probe_video

log = logging.getLogger('cascadev.cache')


def clip_starts(num_frames, need, k):
    """k clip starts spread evenly over [0, num_frames − need] (fewer when the video is short); VideoReadError
    when num_frames < need."""
    last = num_frames - need
    if last < 0:
        raise VideoReadError(f"too short ({num_frames} frames; a clip needs {need} = stride x frames)")
    if k <= 1 or last == 0:
        return [max(0, last) // 2] if k >= 1 else []
    return sorted({round(i * last / (k - 1)) for i in range(k)})


def process_state(cfg):
    """(rank, world size, device) of this process; several launched CPU processes form one gloo group."""
    state = PartialState(cpu=cfg.get('device', 'auto') == 'cpu' or not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.device


def encoder_dtype(cfg, device, name=None):
    """The encoders' torch dtype: `name` (a models.weights.DTYPES key) if given, else train.mixed_precision's
    on CUDA and fp32 elsewhere."""
    mixed = {'no': 'fp32'}.get(cfg.train.mixed_precision, cfg.train.mixed_precision)
    return DTYPES[name or (mixed if device.type == 'cuda' else 'fp32')]


class Shards:
    """The clips of one rank as safetensors shards of at most `shard_size` clips, each written atomically."""

    def __init__(self, out, rank, shard_size):
        self.out, self.rank, self.shard_size = Path(out), rank, shard_size
        self.tensors, self.index, self.clips = {}, 0, []

    def name(self):
        return f'latents_r{self.rank:02d}_{self.index:05d}.safetensors'

    def add(self, path, start, flip, mean, std, ref):
        """One clip's latents (1, C, T, h, w) under the next key; the shard is written once it is full."""
        key = f'{len(self.clips)}'
        self.tensors.update({f'{key}.mean': mean[0].float().cpu().contiguous(),
                             f'{key}.std': std[0].float().cpu().contiguous(),
                             f'{key}.ref': ref[0].float().cpu().contiguous()})
        self.clips.append({'path': path, 'start': start, 'flip': flip, 'key': key, 'shard': self.name()})
        if len(self.tensors) >= 3 * self.shard_size:
            self.flush()

    def flush(self):
        if self.tensors:
            tensors = self.tensors
            atomic_write(self.out / self.name(), lambda tmp: save_file(tensors, str(tmp)))
            self.tensors, self.index = {}, self.index + 1


@torch.no_grad()
def encode_video(path, cfg, stages, shards, clips_per_video, device, dtype):
    """Every clip of one video (each start, unflipped and, with data.random_flip, mirrored) into `shards`."""
    d = cfg.data
    compressor, vae = stages
    flips = [False, True] if d.random_flip else [False]
    for start in clip_starts(probe_video(path).num_frames, frames_needed(d), clips_per_video):
        for flip in flips:
            video = load_clip(path, d, start, flip)[None].to(device, dtype)     # (1, 3, T, S, S)
            mean, std = vae.encode_moments(video)                              # (1, 4, T, S/8, S/8), scaled
            ref = compressor.encode(video)                                     # (1, 16, T, S/32, S/32), raw
            shards.add(path, start, flip, mean, std, ref)


def cache_latents(cfg, out, clips_per_video=1, shard_size=64, rank=0, world_size=1, device='cpu',
                  dtype=torch.float32):
    """Encode this rank's share (every world_size-th video from `rank`) of data.video_list into the folder
    `out`; return the number of clips written. Unreadable or short videos are listed in the index and in
    bad_videos_r{rank}.txt; DataError once more than data.max_bad_fraction of the list is bad (and for list
    errors), MissingWeightsError / WeightsFormatError for the encoders' weights, OSError for a failed write."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d = cfg.data
    paths = collect_videos(d.video_list)
    bad = BadSamples(len(paths), d.max_bad_fraction, out / f'bad_videos_r{rank}.txt')
    mine = paths[rank::world_size]
    check_weights(cfg, ('compressor', 'vae'))                        # every missing file named at once
    stages = build_compressor(cfg, device, dtype), build_vae(cfg, device, dtype)
    shards = Shards(out, rank, shard_size)
    for i, path in enumerate(mine):
        try:
            encode_video(path, cfg, stages, shards, clips_per_video, device, dtype)
        except (VideoReadError, OSError) as e:  # unreadable or too short: counted against max_bad_fraction
            bad.add([(path, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)])
        log.info(f"[{i + 1}/{len(mine)}] {path}: {len(shards.clips)} clips so far")
    shards.flush()
    index = {'format': CACHE_FORMAT, 'meta': cache_meta(cfg), 'clips': shards.clips, 'bad': list(bad.seen.items())}
    atomic_write(out / f'index_r{rank:02d}.json', lambda tmp: tmp.write_text(json.dumps(index, indent=1)))
    return len(shards.clips)
