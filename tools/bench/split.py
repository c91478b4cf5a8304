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
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from models.parallel import WorkSplit
from tools.bench.measure import print_table, write_json

REPO = Path(__file__).resolve().parents[2]
OWN_FLAGS = ('--processes', '--threads', '--json')          # set per child by bench_processes


def launched():
    """Whether this process is one of a launch (torchrun/accelerate or bench_processes set WORLD_SIZE > 1)."""
    return int(os.environ.get('WORLD_SIZE', '1')) > 1


def join_launch(device):
    """Under a launch: the process group (NCCL on CUDA, one GPU per process by LOCAL_RANK; else gloo) and its
    WorkSplit -> (device, split); alone -> (device, WorkSplit())."""
    if not launched():
        return device, WorkSplit()
    if device.type == 'cuda':
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
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
    with tempfile.TemporaryDirectory() as tmp:
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
    print(f'split / reference: end to end {ratio:.3f}x, per DiT step {step_ratio:.3f}x '
          f'({n} processes x {t} thread(s) against 1 x {n * t}, same video, measured in this run)')
    return dict(benchmark='recon-processes', processes=n, threads_per_process=t, reference=alone, split=split,
                rows=rows, end_to_end_ratio=ratio, step_ratio=step_ratio)
