"""The latent cache: training clips encoded once by both frozen encoders, so training can skip them
(data.cached_latents=DIR; read back by tools.training.data.read_cache_index and CachedClips).

For every video of data.video_list, K clips (starts evenly spaced over [0, N − stride·frames]) are read
exactly as training reads them (data.transform), and also mirrored when data.random_flip is set. Each of
several launched processes encodes every world-th video (its own share) and writes its own index. Each clip
stores the SVD posterior mean and std (× scale_factor, (4, T, S/8, S/8)) and the raw compressor latent
((16, T, S/32, S/32)), fp32, in shards `latents_r{rank}_{i}.safetensors` (keys `{clip}.mean|std|ref`) listed
by `index_r{rank}.json` (format CACHE_FORMAT, the cache_meta settings, clips_per_video, the clips and the bad
files). The index is rewritten after every shard, which closes at a video's end, so a killed run leaves a
cache of the videos it finished. Training draws x0 = mean + std·ε (vae.sample_posterior) or mean, exactly as
from the encoders.

An output folder that already holds a cache is never changed unnoticed (survey): 'new' refuses it, 'resume'
adds the listed videos that no index names yet (same settings required), 'overwrite' replaces it.
"""
import json
import logging
import re
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors.torch import save_file

from models.weights import DTYPES, build_compressor, build_vae, check_weights
from tools.files import atomic_write
from models.weights import random_stages
from tools.training.data import (CACHE_FORMAT, BadSamples, DataError, cache_meta, collect_videos, frames_needed,
                                 load_clip)
from tools.video.read import VideoReadError, probe_video

log = logging.getLogger('cascadev.cache')
CACHE_FILE = re.compile(r'^(index_r\d+\.json|latents_r\d+_\d+\.safetensors|bad_videos_r\d+\.txt)(\.tmp)?$')
SHARD_NUMBER = re.compile(r'_(\d+)\.safetensors$')


# ---- what an output folder holds -------------------------------------------------------------------

def survey(out, mode, cfg, clips_per_video):
    """Check `out` for `mode` before any work -> {rank: index} of the cache there to extend (mode 'resume'),
    else {}. DataError (one line naming the folder and the flag to pass) for a file that is not part of a
    latent cache, for a cache under mode 'new', and for a cache of other settings under 'resume'."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: exists and is not a folder; pass a new folder")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    other = next((p for p in entries if not CACHE_FILE.match(p.name)), None)
    if other is not None:
        raise DataError(f"--out {out}: holds {other.name}, which is not part of a latent cache; pass a new or "
                        f"empty folder")
    indices = {int(p.name[7:-5]): p for p in entries if p.name.startswith('index_r') and p.suffix == '.json'}
    if not entries or mode == 'overwrite':
        return {}
    if mode == 'new':
        clips = sum(len(_read_index(p)['clips']) for p in indices.values())
        raise DataError(f"--out {out}: already holds a latent cache ({clips} clips); pass --resume to add the videos "
                        f"it lacks, --overwrite to replace it, or another --out")
    found = {rank: _read_index(p) for rank, p in indices.items()}
    want = {**cache_meta(cfg), 'clips_per_video': clips_per_video}
    for rank, index in found.items():
        have = {**index.get('meta', {}), 'clips_per_video': index.get('clips_per_video'), 'format': index.get('format')}
        for key, value in {**want, 'format': CACHE_FORMAT}.items():
            if have.get(key) != value:
                raise DataError(f"{indices[rank]}: written with {key}={have.get(key)!r}, now {value!r}; --resume "
                                f"needs the same settings (or pass --overwrite, or another --out)")
    return found


def _read_index(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot be read ({type(e).__name__}); pass --overwrite to replace the cache") from None


def remove_cache(out):
    """Delete the latent-cache files in `out` (survey has checked that it holds no others)."""
    for p in Path(out).iterdir():
        if CACHE_FILE.match(p.name):
            p.unlink()


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
    """(rank, world size, device, accelerate PartialState) of this process; several launched CPU processes
    form one gloo group."""
    state = PartialState(cpu=cfg.get('device', 'auto') == 'cpu' or not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.device, state


def encoder_dtype(cfg, device, name=None):
    """The encoders' torch dtype: `name` (a models.weights.DTYPES key) if given, else train.mixed_precision's
    on CUDA and fp32 elsewhere."""
    mixed = {'no': 'fp32'}.get(cfg.train.mixed_precision, cfg.train.mixed_precision)
    return DTYPES[name or (mixed if device.type == 'cuda' else 'fp32')]


class Shards:
    """The clips of one rank as safetensors shards, each written atomically once it holds `shard_size` clips
    at the end of a video (so a shard never splits a video); `clips` and `first_shard` continue an earlier
    run's index."""

    def __init__(self, out, rank, shard_size, clips=(), first_shard=0):
        self.out, self.rank, self.shard_size = Path(out), rank, shard_size
        self.tensors, self.index, self.clips = {}, first_shard, list(clips)

    def name(self):
        return f'latents_r{self.rank:02d}_{self.index:05d}.safetensors'

    def add(self, path, start, flip, mean, std, ref):
        """One clip's latents (1, C, T, h, w) under the next key; the shard is written once it is full."""
        key = f'{len(self.clips)}'
        self.tensors.update({f'{key}.mean': mean[0].float().cpu().contiguous(),
                             f'{key}.std': std[0].float().cpu().contiguous(),
                             f'{key}.ref': ref[0].float().cpu().contiguous()})
        self.clips.append({'path': path, 'start': start, 'flip': flip, 'key': key, 'shard': self.name()})

    def drop_since(self, n):
        """Forget the clips added after the first `n` (a video that failed half-way)."""
        for clip in self.clips[n:]:
            for name in ('mean', 'std', 'ref'):
                self.tensors.pop(f"{clip['key']}.{name}", None)
        del self.clips[n:]

    @property
    def full(self):
        return len(self.tensors) >= 3 * self.shard_size

    def flush(self):
        """Write the open shard (if any) -> True when one was written."""
        if not self.tensors:
            return False
        tensors = self.tensors
        atomic_write(self.out / self.name(), lambda tmp: save_file(tensors, str(tmp)))
        self.tensors, self.index = {}, self.index + 1
        return True


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


def write_index(out, rank, cfg, clips_per_video, shards, bad):
    """index_r{rank}.json: every clip in a written shard, and the bad files (atomic)."""
    written = {f'latents_r{rank:02d}_{i:05d}.safetensors' for i in range(shards.index)}
    index = {'format': CACHE_FORMAT, 'meta': cache_meta(cfg), 'clips_per_video': clips_per_video,
             'clips': [c for c in shards.clips if c['shard'] in written], 'bad': list(bad.items())}
    atomic_write(Path(out) / f'index_r{rank:02d}.json', lambda tmp: tmp.write_text(json.dumps(index, indent=1)))


def cache_latents(cfg, out, clips_per_video=1, shard_size=64, rank=0, world_size=1, device='cpu',
                  dtype=torch.float32, prior=None):
    """Encode this rank's share (every world_size-th video from `rank`) of data.video_list into the folder
    `out`; return the number of clips written now. `prior`: survey()'s {rank: index} of the cache to extend
    (its videos are skipped, this rank's clips kept); None: survey(out, 'new'), so an existing cache is
    refused. Unreadable or short videos are listed in the index and in bad_videos_r{rank}.txt; DataError once
    more than data.max_bad_fraction of the list is bad (and for list errors or a used `out`),
    MissingWeightsError / WeightsFormatError for the encoders' weights, OSError for a failed write."""
    prior = survey(out, 'new', cfg, clips_per_video) if prior is None else prior
    out, d = Path(out), cfg.data
    paths = collect_videos(d.video_list)
    bad = BadSamples(len(paths), d.max_bad_fraction, out / f'bad_videos_r{rank}.txt')
    done = {c['path'] for index in prior.values() for c in index['clips']} | \
        {p for index in prior.values() for p, _ in index.get('bad', [])}
    own = prior.get(rank, {})
    bad.seen.update(dict(own.get('bad', [])))
    mine = [p for p in paths[rank::world_size] if p not in done]
    check_weights(cfg, ('compressor', 'vae'))                        # every missing file named at once
    warn_random_encoders(cfg)
    out.mkdir(parents=True, exist_ok=True)
    stages = build_compressor(cfg, device, dtype), build_vae(cfg, device, dtype)
    shards = Shards(out, rank, shard_size, own.get('clips', []),
                    1 + max([int(SHARD_NUMBER.search(c['shard']).group(1)) for c in own.get('clips', [])], default=-1))
    before = len(shards.clips)
    for i, path in enumerate(mine):
        n = len(shards.clips)
        try:
            encode_video(path, cfg, stages, shards, clips_per_video, device, dtype)
        except (VideoReadError, OSError) as e:  # unreadable or too short: counted against max_bad_fraction
            shards.drop_since(n)
            bad.add([(path, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)])
        if shards.full and shards.flush():
            write_index(out, rank, cfg, clips_per_video, shards, bad.seen)
        log.info(f"[{i + 1}/{len(mine)}] {path}: {len(shards.clips) - before} clips so far")
    shards.flush()
    write_index(out, rank, cfg, clips_per_video, shards, bad.seen)
    return len(shards.clips) - before


def warn_random_encoders(cfg):
    """One warning line when the encoders have random_init weights (the cache is then meaningless)."""
    random = [s for s in ('compressor', 'vae') if s in random_stages(cfg)]
    if random:
        log.warning(f"random_init: the {' and '.join(random)} have seeded random weights, so these latents are "
                    f"meaningless outside this config (tests and demos only)")
