"""Pre-encode training clips once, so training skips both frozen encoders (data.cached_latents=DIR).

    python tools/cache_latents.py CONFIG --out DIR [--clips-per-video K] [--resume | --overwrite]
                                  [--cfg-options k=v ...]
    accelerate launch --num_processes 8 tools/cache_latents.py CONFIG --out DIR      # one share per GPU

For every video of data.video_list, K clips (starts evenly spaced over [0, N − stride·frames]) are read
exactly as training reads them (data.transform), and also mirrored when data.random_flip is set. Each of
the launched processes encodes every world-th video (its own share) and writes its own index
(tools/training/cache.py describes the files). An --out that already holds a cache is refused unless
--resume (add the listed videos it lacks; same settings) or --overwrite (replace it) says what to do.
Exit codes: 0 done, 2 config / weights / video-list / --out errors (before any work), 1 too many bad videos
or a failed write.
"""
import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tools/cache_latents.py` from anywhere

from models.weights import DTYPES, WeightsFormatError, check_weights
from tools.config import ConfigError, add_cfg_options, load_config
from tools.training.cache import cache_latents, encoder_dtype, process_state, remove_cache, survey
from tools.training.data import DataError, collect_videos

log = logging.getLogger('cascadev.cache')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config')
    p.add_argument('--out', required=True, help='output folder; pass it to training as data.cached_latents')
    p.add_argument('--clips-per-video', type=int, default=1, help='clips per video, starts evenly spaced')
    p.add_argument('--shard-size', type=int, default=64, help='clips per safetensors shard')
    p.add_argument('--dtype', default=None, choices=list(DTYPES),
                   help="encoder dtype (default: train.mixed_precision's on GPU, fp32 on CPU)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument('--resume', action='store_true',
                      help='--out holds a cache: add the videos of data.video_list it lacks (same settings)')
    mode.add_argument('--overwrite', action='store_true', help='--out holds a cache: delete it and write a new one')
    add_cfg_options(p)
    args = p.parse_args(argv)
    if args.clips_per_video < 1 or args.shard_size < 1:
        p.error('--clips-per-video and --shard-size: use a whole number >= 1')
    return args


def main(argv=None):
    """Exit codes: 0 done, 2 config / weights / video-list / --out errors (before any work), 1 a failure later."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
    try:
        cfg = load_config(args.config, args.cfg_options)
        check_weights(cfg, ('compressor', 'vae'))
        collect_videos(cfg.data.video_list)                          # list errors before any process starts work
        mode = 'resume' if args.resume else 'overwrite' if args.overwrite else 'new'
        prior = survey(args.out, mode, cfg, args.clips_per_video)    # before any rank writes
    except (ConfigError, DataError, FileNotFoundError, WeightsFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rank, world, device, state = process_state(cfg)
    dtype = encoder_dtype(cfg, device, args.dtype)
    state.wait_for_everyone()                                        # every rank has surveyed --out
    if args.overwrite and rank == 0 and Path(args.out).is_dir():
        remove_cache(args.out)
    state.wait_for_everyone()
    try:
        n = cache_latents(cfg, args.out, args.clips_per_video, args.shard_size, rank, world, device, dtype, prior)
    except (DataError, OSError) as e:                                # too many bad videos, a failed write
        print(f"error: {e}", file=sys.stderr)
        return 1
    log.info(f"wrote {n} clips to {args.out} (rank {rank} of {world}); train with "
             f"--cfg-options data.cached_latents={args.out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
