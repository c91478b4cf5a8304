"""Scores of one reference/reconstruction pair: per-frame metrics (metrics.py) and the per-video row.

The metric models are set up once per evaluation (Scorers): the device, LPIPS when its weights are present,
VMAF when asked for and the ffmpeg has libvmaf.
"""
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from tools.evaluation import metrics
from tools.evaluation.errors import EvalError
from tools.evaluation.tables import mean


def pick_device(device):
    """'auto' or None -> 'cuda' when available, else 'cpu'; any other torch device string as given."""
    if device in (None, 'auto'):
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return device


@dataclass
class Scorers:
    """What every pair is scored with. lpips_model None: the LPIPS column stays empty, lpips_note says why
    (None when LPIPS ran). vmaf: None, or {model, ffmpeg_version, ffmpeg, libvmaf (once a clip is scored)}."""
    device: str
    lpips_model: object = None
    lpips_note: str | None = None
    vmaf: dict | None = None


def load_scorers(warn, device='auto', lpips=True, vmaf=False):
    """Scorers for an evaluation: VMAF checked first (EvalError '--vmaf: ...' when ffmpeg lacks libvmaf), then
    LPIPS loaded on the device; a missing LPIPS is warned about (warn(message)) and noted, not an error."""
    vmaf_info = None
    if vmaf:
        try:
            vmaf_info = metrics.vmaf_check()
        except metrics.VMAFUnavailable as e:
            raise EvalError(f'--vmaf: {e}') from None
    device = pick_device(device)
    lpips_model, lpips_note = None, None if lpips else 'LPIPS disabled (--no-lpips)'
    if lpips:
        try:
            lpips_model = metrics.load_lpips(device)
        except metrics.LPIPSUnavailable as e:
            lpips_note = str(e)
            warn(lpips_note)
    return Scorers(device, lpips_model, lpips_note, vmaf_info)


def frame_metrics(ref, rec, lpips_model=None, device='cpu', vmaf=False):
    """Two uint8 clips (T, H, W, 3) of one shape -> ({metric: [T values]}, libvmaf version or None).

    psnr (dB, inf for identical frames), ssim, lpips, flicker, tof, vmaf as in metrics.py; flicker[0] and
    tof[0] are None (no previous frame); LPIPS without a model and VMAF without `vmaf` are None."""
    t = len(ref)
    per = {'psnr': metrics.psnr(ref, rec, device=device).tolist(),
           'ssim': metrics.ssim(ref, rec, device=device).tolist(),
           'lpips': (metrics.lpips_distance(lpips_model, ref, rec, device=device).tolist()
                     if lpips_model is not None else [None] * t),
           'flicker': [None] + metrics.flicker(ref, rec, device=device).tolist(),
           'tof': [None] + metrics.tof(ref, rec).tolist(),
           'vmaf': [None] * t}
    version = None
    if vmaf:
        scores, version = metrics.vmaf(ref, rec)
        per['vmaf'] = scores.tolist()
    return per, version


def video_row(method, name, per, shape, ref_path, rec_path):
    """One per_video.csv row (tables.VIDEO_COLUMNS) from frame_metrics output; shape: the compared (H, W).
    PSNR is metrics.mean_psnr of the frames (identical frames counted in psnr_inf_frames); the other metrics
    are means over the frames (flicker, tOF: over the consecutive pairs), None where not computed."""
    return {'method': method, 'video': name, 'frames': len(per['psnr']), 'height': shape[0], 'width': shape[1],
            'psnr': metrics.mean_psnr(per['psnr']), 'psnr_inf_frames': sum(math.isinf(v) for v in per['psnr']),
            'ssim': mean(per['ssim']), 'lpips': mean(per['lpips']), 'flicker': mean(per['flicker'][1:]),
            'tof': mean(per['tof'][1:]), 'vmaf': mean(per['vmaf']),
            'ref': str(Path(ref_path).resolve()), 'rec': str(Path(rec_path).resolve())}
