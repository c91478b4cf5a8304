"""Per-frame video metrics on uint8 frames: PSNR, SSIM, LPIPS (AlexNet), flicker, tOF and VMAF.

Every metric takes two clips of uint8 RGB frames, (T, H, W, 3) numpy arrays or tensors as written by
`tools.video.write.to_uint8`, and returns one value per frame (flicker and tOF: per pair of consecutive frames).
PSNR and flicker sum the uint8 errors exactly (int64) and divide in float64, SSIM is computed in float64, all
on the [0, 1] scale; LPIPS in float32 on [-1, 1]; tOF in pixels of optical flow (OpenCV DIS); VMAF (0..100)
by libvmaf inside the ffmpeg that imageio-ffmpeg ships. Where a metric cannot apply (frames too small for it)
see tools.evaluation.scoring.LIMITS.
"""
import json
import math
import os
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import torch
import torch.nn.functional as F

ALEXNET_FILE = 'alexnet-owt-7be5be79.pth'  # torchvision's ImageNet AlexNet, the LPIPS 'alex' backbone
ALEXNET_URL = f'https://download.pytorch.org/models/{ALEXNET_FILE}'


def to_levels(frames, device='cpu', dtype=torch.float64):
    """uint8 frames (T, H, W, 3) -> tensor (T, 3, H, W) of uint8 levels 0..255 in `dtype` (exact integers)."""
    frames = torch.as_tensor(np.asarray(frames))
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f'metrics expect uint8 frames (T, H, W, 3), got {tuple(frames.shape)} {frames.dtype} '
                         '(convert clips with tools.video.write.to_uint8)')
    return frames.to(device).permute(0, 3, 1, 2).to(dtype)


def to_unit(frames, device='cpu'):
    """uint8 frames (T, H, W, 3) -> float64 tensor (T, 3, H, W) in [0, 1]."""
    return to_levels(frames, device) / 255


def _check_pair(ref, rec):
    if tuple(np.shape(ref)) != tuple(np.shape(rec)):
        raise ValueError(f'metrics need clips of equal shape, got {tuple(np.shape(ref))} and {tuple(np.shape(rec))} '
                         '(resize/trim the reconstruction to the reference first)')


def _chunks(n, size):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _error(ref, rec, device):
    """rec − ref in uint8 levels, int16 (T, 3, H, W): exact, -255..255."""
    return to_levels(rec, device, torch.int16) - to_levels(ref, device, torch.int16)


def _frame_budget(ref, budget):
    """Frames of `ref` (T, H, W, 3) whose int16 error stack fits in `budget` bytes (at least 1)."""
    return max(1, budget // (2 * 3 * int(np.prod(np.shape(ref)[1:3]))))


def psnr(ref, rec, chunk=None, device='cpu'):
    """Per-frame PSNR in dB, 10·log10(1 / MSE) on [0, 1]; inf where the frames are identical. -> (T,) float64.
    The squared errors are summed exactly (int64) and divided in float64. Frames go `chunk` at a time
    (default: an 8 MiB int16 error stack, about a 1080p frame)."""
    _check_pair(ref, rec)
    chunk = chunk or _frame_budget(ref, 1 << 23)
    n = 3 * int(np.prod(np.shape(ref)[1:3]))
    out = []
    for s in _chunks(len(ref), chunk):
        e = _error(ref[s], rec[s], device).to(torch.int32)
        sse = (e * e).sum(dim=(1, 2, 3), dtype=torch.int64).double()          # (t,) exact sums of squares
        mse = sse / n / 255 ** 2                                               # on the [0, 1] scale
        out.append(10 * torch.log10(1 / mse))  # 1/0 -> inf
    return torch.cat(out).cpu()


def gaussian_window(size=11, sigma=1.5, dtype=torch.float64):
    """Normalised 1-D Gaussian taps (size odd); 11 taps, σ=1.5 as in Wang et al. 2004."""
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    w = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return w / w.sum()


def _blur(x, w):
    """Separable 'valid' filter with taps w (odd length k): (N, H, W) -> (N, H-k+1, W-k+1), x's dtype.

    On the CPU OpenCV's separable filter, a plane at a time (cv2.sepFilter2D; the border it pads is cropped
    away, a view); elsewhere two 1-D convolutions (F.conv2d). Both sum the same products, so they agree to
    rounding (~1e-16 in float64). On the CPU a convolution would unfold its input k times into fresh memory,
    costing more system time than arithmetic.
    """
    k = len(w)
    if x.device.type == 'cpu' and x.dtype in (torch.float32, torch.float64):
        n, h, wd = x.shape
        taps, depth = w.to(x.dtype).numpy(), cv2.CV_64F if x.dtype == torch.float64 else cv2.CV_32F
        planes, full = x.contiguous().numpy(), np.empty((n, h, wd), x.numpy().dtype)
        for i in range(n):
            cv2.sepFilter2D(planes[i], depth, taps, taps, dst=full[i], borderType=cv2.BORDER_REPLICATE)
        r = k // 2
        return torch.from_numpy(full)[:, r:h - r, r:wd - r]
    x = F.conv2d(x[:, None], w.view(1, 1, -1, 1))
    return F.conv2d(x, w.view(1, 1, 1, -1))[:, 0]


def ssim_planes(x, y, window, k1=0.01, k2=0.03, budget=1 << 23):
    """Mean SSIM (Wang et al. 2004, eq. 13) of each plane pair: x, y (N, H, W) on [0, 1] in any float dtype,
    `window` the 1-D Gaussian taps (gaussian_window) in that dtype; population covariances, mean over the
    positions where the window fits. Planes go a `budget` of bytes at a time (at least one). -> (N,)"""
    c1, c2 = k1 ** 2, k2 ** 2  # (K·L)² with L = 1
    n, h, w = x.shape
    out = []
    for s in _chunks(n, max(1, budget // (h * w * x.element_size()))):
        a, b = x[s], y[s]
        mx, my, mxx, myy, mxy = (_blur(m, window) for m in (a, b, a * a, b * b, a * b))
        mx2, my2, mxmy = mx * mx, my * my, mx * my
        vx, vy, vxy = mxx.sub_(mx2), myy.sub_(my2), mxy.sub_(mxmy)      # in place: no new maps
        num = mxmy.mul_(2).add_(c1).mul_(vxy.mul_(2).add_(c2))         # (2·μx·μy + C1)(2·σxy + C2)
        den = mx2.add_(my2).add_(c1).mul_(vx.add_(vy).add_(c2))        # (μx² + μy² + C1)(σx² + σy² + C2)
        out.append(num.div_(den).mean(dim=(1, 2)))
    return torch.cat(out)


def ssim(ref, rec, win_size=11, sigma=1.5, k1=0.01, k2=0.03, chunk=None, device='cpu'):
    """Per-frame SSIM (Wang et al. 2004, eq. 13): Gaussian window, population covariances, mean of the RGB
    channel SSIMs over the positions where the window fits (as skimage's structural_similarity with
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1). -> (T,)"""
    _check_pair(ref, rec)
    h, w = np.shape(ref)[1:3]
    if min(h, w) < win_size:
        raise ValueError(f'SSIM needs frames of at least {win_size}x{win_size} pixels, got {h}x{w}')
    win = gaussian_window(win_size, sigma).to(device)
    chunk = chunk or max(1, (1 << 21) // (5 * h * w))  # frames per step: a 16 MiB float64 stack per channel
    out = []
    for s in _chunks(len(ref), chunk):
        x, y = to_unit(ref[s], device), to_unit(rec[s], device)                  # (t, 3, H, W)
        planes = ssim_planes(x.reshape(-1, h, w), y.reshape(-1, h, w), win, k1, k2)   # (t·3,) per channel
        out.append(planes.view(-1, 3).mean(dim=1))  # (t,) mean over pixels, then channels
    return torch.cat(out).cpu()


def flicker(ref, rec, chunk=None, device='cpu'):
    """Temporal error: mean |Δrec − Δref| on [0, 1], Δ = frame t minus frame t−1. -> (T−1,) float64, 0 if
    identical and 0 for an error that is the same in every frame (only changes of the error over time count).
    The absolute differences are summed exactly (int64) and divided in float64. Frames go `chunk` at a time
    (default: an 8 MiB int16 error stack)."""
    _check_pair(ref, rec)
    chunk = chunk or _frame_budget(ref, 1 << 23)
    n = 3 * int(np.prod(np.shape(ref)[1:3]))
    out, prev = [], None
    for s in _chunks(len(ref), chunk):
        d = _error(ref[s], rec[s], device)  # (t, 3, H, W) int16; Δrec − Δref = Δ(rec − ref), -510..510
        if prev is not None:
            d = torch.cat([prev, d])
        out.append((d[1:] - d[:-1]).abs().sum(dim=(1, 2, 3), dtype=torch.int64).double() / n / 255)
        prev = d[-1:]
    return torch.cat(out).cpu()


# ----------------------------------------------------------------------------------------------------------
# LPIPS (Zhang et al. 2018), 'alex' variant v0.1, from the `lpips` package with weights loaded locally only.


class LPIPSUnavailable(RuntimeError):
    """LPIPS cannot run here; the message names the missing file and where to put it."""


def alexnet_weights_path():
    """Where torchvision keeps the AlexNet ImageNet weights (honours TORCH_HOME / XDG_CACHE_HOME)."""
    return Path(torch.hub.get_dir()) / 'checkpoints' / ALEXNET_FILE


def load_lpips(device='cpu'):
    """The LPIPS-alex network with local weights only (never downloads); raises LPIPSUnavailable."""
    try:
        import lpips
    except ImportError as e:
        raise LPIPSUnavailable(f'LPIPS unavailable: the lpips package is not importable ({e}); '
                               'install it with `.venv/bin/pip install lpips`') from None
    backbone = alexnet_weights_path()
    if not backbone.is_file():
        raise LPIPSUnavailable(f'LPIPS unavailable: put {ALEXNET_FILE} in {backbone.parent}/ '
                               f'(download {ALEXNET_URL} on a machine with network access)')
    linear = Path(lpips.__file__).parent / 'weights' / 'v0.1' / 'alex.pth'
    if not linear.is_file():
        raise LPIPSUnavailable(f'LPIPS unavailable: the lpips package lacks its linear weights {linear}; '
                               'reinstall it with `.venv/bin/pip install --force-reinstall lpips`')
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=` argument
        warnings.simplefilter('ignore')
        model = lpips.LPIPS(pretrained=False, net='alex', pnet_rand=True, verbose=False)  # no download path
    features = torch.load(backbone, map_location='cpu', weights_only=True)
    slices = {name.split('.')[1]: name.split('.')[0] for name in model.net.state_dict()}  # '3' -> 'slice2'
    remapped = {}
    for key, value in features.items():
        if key.startswith('features.'):
            index, param = key.split('.')[1:]
            remapped[f'{slices[index]}.{index}.{param}'] = value
    model.net.load_state_dict(remapped, strict=True)
    missing, _ = model.load_state_dict(torch.load(linear, map_location='cpu', weights_only=True), strict=False)
    if any(k.startswith('lin') and not k.startswith('lins.') for k in missing):
        raise LPIPSUnavailable(f'LPIPS unavailable: {linear} does not hold the lin0..lin4 weights (reinstall lpips)')
    return model.eval().requires_grad_(False).to(device)


@torch.no_grad()
def lpips_distance(model, ref, rec, chunk=4, device='cpu'):
    """Per-frame LPIPS distance (lower is better) with a model from load_lpips. -> (T,) float64."""
    _check_pair(ref, rec)
    out = []
    for s in _chunks(len(ref), chunk):
        x = to_unit(ref[s], device).float() * 2 - 1  # (t, 3, H, W) in [-1, 1]
        y = to_unit(rec[s], device).float() * 2 - 1
        out.append(model(x, y).flatten().double())
    return torch.cat(out).cpu()


def mean_psnr(values):
    """Mean of per-frame PSNRs over the finite ones; inf if every frame is identical, nan if empty."""
    values = [float(v) for v in values]
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        return sum(finite) / len(finite)
    return math.inf if values else math.nan


# ----------------------------------------------------------------------------------------------------------
# tOF: temporal optical-flow error (Chu et al. 2020, TecoGAN, "Learning temporal coherence via self-supervision
# for GAN-based video generation", ACM TOG 39(4)), with OpenCV's DIS flow (Kroeger et al. 2016).


def tof(ref, rec):
    """Per-pair tOF: mean over pixels of |F_rec − F_ref|₁ (|Δu| + |Δv|, in pixels), F = DIS optical flow
    (OpenCV, preset MEDIUM) from frame t−1 to frame t of the luma (cv2 RGB2GRAY). -> (T−1,) float64;
    0 for identical clips; grows when the reconstruction's motion differs from the reference's."""
    _check_pair(ref, rec)
    ref, rec = np.asarray(ref), np.asarray(rec)
    _check_frames(ref)  # the uint8 (T, H, W, 3) check
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    out = []
    prev = None
    for a, b in zip(ref, rec):
        cur = (cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY))
        if prev is not None:
            f_ref = dis.calc(prev[0], cur[0], None)  # (H, W, 2) float32, pixels
            f_rec = dis.calc(prev[1], cur[1], None)
            out.append(float(np.abs(f_rec.astype(np.float64) - f_ref).sum(axis=-1).mean()))
        prev = cur
    return torch.tensor(out, dtype=torch.float64)


def _check_frames(frames):
    """Raise to_levels' ValueError unless frames are uint8 RGB (T, H, W, 3)."""
    to_levels(frames[:1])


# ----------------------------------------------------------------------------------------------------------
# VMAF (Li et al. 2016, Netflix), model vmaf_v0.6.1, computed by libvmaf through ffmpeg's `libvmaf` filter.

VMAF_MODEL = 'vmaf_v0.6.1'


class VMAFUnavailable(RuntimeError):
    """VMAF cannot run here; the message names the ffmpeg binary and the fix."""


def ffmpeg_exe():
    """The ffmpeg binary that imageio-ffmpeg ships (the one every install has)."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def vmaf_check():
    """{'ffmpeg': path, 'ffmpeg_version': str, 'model': VMAF_MODEL}; raises VMAFUnavailable without libvmaf."""
    exe = ffmpeg_exe()
    try:
        filters = subprocess.run([exe, '-hide_banner', '-filters'], capture_output=True, text=True, timeout=60).stdout
        version = subprocess.run([exe, '-hide_banner', '-version'], capture_output=True, text=True,
                                 timeout=60).stdout.split('\n')[0]
    except OSError as e:
        raise VMAFUnavailable(f'VMAF unavailable: cannot run {exe} ({e}); reinstall imageio-ffmpeg') from None
    if not any(line.split()[1:2] == ['libvmaf'] for line in filters.splitlines()):
        raise VMAFUnavailable(f'VMAF unavailable: {exe} has no libvmaf filter (`ffmpeg -filters`); install an '
                              f'imageio-ffmpeg whose ffmpeg is built with --enable-libvmaf')
    return {'ffmpeg': exe, 'ffmpeg_version': version.removeprefix('ffmpeg version ').split(' Copyright')[0],
            'model': VMAF_MODEL}


def _feed(fd, frames, errors):
    try:
        with os.fdopen(fd, 'wb') as f:
            for frame in frames:
                f.write(np.ascontiguousarray(frame).tobytes())
    except (BrokenPipeError, OSError) as e:  # ffmpeg stopped reading; its exit status says why
        errors.append(e)


def vmaf(ref, rec, threads=None):
    """Per-frame VMAF (model vmaf_v0.6.1) of rec against ref by libvmaf -> ((T,) float64 tensor, libvmaf version).

    Both clips go to ffmpeg as raw rgb24 frames through pipes (lossless, nothing re-encoded); ffmpeg converts
    them to Y'CbCr 4:4:4 (swscale's default BT.601 limited range) for libvmaf, which scores the luma. The
    per-frame scores come from libvmaf's JSON log."""
    _check_pair(ref, rec)
    ref, rec = np.asarray(ref), np.asarray(rec)
    _check_frames(ref)
    t, h, w = ref.shape[:3]
    threads = threads or min(8, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix='vmaf') as tmp:
        rd_rec, wr_rec = os.pipe()
        rd_ref, wr_ref = os.pipe()
        raw = ['-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', f'{w}x{h}', '-framerate', '25']
        graph = ('[0:v]format=yuv444p[dis];[1:v]format=yuv444p[ref];[dis][ref]libvmaf='
                 f'model=version={VMAF_MODEL}:log_fmt=json:n_threads={threads}:log_path=vmaf.json')  # in cwd=tmp
        cmd = [ffmpeg_exe(), '-hide_banner', '-nostdin', '-loglevel', 'error', *raw, '-i', f'pipe:{rd_rec}',
               *raw, '-i', f'pipe:{rd_ref}', '-lavfi', graph, '-f', 'null', '-']
        try:
            proc = subprocess.Popen(cmd, pass_fds=(rd_rec, rd_ref), cwd=tmp, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
        finally:
            os.close(rd_rec)
            os.close(rd_ref)
        errors = []
        feeders = [threading.Thread(target=_feed, args=(fd, clip, errors), daemon=True)
                   for fd, clip in ((wr_rec, rec), (wr_ref, ref))]
        for f in feeders:
            f.start()
        stderr = proc.communicate()[1].decode(errors='replace').strip()
        for f in feeders:
            f.join()
        log = os.path.join(tmp, 'vmaf.json')
        if proc.returncode != 0 or not os.path.isfile(log):
            raise RuntimeError(f'VMAF: ffmpeg libvmaf failed (exit {proc.returncode}): '
                               f'{stderr.splitlines()[-1] if stderr else "no message"}')
        with open(log) as f:
            result = json.load(f)
    scores = [fr['metrics']['vmaf'] for fr in sorted(result['frames'], key=lambda fr: fr['frameNum'])]
    if len(scores) != t:
        raise RuntimeError(f'VMAF: libvmaf scored {len(scores)} frames, expected {t}')
    return torch.tensor(scores, dtype=torch.float64), str(result.get('version', 'unknown'))
