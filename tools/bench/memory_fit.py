"""`memory --what stages`: fit tools/recon/memory_model.py's CALIBRATION; `memory --what plan`: its predictions
against recon.py.

stages: each stage alone (exact CPU peaks: freed tensors leave the RSS at once) at two sizes; the constant is the
slope of the added peak over the stage's unit (tools/recon/memory_model.py: bytes per frame · pixel · dtype byte,
per DiT token · hidden unit · dtype byte, per latent pixel of the sampler state), so fixed costs do not enter it.
plan: recon.py in a fresh process per budget; its printed "predicted peak" against its peak RSS (ru_maxrss).
"""
import itertools
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from models.weights import dtype_name, resolve_dtype
from tools.bench.measure import (REPO, environment, load_cfg, peak_memory_mib, print_table, setup_device,
                                 write_json)
from tools.bench.recon import build_pipeline
from tools.recon.memory import CALIBRATION, CUDA_CONTEXT, DTYPE_BYTES, dit_tiles
from tools.recon.render import quick_scores
from tools.video.write import VideoWriter

MIB = 2 ** 20


def added_bytes(fn, device):
    """The peak bytes fn adds, after a warm-up call (one-time allocations are not the call's)."""
    fn()
    return peak_memory_mib(fn, device) * MIB


def slope(points):
    """[(unit, bytes)] at two or more sizes -> bytes per unit (least squares line through them)."""
    n = len(points)
    mx, my = sum(u for u, _ in points) / n, sum(b for _, b in points) / n
    return sum((u - mx) * (b - my) for u, b in points) / sum((u - mx) ** 2 for u, _ in points)


def bench_stage_constants(args):
    """Measure each stage at two sizes; print the fitted constants next to the ones tools/recon/memory_model.py uses."""
    cfg = load_cfg(args, random_init=True)
    device = setup_device(args, exact_cpu_peaks=True)
    dtype = dtype_name(resolve_dtype(args.dtype or cfg.get('dtype', 'auto'), device))   # 'auto' resolved
    pipe = build_pipeline(cfg, device, dtype)
    sizes = args.sizes if len(args.sizes) > 1 else [128, 256]
    rows = []

    def record(stage, size, unit, got, fixed=0.0):
        rows.append(dict(stage=stage, size=size, unit=unit, added_mib=got / MIB, fixed_mib=fixed / MIB))
        return unit, got - fixed

    with torch.inference_mode():
        fits = conv_stage_fits(pipe, sizes, DTYPE_BYTES[dtype], record, device)
        fits.update(dit_fits(pipe, cfg, sizes, DTYPE_BYTES[dtype], record, device))
        pts = []
        for s in sizes:                                   # in-loop metrics: one frame of s x s
            x = torch.rand(3, 1, s, s, device=device) * 2 - 1
            pts.append(record('metrics', s, 3 * s * s, added_bytes(lambda: quick_scores(x, x * 0.9), device)))
        fits['metrics'] = slope(pts)
    fits.update(encoder_constants(record, device))
    print(f'memory stages: {cfg.config_path}, {device} {dtype}; added_mib: peak minus memory before the call; '
          f'fixed_mib: its output, subtracted before the fit')
    print_table(rows, ['stage', 'size', 'unit', 'added_mib', 'fixed_mib'])
    table = [dict(constant=k, fitted=round(v, 2), in_use=CALIBRATION.get(k)) for k, v in fits.items()]
    print('fitted constants (tools/recon/memory_model.py CALIBRATION: bytes per unit):')
    print_table(table, ['constant', 'fitted', 'in_use'])
    write_json(args.json, dict(benchmark='memory', what='stages', config=cfg.config_path, dtype=dtype,
                               env=environment(device), rows=rows, fitted=fits))
    return fits


def conv_stage_fits(pipe, sizes, e, record, device):
    """Compressor, previewer and SVD decode at each size (e: bytes per element of the dtype); -> {stage: bytes
    per frame · pixel · dtype byte}. record(stage, size, unit, bytes, fixed) keeps a table row -> (unit, bytes)."""
    fits, pts = {}, []
    for s in sizes:                                       # compressor: 8 frames (its chunk) of s x s
        x = torch.rand(1, 3, 8, s, s, device=device) * 2 - 1
        pts.append(record('compressor', s, 8 * s * s * e, added_bytes(lambda: pipe.encode(x), device)))
    fits['compressor'] = slope(pts)
    pts = []
    for s in sizes:                                       # previewer: one chunk of 8 frames, minus its fp32 output
        lat = torch.randn(1, 16, 8, s // 32, s // 32, device=device)
        got = added_bytes(lambda: list(pipe.preview_chunks(lat, chunk_size=8)), device)
        pts.append(record('previewer', s, 8 * s * s * e, got, fixed=8 * s * s * 3 * 4))
    fits['previewer'] = slope(pts)
    k = pipe.vae.decode_chunk
    pts = []
    for s in sizes:                                       # SVD decode: one chunk of k frames, minus its fp32 output
        z = torch.randn(1, 4, k, s // 8, s // 8, device=device)
        got = added_bytes(lambda: list(pipe.vae_decode_chunks(z)), device)
        pts.append(record('vae', s, k * s * s * e, got, fixed=k * s * s * 3 * 4))
    fits['vae'] = slope(pts)
    return fits


def dit_fits(pipe, cfg, sizes, e, record, device):
    """The DiT's ε function on one window at 1 tile per call and all at once (bytes per token · hidden unit ·
    dtype byte), and one sampler step over 2 and 8 windows (bytes per latent pixel of the state)."""
    L, S, p, D = cfg.model.lats_per_vid, cfg.model.input_size, cfg.model.get('patch_size', 2), cfg.model.hidden_size
    lat = 3 * S                                           # a latent of several tiles per axis
    x = torch.randn(1, 20, L, lat, lat, device=device)
    tiles = dit_tiles(_Shape((lat * 8, lat * 8), L, (S, L)))[0]
    fits, pts = {}, []
    for batch in (1, tiles):                              # DiT: one window, 1 tile per call vs all at once
        eps = pipe.eps_fn(batch)
        got = added_bytes(lambda: eps(x, torch.full((1,), 500.0, device=device)), device)
        pts.append(record('dit', batch, batch * L * (S // p) ** 2 * D * e, got))
    fits['dit'] = slope(pts)
    pts = []
    h = sizes[-1] // 8                                    # sampler state: T frames of the largest size, 1 step
    for T in (2 * L, 8 * L):
        lat16 = torch.randn(1, 16, T, h // 4, h // 4, device=device)
        got = added_bytes(lambda: pipe.refine(lat16, steps=1, seed=0, tile_batch=1), device)
        pts.append(record('state', T, T * h * h * 4, got))
    fits['state'] = slope(pts)
    return fits


def encoder_constants(record, device, height=720, width=1280, frames=64):
    """x264 (preset medium) memory once full, at (look-ahead, threads) (0, 1), (40, 1) and (0, 8): -> {'encoder':
    bytes per pixel, 'encoder_frame': per pixel and look-ahead frame, 'encoder_thread': per pixel and thread}."""
    rng = np.random.default_rng(0)
    tex = (rng.random((height // 8, width // 8 + frames, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    px, plateau = height * width, {}
    with tempfile.TemporaryDirectory() as tmp:
        def write(la, threads, n):
            with VideoWriter(Path(tmp) / f'{la}.mp4', 25, lookahead=la, threads=threads) as w:
                for i in range(n):                                # a texture panning 8 px per frame
                    w.write(np.ascontiguousarray(tex[None, :, i * 8:i * 8 + width]))
        write(0, 1, 4)                                            # warm-up: libx264's one-time allocations
        for la, threads in ((0, 1), (40, 1), (0, 8)):
            got = peak_memory_mib(lambda: write(la, threads, frames), device) * MIB
            plateau[la, threads] = record('encoder', f'la {la}, {threads} threads', px, got)[1]
    thread = (plateau[0, 8] - plateau[0, 1]) / (7 * px)
    return {'encoder': plateau[0, 1] / px - thread, 'encoder_frame': (plateau[40, 1] - plateau[0, 1]) / (40 * px),
            'encoder_thread': thread}


class _Shape:
    """The few Workload fields dit_tiles reads."""
    def __init__(self, model, frames, dit):
        self.model, self.frames, self.dit = model, frames, dit


PREDICTED = re.compile(r'predicted peak ([0-9.]+) GB')


PEAK = re.compile(r'peak_rss_kib (\d+)')
PEAK_CUDA = re.compile(r'peak_cuda_bytes (\d+)')
RUN = ('import resource, sys, torch; import recon; code = recon.main(sys.argv[1:]); '
       'print("peak_rss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); '
       'torch.cuda.is_initialized() and print("peak_cuda_bytes", torch.cuda.max_memory_allocated(), file=sys.stderr); '
       'sys.exit(code)')


def run_recon_peak(argv):
    """recon.py argv in a fresh process -> (exit code, its output, predicted peak bytes or None, measured peak
    bytes: on CUDA max allocated + the context estimate tools/recon/memory.py uses, else the peak RSS)."""
    proc = subprocess.run([sys.executable, '-c', RUN, *argv], capture_output=True, text=True, cwd=REPO)
    out = proc.stdout + proc.stderr
    m, rss, cuda = PREDICTED.search(out), PEAK.search(out), PEAK_CUDA.search(out)
    peak = int(cuda.group(1)) + CUDA_CONTEXT if cuda else int(rss.group(1)) * 1024 if rss else None
    return proc.returncode, out, float(m.group(1)) * 1e9 if m else None, peak


def bench_plan(args):
    """recon.py on a clip for each clip length x --size x --max-memory budget ('off': none), one fresh process
    each; ratio = measured / predicted."""
    clip = args.clip or str(REPO.parent / 'shared' / 'videos' / 'bigbuckbunny.mp4')
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for frames, size, budget in itertools.product(args.lengths, args.sizes, args.budgets or ['off']):
            argv = ['--config', args.config, '--input', clip, '--output', tmp, '--overwrite', '--size', str(size),
                    '--num-frames', str(frames), '--chunk-frames', str(args.chunk_frames), '--device', args.device]
            argv += ([] if budget == 'off' else ['--max-memory', budget]) + (['--square'] if args.square else [])
            if args.autoencoder:
                argv += ['--autoencoder', args.autoencoder] + (
                    ['--autoencoder-weights', args.autoencoder_weights] if args.autoencoder_weights else [])
            code, out, predicted, measured = run_recon_peak(argv)
            line = next((ln for ln in out.splitlines() if 'predicted peak' in ln or '--max-memory' in ln), '')
            rows.append(dict(budget=budget, frames=frames, size=size, exit=code,
                             predicted_gb=predicted and predicted / 1e9, measured_gb=measured and measured / 1e9,
                             ratio=measured / predicted if predicted and measured else None, plan=line.strip()))
    ae = f', --autoencoder {args.autoencoder}' if args.autoencoder else ''
    print(f'memory plan: {clip}{" --square" if args.square else ""}{ae}, --chunk-frames {args.chunk_frames}, '
          f'{args.config}; measured: peak '
          f'RSS of the recon.py process (ru_maxrss), on CUDA max allocated + {CUDA_CONTEXT >> 20} MiB context; '
          f'ratio = measured / predicted; GB = 10^9 B')
    print_table(rows, ['budget', 'frames', 'size', 'exit', 'predicted_gb', 'measured_gb', 'ratio', 'plan'])
    write_json(args.json, dict(benchmark='memory', what='plan', config=args.config, autoencoder=args.autoencoder,
                               rows=rows))
    return rows
