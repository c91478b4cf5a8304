"""The benchmark command line: one subparser per subcommand; `benchmark.py --config ...` alone runs `recon`."""
import argparse
import sys

from models.weights import MissingWeightsError
from tools.bench.dit import add_dit_parser, add_gemm_floor_parser
from tools.bench.flops import add_flops_parser
from tools.bench.memory import add_memory_parser
from tools.bench.numerics import add_numerics_parser
from tools.bench.recon import add_recon_parser
from tools.bench.seams import add_seams_parser
from tools.bench.stages import add_stages_parser

SUBCOMMANDS = [add_recon_parser, add_dit_parser, add_flops_parser, add_memory_parser, add_gemm_floor_parser,
               add_stages_parser, add_numerics_parser, add_seams_parser]
DEFAULT_SUBCOMMAND = 'recon'


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
    try:
        return args.func(args)
    except (ValueError, MissingWeightsError) as e:        # config / input / weights errors are one line already
        parser.exit(2, f'{parser.prog} {args.command}: {e}\n')
