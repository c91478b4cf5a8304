"""Scores of one reference/reconstruction pair: per-frame metrics (metrics.py) and the per-video row.

The metric models are set up once per evaluation (Scorers): the device, LPIPS when its weights are present,
VMAF when asked for and the ffmpeg has libvmaf, the rFVD detector when asked for and its file loads. A metric
that cannot apply to a clip (LIMITS: frames too small for it, or a single frame for a temporal metric) is not
run on it: its values are None (n/a) and not_applicable says why.
"""
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from models.weights import resolve_device
from tools.evaluation import fvd, metrics
from tools.evaluation.errors import EvalError
from tools.evaluation.tables import METRICS, TITLES, mean
from tools.evaluation.vbench import temporal_flickering

# The smallest clip each metric applies to: (pixels on each side, frames), and what sets that size.
LIMITS = {
    'psnr': (1, 1, None),
    'ssim': (11, 1, 'its 11x11 Gaussian window'),
    'lpips': (31, 1, "AlexNet's 11x11 stride-4 convolution and two 3x3 stride-2 max-pools"),
    'flicker': (1, 2, None),
    'tof': (16, 2, "OpenCV's DIS optical flow, which fails or crashes on smaller frames"),
    'vmaf': (17, 1, 'libvmaf, which crashes on smaller frames'),
    'vbench_flicker': (1, 2, None),
}


def metric_name(key):
    """'ssim' -> 'SSIM', 'vbench_flicker' -> 'VBench flicker' (the table title without its arrow and unit)."""
    return TITLES[key].removesuffix(' ↑').removesuffix(' ↓').removesuffix(' (dB)')


def not_applicable(key, frames, height, width):
    """Why metric `key` cannot score a clip of `frames` frames of height x width pixels (one phrase), or None."""
    side, count, why = LIMITS[key]
    if min(height, width) < side:
        return (f'{metric_name(key)} needs frames of at least {side}x{side} pixels ({why}), this clip is '
                f'{height}x{width}')
    if frames < count:
        return f'{metric_name(key)} needs at least {count} frames (it compares consecutive ones), this clip has {frames}'
    return None


@dataclass
class Scorers:
    """What every pair is scored with. device: a torch.device. lpips_model None: the LPIPS column stays empty,
    lpips_note says why (None when LPIPS ran). vmaf: None, or {model, ffmpeg_version, ffmpeg, libvmaf (once a
    clip is scored)}. detector: the rFVD I3D TorchScript module, None when rFVD is not computed; fvd_note: why
    (None when the detector loaded; 'rFVD not computed (pass --fvd)' when it was not asked for); fvd_path: its file."""
    device: torch.device
    lpips_model: object = None
    lpips_note: str | None = None
    vmaf: dict | None = None
    detector: object = None
    fvd_note: str | None = 'rFVD not computed (pass --fvd)'
    fvd_path: str | None = None


def load_detector(warn, device, path):
    """(detector, None) or, when the file is missing or not TorchScript, (None, the one-line reason), warned."""
    try:
        return fvd.load_detector(path, device), None
    except fvd.FVDUnavailable as e:
        warn(str(e))
        return None, str(e)


def load_scorers(warn, device='auto', lpips=True, vmaf=False, fvd_detector=None):
    """Scorers for an evaluation: the device checked first (EvalError '--device: ...' for one this machine lacks),
    then VMAF (EvalError '--vmaf: ...' when ffmpeg lacks libvmaf), then LPIPS loaded on the device, then the
    rFVD detector from the file `fvd_detector` (None: no rFVD); a missing LPIPS or detector is warned about
    (warn(message), one line) and noted, not an error."""
    try:
        device = resolve_device(device)
    except ValueError as e:
        raise EvalError(f'--device: {e}') from None
    vmaf_info = None
    if vmaf:
        try:
            vmaf_info = metrics.vmaf_check()
        except metrics.VMAFUnavailable as e:
            raise EvalError(f'--vmaf: {e}') from None
    lpips_model, lpips_note = None, None if lpips else 'LPIPS disabled (--no-lpips)'
    if lpips:
        try:
            lpips_model = metrics.load_lpips(device)
        except metrics.LPIPSUnavailable as e:
            lpips_note = str(e)
            warn(lpips_note)
    scorers = Scorers(device, lpips_model, lpips_note, vmaf_info)
    if fvd_detector is not None:
        scorers.detector, scorers.fvd_note = load_detector(warn, device, fvd_detector)
        scorers.fvd_path = str(fvd_detector)
    return scorers


def metric_values(key, ref, rec, lpips_model=None, device='cpu'):
    """One metric of two uint8 clips (T, H, W, 3) of one shape -> (T values, libvmaf version or None).

    psnr (dB, inf for identical frames), ssim, lpips (needs lpips_model), flicker, tof, vmaf as in metrics.py;
    flicker[0] and tof[0] are None (no previous frame). Raises what the metric raises on a clip it cannot
    score (see not_applicable)."""
    if key == 'vmaf':
        scores, version = metrics.vmaf(ref, rec)
        return scores.tolist(), version
    if key == 'lpips':
        return metrics.lpips_distance(lpips_model, ref, rec, device=device).tolist(), None
    if key == 'tof':
        return [None] + metrics.tof(ref, rec).tolist(), None
    values = getattr(metrics, key)(ref, rec, device=device).tolist()
    return ([None] + values if key == 'flicker' else values), None


def frame_metrics(ref, rec, lpips_model=None, device='cpu', vmaf=False):
    """Two uint8 clips (T, H, W, 3) of one shape -> ({metric: [T values]}, libvmaf version or None).

    Every metric of METRICS through metric_values; LPIPS without a model, VMAF without `vmaf` and a metric that
    does not apply to the clip (not_applicable) are None in every frame."""
    t, h, w = ref.shape[:3]
    wanted = {'lpips': lpips_model is not None, 'vmaf': vmaf}
    per, version = {}, None
    for key in METRICS:
        if not wanted.get(key, True) or not_applicable(key, t, h, w):
            per[key] = [None] * t
            continue
        per[key], found = metric_values(key, ref, rec, lpips_model, device)
        version = version or found
    return per, version


def video_row(method, name, per, shape, ref_path, rec_path, rec=None):
    """One per_video.csv row (tables.VIDEO_COLUMNS) from frame_metrics output; shape: the compared (H, W).
    PSNR is metrics.mean_psnr of the frames (identical frames counted in psnr_inf_frames); the other metrics
    are means over the frames (flicker, tOF: over the consecutive pairs), None where not computed;
    vbench_flicker: VBench temporal flickering of the compared reconstruction frames `rec` (uint8 (T, H, W, 3);
    None without them or for one frame)."""
    return {'method': method, 'video': name, 'frames': len(per['psnr']), 'height': shape[0], 'width': shape[1],
            'psnr': metrics.mean_psnr(per['psnr']), 'psnr_inf_frames': sum(math.isinf(v) for v in per['psnr']),
            'ssim': mean(per['ssim']), 'lpips': mean(per['lpips']), 'flicker': mean(per['flicker'][1:]),
            'tof': mean(per['tof'][1:]), 'vmaf': mean(per['vmaf']),
            'vbench_flicker': None if rec is None else temporal_flickering(rec),
            'ref': str(Path(ref_path).resolve()), 'rec': str(Path(rec_path).resolve())}
