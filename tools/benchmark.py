"""Speed, memory and accuracy benchmarks, one subcommand each: `python tools/benchmark.py SUBCOMMAND --help`.

    recon       recon.py's loop (tools/recon/reconstruct.py) per stage (read, compressor, dit per sampler step, previewer,
                vae, write, metrics):
                seconds, peak memory, frames/s, DiT TFLOP/s (the default: `benchmark.py --config C ...`)
    eval        tools/eval.py's scoring per metric (PSNR, SSIM, flicker, tOF; LPIPS, VMAF) against recon's time per
                frame on the same frames, with user/system CPU time
    dit         one DiT forward: attention backends × precisions × torch.compile on/off × fp32_attention
    flops       analytic FLOP count of one DiT forward / sampler step / reconstruction for a config and size
    memory      peak memory vs clip length (8, 16, 32 frames) and frame size / tile size
    gemm-floor  CPU: the DiT forward against the bare block GEMMs of the same shapes and a plain implementation
    stages      compressor / previewer / SVD decoder: fp32 vs bf16, NCHW vs channels-last memory
    numerics    bf16 (autocast) against fp32: on the golden inputs and a released-size random-init forward
    seams       max error at SVD-decoder chunk boundaries and DiT tile seams against whole-clip / untiled runs

Numbers are measured side by side in one run (machines are noisy): compare the ratios, and read the peak
memory (CUDA: max allocated; CPU: the process's resident-set high-water mark, VmHWM).
The subcommands live in tools/bench/ (one module per group over tools/bench/measure.py); to add one write
`bench_<name>(args)` and `add_<name>_parser(subparsers)` there and list the latter in tools/bench/cli.py.
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:                     # `python tools/benchmark.py` from any directory
    sys.path.insert(0, str(REPO))

from tools.bench import cli  # noqa: E402


def main(argv=None):
    """Run `benchmark.py SUBCOMMAND ...` (argv: the arguments, default sys.argv[1:]); -> the subcommand's record."""
    return cli.main(argv, description=__doc__)


if __name__ == '__main__':
    main()
