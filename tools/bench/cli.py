"""The benchmark command line: one subparser per subcommand; `benchmark.py --config ...` alone runs `recon`."""
import argparse
import os
import sys

from models.weights import MissingWeightsError
from tools.bench.dit import add_dit_parser, add_gemm_floor_parser
from tools.bench.eval import add_eval_parser
from tools.bench.flops import add_flops_parser
from tools.bench.memory import add_memory_parser
from tools.bench.numerics import add_numerics_parser
from tools.bench.recon import add_recon_parser
from tools.bench.seams import add_seams_parser
from tools.bench.stages import add_stages_parser
from tools.files import folder_problem

SUBCOMMANDS = [add_recon_parser, add_eval_parser, add_dit_parser, add_flops_parser, add_memory_parser,
               add_gemm_floor_parser, add_stages_parser, add_numerics_parser, add_seams_parser]
DEFAULT_SUBCOMMAND = 'recon'
# The numeric flags with a range, by name, in every subcommand that has them: (smallest value, allowed itself?).
# A flag left at its default (None) is not checked; seams' --overlap is a number, recon's a choice (not checked).
RANGES = {**{k: (1, True) for k in ('frames', 'size', 'width', 'steps', 'batch', 'grid', 'lengths', 'sizes', 'tiles',
                                    'chunk_frames', 'repeats', 'processes')},
          **{k: (0, True) for k in ('warmup', 'threads', 'fit_steps', 'overlap')},
          **{k: (0, False) for k in ('tflops', 'peak_tflops')}}


def flag(dest):
    return '--' + dest.replace('_', '-')


def check_ranges(args):
    """ValueError (one line) for the first flag out of its RANGES range."""
    for dest, (low, inclusive) in RANGES.items():
        values = getattr(args, dest, None)
        for v in values if isinstance(values, list) else [values]:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and (v < low or (v == low and not inclusive)):
                raise ValueError(f"{flag(dest)} {v}: must be {'>=' if inclusive else '>'} {low}")


def check_outputs(args):
    """ValueError (one line) when --json's folder or --out-dir cannot be written (tools.files.folder_problem,
    which leaves nothing behind), or --json names a folder; checked before any work."""
    json_path = getattr(args, 'json', None)
    if json_path and os.path.isdir(json_path):
        raise ValueError(f'--json {json_path}: is a folder; pass a file name, e.g. {json_path}/record.json')
    for dest, folder in (('json', os.path.dirname(os.path.abspath(json_path)) if json_path else None),
                         ('out_dir', getattr(args, 'out_dir', None))):
        problem = folder and folder_problem(folder)
        if problem:
            raise ValueError(f'{flag(dest)} {getattr(args, dest)}: cannot be written ({problem}); pick a path you '
                             f'can create and write to')


def main(argv=None, description=None):
    """Parse and run; usage, config and missing-weight errors print one line and exit with code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith('-') and argv[0] not in ('-h', '--help'):
        argv.insert(0, DEFAULT_SUBCOMMAND)
    parser = argparse.ArgumentParser(prog='benchmark.py', description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest='command', required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    args = parser.parse_args(argv)
    args.argv = argv                                      # a subcommand that starts copies of itself reuses it
    try:
        check_ranges(args)
        check_outputs(args)
        return args.func(args)
    except (ValueError, MissingWeightsError) as e:        # config / input / weights errors are one line already
        parser.exit(2, f'{parser.prog} {args.command}: {e}\n')
