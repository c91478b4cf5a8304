"""The weights command line: which weight files a config needs, and the one-off DiT checkpoint conversion.

    python -m models.weights check CONFIG                       # lists the files, or names every missing one
    python -m models.weights convert-dit SRC.pth DST.safetensors [--allow-pickle]   # pretrained/download.sh --convert

(`python -m tools.check_weights ...` is the same.) Exit codes: 0 done, 2 missing or unreadable weights or a
bad config (one line on stderr).
"""
import argparse
import sys
from pathlib import Path

if __package__ in (None, ''):  # run as `python tools/check_weights.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.weights import STAGES, check_weights, convert_pth_to_safetensors, random_stages
from tools.config import load_config


def parse_args(argv):
    """`convert-dit SRC DST [--allow-pickle]` | `check CONFIG` -> argparse Namespace (exit 2 on bad usage)."""
    parser = argparse.ArgumentParser(prog='python -m models.weights', description=main.__doc__)
    sub = parser.add_subparsers(dest='cmd', required=True)
    conv = sub.add_parser('convert-dit', help='convert a .pth checkpoint to safetensors')
    conv.add_argument('src')
    conv.add_argument('dst')
    conv.add_argument('--allow-pickle', action='store_true', help='fall back to full unpickling (trusted files)')
    chk = sub.add_parser('check', help='list missing weight files for a config')
    chk.add_argument('config')
    return parser.parse_args(argv)


def check(config):
    """Print the weight files the config reads and the stages it gives seeded random weights (random_init);
    MissingWeightsError (naming every missing file) otherwise."""
    cfg = load_config(config)
    paths = check_weights(cfg)
    random = [s for s in STAGES if s in random_stages(cfg)]
    lines = [f"{config}: all weights present" if paths else f"{config}: needs no weight files"]
    lines += [f"  {k}: {v}" for k, v in paths.items()]
    if random:
        lines.append(f"  random_init: {', '.join(random)} get seeded random weights (no file needed; their outputs "
                     f"are meaningless, for tests and demos only)")
    print('\n'.join(lines))


def main(argv=None):
    """CLI: `convert-dit SRC DST [--allow-pickle]` | `check CONFIG`."""
    args = parse_args(argv)
    try:
        if args.cmd == 'convert-dit':
            n = convert_pth_to_safetensors(args.src, args.dst, allow_pickle=args.allow_pickle)
            print(f"{args.dst}: wrote {n} tensors")
        else:
            check(args.config)
    except (FileNotFoundError, ValueError) as e:   # missing or unreadable weights, a bad config: usage errors
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
