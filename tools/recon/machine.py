"""The memory of the machine a reconstruction runs on: what it has, what is in use, what a budget says.

    budget = parse_size('2.5GB')         # --max-memory -> bytes (ValueError naming the accepted forms)
    base = bytes_in_use('cpu')           # the process RSS now (CUDA: torch's allocated bytes)
    default_budget('cuda:0')             # --max-memory when not given: None on CPU, the free device memory on CUDA
    machine_memory('cpu')                # what no plan may exceed: the physical RAM (CUDA: the GPU's total memory)
    reset_peak('cpu'); work(); peak_bytes('cpu')   # the peak of work(): VmHWM on CPU, max allocated on CUDA

Sizes are in bytes; GB means 10⁹ bytes.
"""
import os
import re

import torch

CUDA_CONTEXT = 500 * 2 ** 20            # CUDA context + kernels, not counted by max_memory_allocated (estimate)


def parse_size(text):
    """'24GB', '2.5GB', '800MB', '1.5GiB', '3000000000' -> bytes (int); ValueError (naming the accepted forms)
    for anything else, and for sizes under 1 MB (a number without its unit, such as '2.5')."""
    m = re.fullmatch(r'\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)?\s*', str(text).lower())
    units = {'': 1, 'b': 1, 'kb': 1e3, 'mb': 1e6, 'gb': 1e9, 'tb': 1e12,
             'kib': 2 ** 10, 'mib': 2 ** 20, 'gib': 2 ** 30, 'tib': 2 ** 40, 'k': 1e3, 'm': 1e6, 'g': 1e9, 't': 1e12}
    if not m or (m.group(2) or '') not in units or float(m.group(1)) * units[m.group(2) or ''] < 1e6:
        raise ValueError(f"{text!r}: use a size of at least 1 MB with its unit, e.g. 24GB, 2.5GB, 800MB, 16GiB")
    return int(float(m.group(1)) * units[m.group(2) or ''])


def release_freed_memory_to_os(threshold=128 * 1024):
    """glibc: serve allocations of at least `threshold` bytes by mmap and trim freed heap above it, so freed
    tensors leave the RSS at once: the RSS then follows the live buffers that `predict` counts, instead of
    keeping freed chunks in per-thread heaps (the default threshold rises to 32 MiB as large blocks are freed).
    Every large allocation then maps fresh pages, which costs CPU time. -> False where it cannot be set."""
    try:
        import ctypes
        libc = ctypes.CDLL('libc.so.6')
        return bool(libc.mallopt(-3, threshold) and libc.mallopt(-1, threshold))   # M_MMAP_ / M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def machine_memory(device):
    """The memory no plan may exceed, in bytes: the host's physical RAM on CPU, the GPU's total memory on CUDA
    (None where it cannot be read: then nothing is refused)."""
    try:
        if str(device).startswith('cuda'):
            return torch.cuda.get_device_properties(torch.device(device)).total_memory
        return os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, RuntimeError, AttributeError):
        return None


def bytes_in_use(device):
    """Memory in use now, the plan's `base`: the process RSS on CPU (Linux /proc), or on CUDA the bytes
    allocated by torch (the context is added by `predict`)."""
    if str(device).startswith('cuda'):
        return torch.cuda.memory_allocated(device)
    rss = _status_kib('VmRSS')
    return 0 if rss is None else rss * 1024


def _status_kib(field):
    """A field of /proc/self/status in KiB (VmRSS, VmHWM; Linux), else None."""
    try:
        with open('/proc/self/status') as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))
    except (OSError, StopIteration):
        return None


def reset_peak(device):
    """Start measuring a peak: CUDA's max-allocated counter, or the RSS high-water mark (VmHWM, reset through
    /proc/self/clear_refs, Linux >= 4.0). -> False where the CPU peak cannot be reset."""
    if str(device).startswith('cuda'):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def peak_bytes(device):
    """The peak since reset_peak in bytes: torch.cuda.max_memory_allocated, or the process's VmHWM (None where
    it cannot be read)."""
    if str(device).startswith('cuda'):
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    hwm = _status_kib('VmHWM')
    return None if hwm is None else hwm * 1024


def default_budget(device):
    """--max-memory when not given: none on CPU; on CUDA what this process can have, the free device memory plus
    what torch already holds (reserved) and the context."""
    if not str(device).startswith('cuda'):
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) + CUDA_CONTEXT
