"""Measuring helpers shared by the benchmark subcommands: timers, peak memory, tables, JSON, devices, inputs.

Peak memory: CUDA max allocated, or on CPU the process's resident-set high-water mark (VmHWM, Linux).
"""
import json
import os
import platform
import statistics
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from models.weights import resolve_device
from tools.config import add_cfg_options, load_config
from tools.recon.machine import (bytes_in_use, peak_bytes, release_freed_memory_to_os,  # noqa: F401 (recon's one setting)
                                 reset_peak)

REPO = Path(__file__).resolve().parents[2]
DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}   # None: no autocast
TINY = str(REPO / 'configs' / 'tiny.py')
RELEASED = str(REPO / 'configs' / 's1024.effn-f32.py')
GOLDEN_FILE = REPO.parent / 'shared' / 'golden' / 'golden_a.safetensors'
# The released model's goal: 8 frames of 1024x1024 end to end in at most 6 s on one H100.
TARGET = dict(frames=8, height=1024, width=1024, seconds=6.0, device='one H100', dit_peak_fraction=0.5)
# Dense bf16 tensor-core peaks (vendor datasheets, TFLOP/s) to report the DiT's fraction of peak.
BF16_PEAK_TFLOPS = {'H100 PCIe': 756.0, 'H100 NVL': 835.0, 'H100': 989.4, 'H200': 989.4, 'H800': 989.4,
                    'A100': 312.0, 'A800': 312.0, 'L40S': 362.0, '4090': 165.2}


# ---- measuring helpers ------------------------------------------------------------------------------
def sync(device):
    """Wait for the device's queued work (CUDA); a no-op on CPU."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def memory_kind(device):
    return 'cuda_max_allocated' if device.type == 'cuda' else 'cpu_rss_high_water_mark'


def current_memory_mib(device):
    """Memory in use now: CUDA allocated, or the process RSS."""
    return bytes_in_use(device) / 2 ** 20


def read_peak_mib(device):
    """Peak since the last reset_peak: CUDA max allocated, or the RSS high-water mark (absolute MiB)."""
    peak = peak_bytes(device)
    return None if peak is None else peak / 2 ** 20


def peak_memory_mib(fn, device):
    """Run fn once; peak memory it adds in MiB (CUDA: max allocated; CPU: resident-set high-water mark)."""
    base = current_memory_mib(device)
    if not reset_peak(device):
        fn()
        return None
    fn()
    peak = read_peak_mib(device)
    return None if base is None or peak is None else max(peak - base, 0)


def time_interleaved(fns, device, repeats, warmup):
    """{name: fn} -> {name: (median_ms, min_ms)}, the functions taking turns (ABCABC…) so load drifts hit all."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[k].append((time.perf_counter() - start) * 1e3)
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


class StageTimer:
    """`with timer('name'):` accumulates seconds, calls and the peak memory (absolute MiB) of each stage.

    Stage boundaries synchronise the device (so GPU work is charged to the stage that queued it); nothing
    inside a stage does. CUDA peaks are per stage. On CPU the peak is the process's high-water mark so far
    (VmHWM, not reset here: resetting it through /proc/self/clear_refs made the following stages 3-9x slower
    with 2 threads on our machines), so a stage's peak_mib is the largest RSS up to its end; the `memory`
    subcommand measures exact CPU peaks per call.
    """

    def __init__(self, device):
        self.device, self.stages = device, {}

    @contextmanager
    def __call__(self, name):
        sync(self.device)
        exact = reset_peak(self.device) if self.device.type == 'cuda' else True
        start = time.perf_counter()
        yield
        sync(self.device)
        seconds = time.perf_counter() - start
        peak = read_peak_mib(self.device) if exact else None
        s = self.stages.setdefault(name, dict(stage=name, seconds=0.0, calls=0, peak_mib=None))
        s['seconds'] += seconds
        s['calls'] += 1
        if peak is not None:
            s['peak_mib'] = max(s['peak_mib'] or 0.0, peak)


class StepTimer:
    """Seconds of each sampler step without a host-device sync (CUDA events, else perf_counter).

    start() before a sampler run, then step as the sampler's per-step callback (diffusion/samplers.py): step i
    lasts from the end of step i-1 (the first: from start()) to the end of step i, model call and update.
    seconds() -> the step times of every run so far, in order (one device sync).
    """

    def __init__(self, device):
        self.device, self.runs = device, []

    def _mark(self):
        if self.device.type == 'cuda':
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self):
        self.runs.append([self._mark()])

    def step(self, info=None):
        """The per-step callback; `info` (the sampler's step dict) is not read."""
        self.runs[-1].append(self._mark())

    def seconds(self):
        sync(self.device)
        pairs = [(a, b) for marks in self.runs for a, b in zip(marks, marks[1:])]
        if self.device.type == 'cuda':
            return [a.elapsed_time(b) / 1e3 for a, b in pairs]
        return [b - a for a, b in pairs]


def print_table(rows, columns):
    columns = [c for c in columns if any(c in r for r in rows)]
    widths = [max(len(c), *(len(fmt(r.get(c, ''))) for r in rows)) for c in columns]
    print('  '.join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print('  '.join(fmt(r.get(c, '')).ljust(w) for c, w in zip(columns, widths)))


def fmt(v):
    """A table cell: 4 significant digits for floats, - for None."""
    if v is None:
        return '-'
    if isinstance(v, float):
        return f'{v:.4g}'
    return str(v)


def write_json(path, record):
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(record, indent=2))
        print(f'wrote {path}')


def environment(device):
    env = dict(torch=torch.__version__, python=platform.python_version(), device=str(device),
               threads=torch.get_num_threads(), cpu=_cpu_name(), cpu_count=_cpu_count())
    if device.type == 'cuda':
        env['gpu'] = torch.cuda.get_device_name(device)
    return env


def _cpu_name():
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_count():
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def bf16_peak_tflops(device, override=None):
    """The device's dense bf16 peak in TFLOP/s (--peak-tflops, else by GPU name), or None."""
    if override:
        return float(override)
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def setup_device(args, exact_cpu_peaks=False):
    """torch.device from --device, CPU threads from --threads.

    exact_cpu_peaks: freed tensors go back to the OS at once, so the RSS follows the live tensors exactly;
    every large allocation then page-faults afresh, which slows CPU compute: use it to measure memory, not time.
    """
    device = resolve_device(args.device)
    if getattr(args, 'threads', 0):
        torch.set_num_threads(args.threads)
    if exact_cpu_peaks and device.type == 'cpu':
        release_freed_memory_to_os()
    return device


def autocast_for(device, dtype_name):
    dtype = DTYPES[dtype_name]
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


def load_cfg(args, random_init=False):
    """The --config file with --cfg-options applied; random_init=True: random weights (no weight files)."""
    cfg = load_config(args.config, args.cfg_options)
    if random_init:
        cfg.random_init = True
    return cfg



def add_config_args(p, default_config=TINY):
    p.add_argument('--config', default=default_config, help='model config')
    add_cfg_options(p)


def add_run_args(p):
    p.add_argument('--device', default='auto', help='cpu | cuda | cuda:N | auto')
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    p.add_argument('--json', default=None, metavar='OUT', help='also write the results as JSON here')


# ---- inputs and comparisons -------------------------------------------------------------------------
def synthetic_video(frames, height, width, seed=0):
    """(3, T, H, W) in [-1, 1]: smooth random texture drifting diagonally (compressible, like real video)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, height // 16 + 2, width // 16 + 2, generator=g) * 2 - 1
    big = F.interpolate(base, scale_factor=16, mode='bicubic', align_corners=False).clamp(-1, 1)[0]
    return torch.stack([big[:, t:t + height, t:t + width] for t in range(frames)], dim=1)



def diff_stats(y, ref):
    """max / mean |y - ref| and both relative to ref's standard deviation."""
    d = (y.float() - ref.float()).abs()
    std = ref.float().std().item()
    return dict(max_abs=d.max().item(), mean_abs=d.mean().item(), ref_std=std,
                max_rel_std=d.max().item() / std, mean_rel_std=d.mean().item() / std)

