"""`recon --processes N`: one video shared by N processes (models/parallel.py, as recon.py shares it) against one
process with all their threads, side by side in one run.

    python tools/benchmark.py recon --config configs/tiny.py --random-init --processes 2 --threads 1
    torchrun --nproc_per_node 8 tools/benchmark.py recon ...       # one launch, no side-by-side reference

With --processes N (N > 1) outside a launcher, this process starts the reference (one process, N × --threads
threads) and then the N processes of the split (--threads each; gloo on CPU, NCCL with one GPU each), each one
the same `benchmark.py recon` run, and prints both records' per-step and end-to-end times, the bytes the main
process gathered per DiT step and per video, and the split's time against the reference.
"""
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from models.parallel import WorkSplit
from models.tiling import tile_starts, window_tile_calls
from tools.bench.flops import recon_flops
from tools.bench.measure import print_table, write_json
from tools.config import load_config
from tools.recon.batch import distributed_state

REPO = Path(__file__).resolve().parents[2]
OWN_FLAGS = ('--processes', '--threads', '--json')          # set per child by bench_processes


def launched():
    """Whether this process is one of a launch (torchrun/accelerate or bench_processes set WORLD_SIZE > 1)."""
    return int(os.environ.get('WORLD_SIZE', '1')) > 1


def join_launch(device):
    """Under a launch: the process group as recon.py joins it (tools.recon.batch.distributed_state: NCCL with
    one GPU per process, else gloo) and its WorkSplit -> (device, split); alone -> (device, WorkSplit())."""
    _, _, launch_device = distributed_state(device)
    if launch_device is None:
        return device, WorkSplit()
    device = launch_device if device.type == 'cuda' else device
    return device, WorkSplit.from_process_group(device)


def split_record(split, info, steps):
    """The record's 'split' entry: processes, the bytes the main process gathered per video and per DiT step."""
    return dict(processes=split.world, gathered_bytes_per_video=info['gathered_bytes'],
                dit_gathered_bytes_per_step=info['dit_gathered_bytes'] / steps)


def _child_argv(argv, threads, json_path):
    """argv of `benchmark.py recon ...` without this module's own flags, plus --threads and --json."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in OWN_FLAGS:
            skip = True
            continue
        if any(a.startswith(f + '=') for f in OWN_FLAGS):
            continue
        out.append(a)
    return out + ['--threads', str(threads), '--json', str(json_path)]


def _run(argv, world, timeout=None):
    """Run `benchmark.py` with argv on `world` processes (env rendezvous on a free local port); output shown."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = dict(os.environ)
        if world > 1:
            env.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                       MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(REPO / 'tools' / 'benchmark.py'), *argv], env=env,
                                      stdout=None if rank == 0 else subprocess.DEVNULL))
    codes = [p.wait(timeout=timeout) for p in procs]
    if any(codes):
        raise ValueError(f'--processes {world}: a benchmark process failed (exit codes {codes}); its error is above')


def bench_processes(args):
    """The reference (1 process × N·t threads), then the split (N processes × t threads); -> the comparison."""
    n, t = args.processes, args.threads or 1
    with tempfile.TemporaryDirectory() as tmp:             # each run's record, read back below
        print(f'== reference: 1 process x {n * t} threads')
        _run(_child_argv(args.argv, n * t, Path(tmp) / 'alone.json'), 1)
        print(f'== split: {n} processes x {t} thread{"s" if t > 1 else ""}')
        _run(_child_argv(args.argv, t, Path(tmp) / 'split.json'), n)
        alone, split = (json.loads((Path(tmp) / f'{k}.json').read_text()) for k in ('alone', 'split'))
    record = compare(alone, split, n, t)
    write_json(args.json, record)
    return record


def compare(alone, split, n, t):
    """Rows of the side-by-side table, printed; -> {'benchmark': 'recon-processes', 'reference', 'split', ...}."""
    def stage(rec, name):
        return next((s['seconds'] for s in rec['stages'] if s['stage'] == name), None)
    rows = []
    for label, rec in ((f'1 x {n * t} threads', alone), (f'{n} x {t} thread{"s" if t > 1 else ""}', split)):
        info = rec.get('split') or {}
        rows.append({'run': label, 'step_s': rec['dit']['mean_step_s'], 'dit_s': stage(rec, 'dit'),
                     'vae_s': stage(rec, 'vae'), 'end_to_end_s': rec['end_to_end_s'],
                     'gathered_per_step_mb': info.get('dit_gathered_bytes_per_step', 0) / 1e6,
                     'gathered_per_video_mb': info.get('gathered_bytes_per_video', 0) / 1e6})
    print_table(rows, list(rows[0]))
    ratio = split['end_to_end_s'] / alone['end_to_end_s']
    step_ratio = split['dit']['mean_step_s'] / alone['dit']['mean_step_s']
    print(f'time of the split / time of the reference: end to end {ratio:.3f}, per DiT step {step_ratio:.3f} '
          f'(below 1: the split is faster; {n} processes x {t} thread(s) against 1 x {n * t}, same video, this '
          f'run; --warmup and --repeats steady them)')
    projected = print_projection()
    return dict(benchmark='recon-processes', processes=n, threads_per_process=t, reference=alone, split=split,
                rows=rows, end_to_end_ratio=ratio, step_ratio=step_ratio, projection=projected)


RELEASED_CONFIG = REPO / 'configs' / 's1024.effn-f32.py'
PROJECTED = ((8, 1024, 1024), (120, 1080, 1920), (1800, 1080, 1920))   # the paper's clip, 4 s and 1 min of 1080p30


def print_projection(devices=8, steps=8):
    """The projection table for the released config (projection(); assumptions printed with it) -> its rows."""
    cfg = load_config(str(RELEASED_CONFIG))
    rows = [projection(cfg, f, h, w, steps, devices) for f, h, w in PROJECTED]
    links = list(LINKS_GBS)
    bandwidths = ', '.join(f'{k} {v:g} GB/s' for k, v in LINKS_GBS.items())
    print(f'PROJECTION (not measured): the released model, {steps} steps, {devices} devices at '
          f'{ACHIEVED_TFLOPS:g} TFLOP/s each, all-gather at {bandwidths}')
    print_table([{'clip': f"{r['frames']}x{r['height']}x{r['width']}", 'DiT calls/step': r['calls_per_step'],
                  'step_s 1 device': r['step_s_one'], f'step_s {devices} devices': r['step_s'],
                  'eps GB/step': r['eps_gb_per_step'], 'frames GB/video': r['frames_gb_per_video'],
                  **{f'gather s/video {k}': r[f'gather_s_per_video {k}'] for k in links}} for r in rows],
                ['clip', 'DiT calls/step', 'step_s 1 device', f'step_s {devices} devices', 'eps GB/step',
                 'frames GB/video', *[f'gather s/video {k}' for k in links]])
    return rows


# ---- projection to more devices (not a measurement) -----------------------------------------------------
LINKS_GBS = {'NVLink': 300.0, 'PCIe 4.0 x16': 25.0}   # all-gather bus bandwidth assumed per device, GB/s
ACHIEVED_TFLOPS = 400.0                                # bf16 DiT throughput assumed per device (40% of an H100's 989)


def projection(cfg, frames, height, width, steps, devices, vae_bytes=2):
    """What sharing one video among `devices` would cost, from the FLOP count (tools/bench/flops.py) and the
    bytes the split gathers (ε tiles fp32, decoded frames in the VAE's dtype): -> dict with the DiT work per
    device per step (s, at ACHIEVED_TFLOPS, in rounds of `devices` calls), the ε bytes each device receives
    per step and the SVD frames per video, and their gather time at each of LINKS_GBS."""
    flops = recon_flops(cfg, frames, height, width, steps)
    T, h, w = flops['latent']
    S = int(cfg.model.input_size)
    tiles = len(tile_starts(h, S)) * len(tile_starts(w, S))
    units = window_tile_calls(T, tiles, int(cfg.model.lats_per_vid))          # forward_windowed's calls
    unit_bytes = [4 * (e - s) * k * min(S, h) * min(S, w) * 4 for s, e, _, k in units]
    per_call = flops['per_step']['total'] / len(units)
    rounds = math.ceil(len(units) / devices)
    eps_bytes = sum(unit_bytes) * (devices - 1) / devices
    frame_bytes = frames * 3 * height * width * vae_bytes * (devices - 1) / devices
    out = dict(frames=frames, height=height, width=width, devices=devices, calls_per_step=len(units),
               step_s_one=flops['per_step']['total'] / ACHIEVED_TFLOPS / 1e12,
               step_s=rounds * per_call / ACHIEVED_TFLOPS / 1e12, eps_gb_per_step=eps_bytes / 1e9,
               frames_gb_per_video=frame_bytes / 1e9)
    for link, gbs in LINKS_GBS.items():
        out[f'gather_s_per_step {link}'] = eps_bytes / 1e9 / gbs
        out[f'gather_s_per_video {link}'] = (steps * eps_bytes + frame_bytes) / 1e9 / gbs
    return out
