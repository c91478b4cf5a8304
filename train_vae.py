"""Train the CascadeV refiner DiT (the decoder half of the video autoencoder) with the released model's recipe.

    python train_vae.py CONFIG --work-dir DIR [--cfg-options k=v ...] [--resume PATH|auto] [--dry-run]
    accelerate launch --num_processes 8 train_vae.py CONFIG --work-dir DIR     # multi-GPU (bash train_vae.sh)

The run is tools.training.loop.train: the optimizer step in tools/training/step.py, the lr rule in
tools/training/optim.py, data in tools/training/data.py, checkpoints in tools/training/checkpoint.py.
A new run needs a new or empty --work-dir; --resume continues the run in one (and two trainings never share
one at a time). Exit codes: 0 done, 2 the run cannot start (config, weights, data lists, --work-dir,
--resume), 1 it failed later.
"""
import argparse
import sys

from tools.config import ConfigError, add_cfg_options, load_config
from tools.training.checkpoint import CheckpointError
from tools.training.data import DataError
from tools.training.loop import TrainingError, UsageError, check_run, train
from tools.video.read import VideoReadError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='config file, e.g. configs/s1024.effn-f32.py')
    p.add_argument('--work-dir', help='run folder (new or empty, or an earlier run with --resume): config.py, '
                                      'checkpoints/, tb/, previews/, logs')
    add_cfg_options(p)
    p.add_argument('--resume', metavar='PATH|auto',
                   help="a checkpoint folder (WORK_DIR/checkpoints/step_N), or 'auto' for the newest complete one")
    p.add_argument('--dry-run', action='store_true',
                   help='check everything a run checks before it starts (config, --work-dir, weights, data lists, '
                        '--resume), print the final config and exit')
    args = p.parse_args(argv)
    if not args.work_dir and not args.dry_run:
        p.error('--work-dir DIR is required (the run folder; e.g. --work-dir work_dirs/my_run)')
    return args


def main(argv=None):
    """Exit codes: 0 done, 2 the run cannot start (config, weights, data lists, --work-dir, --resume), 1 it
    failed later."""
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.cfg_options)
        if args.dry_run:
            check_run(cfg, args.work_dir, args.resume)
            print(cfg.pretty_text)
            return 0
        train(cfg, args.work_dir, args.resume)
    except (ConfigError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, TrainingError, VideoReadError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
