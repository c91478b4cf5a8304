"""Speed and memory benchmarks, one subcommand each: `python tools/benchmark.py dit --help`.

Numbers are measured side by side in one run (machines are noisy): compare the ratios, and read the
peak memory (CUDA: max allocated; CPU: peak resident set growth during one call).
To add a benchmark write `bench_<name>(args)` and `add_<name>_parser(subparsers)` and list the latter
in SUBCOMMANDS.
"""
import argparse
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:                     # `python tools/benchmark.py` from any directory
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}   # None: no autocast


# ---- measuring helpers ------------------------------------------------------------------------------
def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _rss_kib(field):
    """VmRSS / VmHWM of this process in KiB (Linux), else None."""
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith(field + ':'):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def release_freed_memory_to_os():
    """glibc: serve allocations ≥ 128 KiB by mmap so freed tensors leave the RSS (makes CPU peaks exact)."""
    try:
        import ctypes
        libc = ctypes.CDLL('libc.so.6')
        return bool(libc.mallopt(-3, 128 * 1024) and libc.mallopt(-1, 128 * 1024))  # M_MMAP/TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def peak_memory_mib(fn, device):
    """Run fn once; peak memory it adds in MiB (CUDA: max allocated; CPU: resident-set high-water mark)."""
    if device.type == 'cuda':
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    try:
        Path('/proc/self/clear_refs').write_text('5')  # reset VmHWM to the current RSS (Linux ≥ 4.0)
    except OSError:
        fn()
        return None
    base = _rss_kib('VmRSS')
    fn()
    peak = _rss_kib('VmHWM')
    return None if base is None or peak is None else max(peak - base, 0) / 1024


def time_ms(fn, device, repeats, warmup):
    """Median and min wall time of fn in milliseconds over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def print_table(rows, columns):
    widths = [max(len(c), *(len(str(r.get(c, ''))) for r in rows)) for c in columns]
    print('  '.join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print('  '.join(str(r.get(c, '')).ljust(w) for c, w in zip(columns, widths)))


def write_json(path, record):
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(record, indent=2))
        print(f'wrote {path}')


def environment(device):
    env = dict(torch=torch.__version__, python=platform.python_version(), device=str(device),
               threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine())
    if device.type == 'cuda':
        env['gpu'] = torch.cuda.get_device_name(device)
    return env


# ---- dit --------------------------------------------------------------------------------------------
def bench_dit(args):
    """Forward time and peak memory of the refiner DiT: attention backends × precisions."""
    from models.dit import build_dit, init_random_weights_
    from tools.config import load_config

    cfg = load_config(args.config, args.cfg_options)
    device = torch.device(args.device)
    exact_cpu_peak = device.type == 'cpu' and release_freed_memory_to_os()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = init_random_weights_(build_dit(cfg.model), cfg.init_seed).to(device).eval()   # non-zero outputs
    n_params = sum(p.numel() for p in model.parameters())
    frames = args.frames or cfg.model.lats_per_vid
    size = args.grid or [cfg.model.input_size]
    if len(size) > 2:
        raise ValueError(f'--grid {size}: give the latent size as H or H W')
    height, width = size[0], size[-1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, cfg.model.in_channels, frames, height, width, generator=g).to(device)
    t = torch.full((args.batch,), 500.0, device=device)
    call = model.forward_windowed if args.windowed else model.forward
    what = 'forward_windowed' if args.windowed else 'forward'
    print(f'{what}: {cfg.config_path} ({n_params / 1e6:.1f}M params), input {tuple(x.shape)}, '
          f'{frames * (height // model.patch_size) * (width // model.patch_size)} tokens per clip, '
          f'device {device}, {torch.get_num_threads()} threads')

    rows, reference = [], None
    for dtype_name in args.dtypes:
        for backend in args.backends:
            model.set_attn_backend(backend)
            autocast = (torch.autocast(device.type, dtype=DTYPES[dtype_name]) if DTYPES[dtype_name]
                        else nullcontext())

            def run():
                with torch.inference_mode(), autocast:
                    return call(x, t)
            try:
                out = run().float()
                peak = peak_memory_mib(run, device)
                median, best = time_ms(run, device, args.repeats, args.warmup)
            except (RuntimeError, ImportError) as e:          # e.g. out of memory, xformers missing
                rows.append(dict(dtype=dtype_name, backend=backend, error=str(e).splitlines()[0][:120]))
                continue
            if reference is None:
                reference = (out, best)
            rows.append(dict(dtype=dtype_name, backend=backend, median_ms=round(median, 2), min_ms=round(best, 2),
                             ratio=round(best / reference[1], 3),
                             peak_mib=None if peak is None else round(peak, 1),
                             max_abs_diff=float(f'{(out - reference[0]).abs().max().item():.3g}')))
    print_table(rows, ['dtype', 'backend', 'median_ms', 'min_ms', 'ratio', 'peak_mib', 'max_abs_diff', 'error'])
    print('ratio (of min_ms: the least disturbed run) and max_abs_diff are relative to the first row')
    write_json(args.json, dict(benchmark='dit', call=what, config=cfg.config_path,
                               cfg_options=args.cfg_options, params=n_params, input_shape=list(x.shape),
                               repeats=args.repeats, warmup=args.warmup, env=environment(device),
                               cpu_peak_exact=exact_cpu_peak, rows=rows))
    return rows


def add_dit_parser(subparsers):
    p = subparsers.add_parser('dit', help='refiner DiT forward: SDPA vs math attention, fp32 vs bf16',
                              description=bench_dit.__doc__)
    p.add_argument('--config', default=str(REPO / 'configs' / 'tiny.py'), help='config whose `model` is timed')
    p.add_argument('--cfg-options', nargs='*', default=None, metavar='KEY=VALUE',
                   help='config overrides, e.g. model.depth=8')
    p.add_argument('--grid', type=int, nargs='+', default=None, metavar='SIZE',
                   help='latent height [width] in latent pixels (default: model.input_size)')
    p.add_argument('--frames', type=int, default=None, help='frames per clip (default: model.lats_per_vid)')
    p.add_argument('--batch', type=int, default=1, help='clips per call')
    p.add_argument('--windowed', action='store_true', help='time forward_windowed (tiles × windows) instead')
    p.add_argument('--backends', nargs='+', default=['sdpa', 'math'], choices=['sdpa', 'math', 'xformers'])
    p.add_argument('--dtypes', nargs='+', default=['fp32', 'bf16'], choices=list(DTYPES),
                   help='fp32, or autocast to bf16/fp16')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--json', default=None, metavar='OUT', help='also write the results as JSON here')
    p.set_defaults(func=bench_dit)


SUBCOMMANDS = [add_dit_parser]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest='command', required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ValueError as e:                               # config / input errors are one line already
        parser.exit(2, f'{parser.prog} {args.command}: {e}\n')


if __name__ == '__main__':
    main()
