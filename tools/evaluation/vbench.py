"""VBench's dimensions that need no network (Huang et al. 2024, "VBench: Comprehensive Benchmark Suite for Video
Generative Models"): temporal flickering.

VBench scores temporal flickering without a reference: the mean absolute difference of consecutive frames on the
0–255 scale, over all pixels and channels, averaged over the video's frame pairs; score (255 − mean) / 255 in
[0, 1], 1 = no change between frames. (VBench evaluates it on static-camera clips; on moving content it measures
motion as much as flicker, so compare methods on the same clips.) The other temporal dimensions — subject and
background consistency (DINO, CLIP), motion smoothness (AMT frame interpolation), imaging and aesthetic quality
(MUSIQ, LAION) — need models that are not shipped here.
"""
import numpy as np


def temporal_flickering(frames, chunk=16):
    """uint8 (T, H, W, 3) frames -> VBench temporal-flickering score (float in [0, 1]); None for T < 2.

    Computed in chunks of `chunk` frame pairs (memory ~ chunk frames, int16 differences)."""
    t = len(frames)
    if t < 2:
        return None
    total, pairs = 0.0, 0
    for a in range(0, t - 1, chunk):
        b = min(a + chunk, t - 1)
        x = np.asarray(frames[a:b + 1], np.int16)
        d = np.abs(np.diff(x, axis=0))
        total += float(d.reshape(len(d), -1).mean(axis=1, dtype=np.float64).sum())
        pairs += len(d)
    return (255.0 - total / pairs) / 255.0
