"""`memory`: peak memory against clip length and frame / tile size, of the DiT or the whole reconstruction."""
import tempfile
import time
from pathlib import Path

import torch

from models.dit import VideoDiT, init_random_weights_
from models.weights import DTYPES, dtype_name, resolve_dtype
from tools.bench.measure import (add_config_args, add_run_args, autocast_for, environment, load_cfg, memory_kind,
                                 peak_memory_mib, print_table, reset_peak, setup_device, sync, synthetic_video,
                                 write_json)
from tools.bench.memory_fit import bench_plan, bench_stage_constants
from tools.bench.recon import build_pipeline, run_recon
from tools.video.write import write_video


def bench_memory(args):
    """Peak memory vs clip length and frame/tile size: the DiT's forward_windowed, or the whole reconstruction;
    or the calibration of tools/recon/memory_model.py (stages) and its check against recon.py (plan)."""
    if args.what == 'stages':
        return bench_stage_constants(args)
    if args.what == 'plan':
        return bench_plan(args)
    cfg = load_cfg(args, random_init=True)
    device = setup_device(args, exact_cpu_peaks=True)
    dtype = dtype_name(resolve_dtype(args.dtype or cfg.get('dtype', 'auto'), device))   # 'auto' resolved
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tile in args.tiles or [cfg.model.input_size]:
            cfg.model.input_size = tile
            if args.what == 'dit':
                model = init_random_weights_(VideoDiT.from_config(cfg.model), cfg.init_seed).to(device).eval()
                measure = lambda frames, size: dit_memory(model, cfg.model.in_channels, frames, size, device, dtype)
            else:
                pipe = build_pipeline(cfg, device, dtype)
                measure = lambda frames, size: recon_memory(pipe, tmp, frames, size, args.steps, args.chunk_frames)
            for size in args.sizes:
                first = None
                for frames in args.lengths:
                    row = dict(what=args.what, frames=frames, size=size, tile=tile, **measure(frames, size))
                    if device.type == 'cpu':
                        row['seconds'] = None                     # the RSS-peak resets slow CPU work: not a timing
                    if row['added_mib'] is not None:
                        first = row['added_mib'] if first is None else first
                        row['vs_shortest'] = row['added_mib'] / first if first > 0 else None
                    rows.append(row)
    print(f"memory: {cfg.config_path} ({args.what}), {device} {dtype}, {memory_kind(device)}; added_mib = "
          f"peak minus memory in use before the call (after a warm-up call); vs_shortest = added_mib / the "
          f"shortest clip's" + ('; no CPU seconds: measuring RSS peaks slows the CPU' if device.type == 'cpu' else ''))
    print_table(rows, ['what', 'frames', 'size', 'tile', 'seconds', 'peak_mib', 'added_mib', 'vs_shortest'])
    write_json(args.json, dict(benchmark='memory', what=args.what, config=cfg.config_path, dtype=dtype,
                               cfg_options=args.cfg_options, env=environment(device),
                               memory_kind=memory_kind(device), rows=rows))
    return rows


def dit_memory(model, channels, frames, size, device, dtype):
    """forward_windowed on a random (1, channels, frames, size/8, size/8) latent, after a warm-up call (one-time
    allocations are not the call's); -> {'added_mib', 'seconds'} of the measured call."""
    lat = size // 8
    x = torch.randn(1, channels, frames, lat, lat).to(device)

    def run():
        with torch.inference_mode(), autocast_for(device, dtype):
            model.forward_windowed(x, 500.0)
    run()
    sync(device)
    start = time.perf_counter()
    added = peak_memory_mib(run, device)
    return dict(added_mib=added, seconds=time.perf_counter() - start)


def recon_memory(pipe, tmp, frames, size, steps, chunk_frames):
    """The streamed reconstruction of a synthetic frames x size² clip (written once to tmp), after a warm-up run;
    -> {'seconds', 'peak_mib', 'added_mib'}: the peak over the memory in use before the run."""
    path = Path(tmp) / f'{frames}x{size}.mp4'
    if not path.is_file():
        write_video(path, synthetic_video(frames, size, size), fps=24)
    kw = dict(frames=frames, steps=steps, chunk_frames=chunk_frames)
    run_recon(pipe, str(path), tmp, **kw)                 # warm
    reset_peak(pipe.device)
    _, _, info = run_recon(pipe, str(path), tmp, **kw)
    return dict(seconds=info['end_to_end_s'], peak_mib=info['peak_mib'],
                added_mib=None if info['peak_mib'] is None else info['peak_mib'] - info['base_mib'])


def add_memory_parser(subparsers):
    p = subparsers.add_parser('memory', help='peak memory vs clip length and size', description=bench_memory.__doc__)
    add_config_args(p)
    p.add_argument('--what', choices=['dit', 'recon', 'stages', 'plan'], default='dit',
                   help="dit: forward_windowed on the latent; recon: the whole streamed reconstruction; stages: "
                        "each stage's peak at two sizes, fitted to tools/recon/memory_model.py's CALIBRATION; plan: "
                        "recon.py with --max-memory budgets, its printed prediction against the measured peak RSS")
    p.add_argument('--lengths', type=int, nargs='+', default=[8, 16, 32], help='clip lengths in frames')
    p.add_argument('--sizes', type=int, nargs='+', default=[64],
                   help='frame sizes in pixels (square); --what plan: recon.py --size (the short side)')
    p.add_argument('--tiles', type=int, nargs='+', default=None,
                   help='DiT tile sizes in latent pixels (model.input_size; default: the config)')
    p.add_argument('--dtype', choices=['auto', *DTYPES], default=None)
    p.add_argument('--steps', type=int, default=1, help='sampler steps for --what recon (default 1)')
    p.add_argument('--chunk-frames', type=int, default=16)
    p.add_argument('--budgets', nargs='+', default=None, metavar='SIZE',
                   help="--what plan: recon.py --max-memory values, 'off' for none (default: off)")
    p.add_argument('--square', action='store_true', help='--what plan: recon.py --square (the centre square)')
    p.add_argument('--clip', default=None, help='--what plan: the video (default: ../shared/videos/bigbuckbunny.mp4)')
    p.add_argument('--autoencoder', default=None, metavar='NAME',
                   help='--what plan: recon.py --autoencoder NAME (its measured memory and windows, not CascadeV)')
    p.add_argument('--autoencoder-weights', default=None, metavar='DIR', help='--what plan: its diffusers folder')
    add_run_args(p)
    p.set_defaults(func=bench_memory)

