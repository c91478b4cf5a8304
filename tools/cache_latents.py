"""Pre-encode training clips once, so training skips both frozen encoders (data.cached_latents=DIR).

    python tools/cache_latents.py CONFIG --out DIR [--clips-per-video K] [--cfg-options k=v ...]
    accelerate launch --num_processes 8 tools/cache_latents.py CONFIG --out DIR      # one share per GPU

For every video of data.video_list, K clips (starts evenly spaced over [0, N − stride·frames]) are read
exactly as training reads them (data.transform), and also mirrored when data.random_flip is set. Each of
the launched processes encodes every world-th video (its own share) and writes its own index.
Exit codes: 0 done, 2 config / weights / video-list errors (before any work), 1 too many bad videos. Each clip stores the SVD posterior
mean and std (× scale_factor, (4, T, S/8, S/8)) and the raw compressor latent ((16, T, S/32, S/32)), fp32,
in shards `latents_r{rank}_{i}.safetensors` (keys `{clip}.mean|std|ref`) listed by `index_r{rank}.json`.
Training draws x0 = mean + std·ε (vae.sample_posterior) or mean, exactly as from the encoders.
"""
import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tools/cache_latents.py` from anywhere

import torch
from safetensors.torch import save_file

from models.weights import DTYPES, WeightsFormatError, build_compressor, build_vae, check_weights
from tools.config import ConfigError, add_cfg_options, load_config
from tools.training.data import (CACHE_FORMAT, BadSamples, DataError, cache_meta, collect_videos, frames_needed,
    load_clip)
from tools.files import atomic_write
from tools.video.read import VideoReadError, probe_video

log = logging.getLogger('cascadev.cache')


def clip_starts(num_frames, need, k):
    """k clip starts spread evenly over [0, num_frames − need] (fewer when the video is short)."""
    last = num_frames - need
    if last < 0:
        raise VideoReadError(f"too short ({num_frames} frames; a clip needs {need} = stride x frames)")
    if k <= 1 or last == 0:
        return [max(0, last) // 2] if k >= 1 else []
    return sorted({round(i * last / (k - 1)) for i in range(k)})


@torch.no_grad()
def cache_latents(cfg, out, clips_per_video=1, shard_size=64, rank=0, world_size=1, device='cpu',
                  dtype=torch.float32):
    """Encode this rank's share of the videos into `out`; return the number of clips written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d = cfg.data
    paths = collect_videos(d.video_list)
    bad = BadSamples(len(paths), d.max_bad_fraction, out / f'bad_videos_r{rank}.txt')
    mine = paths[rank::world_size]
    check_weights(cfg, ('compressor', 'vae'))                        # every missing file named at once
    compressor, vae = build_compressor(cfg, device, dtype), build_vae(cfg, device, dtype)
    need = frames_needed(d)
    flips = [False, True] if d.random_flip else [False]
    clips, shard, shard_id = [], {}, 0

    def flush():
        nonlocal shard, shard_id
        if shard:
            name = out / f'latents_r{rank:02d}_{shard_id:05d}.safetensors'
            atomic_write(name, lambda tmp: save_file(shard, str(tmp)))
            shard, shard_id = {}, shard_id + 1

    for i, path in enumerate(mine):
        try:
            starts = clip_starts(probe_video(path).num_frames, need, clips_per_video)
            for start in starts:
                for flip in flips:
                    video = load_clip(path, d, start, flip)
                    video = video[None].to(device, dtype)                    # (1, 3, T, S, S)
                    mean, std = vae.encode_moments(video)                    # (1, 4, T, S/8, S/8), scaled
                    ref = compressor.encode(video)                           # (1, 16, T, S/32, S/32), raw
                    key = f'{len(clips)}'
                    shard.update({f'{key}.mean': mean[0].float().cpu().contiguous(),
                                  f'{key}.std': std[0].float().cpu().contiguous(),
                                  f'{key}.ref': ref[0].float().cpu().contiguous()})
                    clips.append({'path': path, 'start': start, 'flip': flip, 'key': key,
                                  'shard': f'latents_r{rank:02d}_{shard_id:05d}.safetensors'})
                    if len(shard) >= 3 * shard_size:
                        flush()
        except (VideoReadError, OSError) as e:  # unreadable or too short: counted against max_bad_fraction
            bad.add([(path, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)])
        log.info(f"[{i + 1}/{len(mine)}] {path}: {len(clips)} clips so far")
    flush()
    index = {'format': CACHE_FORMAT, 'meta': cache_meta(cfg), 'clips': clips, 'bad': list(bad.seen.items())}
    atomic_write(out / f'index_r{rank:02d}.json', lambda tmp: tmp.write_text(json.dumps(index, indent=1)))
    return len(clips)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config')
    p.add_argument('--out', required=True, help='output folder; pass it to training as data.cached_latents')
    p.add_argument('--clips-per-video', type=int, default=1, help='clips per video, starts evenly spaced')
    p.add_argument('--shard-size', type=int, default=64, help='clips per safetensors shard')
    p.add_argument('--dtype', default=None, choices=list(DTYPES),
                   help="encoder dtype (default: train.mixed_precision's on GPU, fp32 on CPU)")
    add_cfg_options(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
    try:
        cfg = load_config(args.config, args.cfg_options)
        check_weights(cfg, ('compressor', 'vae'))
        collect_videos(cfg.data.video_list)                          # list errors before any process starts work
    except (ConfigError, DataError, FileNotFoundError, WeightsFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rank, world, device = process_state(cfg)
    mixed = {'no': 'fp32'}.get(cfg.train.mixed_precision, cfg.train.mixed_precision)
    dtype = DTYPES[args.dtype or (mixed if device.type == 'cuda' else 'fp32')]
    try:
        n = cache_latents(cfg, args.out, args.clips_per_video, args.shard_size, rank, world, device, dtype)
    except (DataError, OSError) as e:                                # too many bad videos, a failed write
        print(f"error: {e}", file=sys.stderr)
        return 1
    log.info(f"wrote {n} clips to {args.out} (rank {rank} of {world}); train with "
             f"--cfg-options data.cached_latents={args.out}")
    return 0


def process_state(cfg):
    """(rank, world size, device) of this process; several launched CPU processes form one gloo group."""
    from accelerate import PartialState
    state = PartialState(cpu=cfg.get('device', 'auto') == 'cpu' or not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.device


if __name__ == '__main__':
    sys.exit(main())
