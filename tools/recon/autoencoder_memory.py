"""The memory of another video autoencoder (models/autoencoders.py), measured on the machine that runs it: the
planner's `autoencoder` term (tools/recon/memory_model.py).

    fit = measure_autoencoder(ae, (H, W))     # (time factor, ((frames, bytes per model pixel), ...)) or None

The models differ too much to model from their shapes: diffusers tiles some spatially, runs others frame by
frame with causal caches, and some take the whole clip at once. So each is run: its encoder and then its
decoder, on zeros at the video's model frame size, for up to three lengths (1 + f, 1 + 2f and 1 + 4f frames for
a causal model with time factor f; 2, 4 and 8 frames for an image one; none past the first that holds the
video's padded length, the longest call a plan makes), after a warm-up at the shortest, so that
one-time allocations (kernels, workspaces) count as memory in use before the work. The peak over the memory in
use before each run (CUDA: torch.cuda.max_memory_allocated; CPU: the process's RSS high-water mark) is kept per
model pixel, so a lower --size is predicted from the same fit; memory_model.autoencoder_bytes interpolates between the
lengths and extends the last segment's slope beyond them. Where a model's memory stops growing with the frames
(caches, temporal tiles) that over-predicts long windows, the safe side. Fits are kept on the autoencoder object,
per frame size and lengths.
"""
import gc
import time

import torch

from models.autoencoders import frames_for
from tools.recon.machine import bytes_in_use, peak_bytes, release_freed_memory_to_os, reset_peak
from tools.recon.memory_model import autoencoder_bytes


def probe_lengths(time_factor, frames=None):
    """The clip lengths (frames) measured for a model of this time factor: 1 + f, 1 + 2f, 1 + 4f (image models:
    2, 4, 8), those past the first that holds `frames` (padded to the model's rule; None: all three) left out."""
    lengths = (1 + time_factor, 1 + 2 * time_factor, 1 + 4 * time_factor) if time_factor > 1 else (2, 4, 8)
    if frames is None:
        return lengths
    needed = frames_for(int(frames), time_factor)
    return lengths[:1 + sum(n < needed for n in lengths[:-1])]


def _peak(ae, frames, size):
    """Bytes above the memory in use before, at the peak of encoding and decoding `frames` zero frames."""
    video = torch.zeros(1, 3, frames, *size)
    gc.collect()
    base = bytes_in_use(ae.device)
    if not reset_peak(ae.device):
        return None
    ae.decode(ae.encode(video), frames)
    peak = peak_bytes(ae.device)
    return None if peak is None else max(peak - base, 0)


@torch.no_grad()
def measure_autoencoder(ae, size, room=None, say=None, frames=None):
    """-> (time factor, ((frames, bytes per model pixel), ...) for the probe_lengths, non-decreasing) for `ae`
    at model frame size (H, W) in pixels; None where the peak cannot be measured (a CPU without
    /proc/self/clear_refs). frames: the video's length (None: all three probe lengths). room: bytes the
    measurement may add to the memory in use (None: no limit); a length whose peak the points before it
    predict above the room is not run, so measuring stays within a budget that the shortest length fits.
    say(line): told once per measurement what was measured and how long."""
    fits = ae.__dict__.setdefault('memory_fits', {})
    hw, lengths = tuple(int(x) for x in size), probe_lengths(ae.time_factor, frames)
    if (hw, lengths) not in fits:
        t0 = time.perf_counter()
        if ae.device.type == 'cpu':
            release_freed_memory_to_os()          # the RSS follows the live buffers (recon sets it too)
        ae.decode(ae.encode(torch.zeros(1, 3, lengths[0], *hw)), lengths[0])        # warm-up
        pixels, points, peaks = hw[0] * hw[1], [], []
        for n in lengths:
            if points and room is not None and autoencoder_bytes(points, n) * pixels > room:
                break
            peaks.append(_peak(ae, n, hw))
            if peaks[-1] is None:
                break
            points.append((n, max(peaks) / pixels))          # non-decreasing in the frames
        fits[hw, lengths] = None if None in peaks else (ae.time_factor, tuple(points))
        if say and fits[hw, lengths]:
            said = ', '.join(f'{p / 1e6:.1f} MB for {n} frames' for n, p in zip(lengths, peaks))
            say(f'--autoencoder {ae.spec.name}: memory measured at {hw[0]}x{hw[1]} in '
                f'{time.perf_counter() - t0:.1f} s: {said}')
    return fits[hw, lengths]
