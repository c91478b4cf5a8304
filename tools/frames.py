"""Frame geometry: resize, crop and pad of video frames, and the original CascadeV's frame preprocessing.

Tensor helpers act on the last two dims, so (C, T, H, W) and (B, C, T, H, W) both work. The two
`cascadev_*` functions reproduce, bit for bit, how the original prepared 8-bit frames
(../shared/golden/RECIPE.md §12); they work on RGB uint8 numpy arrays (T, H, W, 3) and need OpenCV.
"""
import numpy as np
import torch.nn.functional as F

MULTIPLE = 32   # the compressor's down-sampling factor: model frames are multiples of it on both sides


# ---- tensor geometry ------------------------------------------------------------------------------------

def resize(video, h, w):
    """Antialiased bilinear resize of the last two dims to (h, w); a no-op when the size already matches."""
    if tuple(video.shape[-2:]) == (h, w):
        return video
    lead = video.shape[:-2]
    x = video.reshape(-1, 1, *video.shape[-2:])  # (N, 1, H, W)
    x = F.interpolate(x, size=(h, w), mode='bilinear', align_corners=False, antialias=True)
    return x.reshape(*lead, h, w)


def short_side_size(height, width, size):
    """(h, w) with the shorter side `size` and the aspect ratio kept (Python round); size 0 keeps (H, W)."""
    if not size:
        return height, width
    scale = size / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_short_side(video, size):
    """Resize so the shorter side is `size` (aspect kept, long side rounded); size 0 keeps the video as is."""
    return resize(video, *short_side_size(*video.shape[-2:], size))


def center_crop(video, h, w):
    """Crop the central h x w window (offsets rounded down: top (H-h)//2, left (W-w)//2)."""
    H, W = video.shape[-2:]
    if h > H or w > W:
        raise ValueError(f"center_crop to {h}x{w} needs a video at least that large, got {H}x{W}; resize first")
    top, left = (H - h) // 2, (W - w) // 2
    return video[..., top:top + h, left:left + w]


def pad_to_multiple(video, multiple=MULTIPLE):
    """Replicate-pad H and W up to multiples of `multiple`, split evenly (top/left get the floor) -> (video, pad)."""
    H, W = video.shape[-2:]
    ph, pw = -H % multiple, -W % multiple
    pad = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)  # (top, bottom, left, right)
    if ph == 0 and pw == 0:
        return video, pad
    lead = video.shape[:-2]
    x = F.pad(video.reshape(1, -1, H, W), (pad[2], pad[3], pad[0], pad[1]), mode='replicate')
    return x.reshape(*lead, H + ph, W + pw), pad


def unpad(video, pad):
    """Exact inverse of pad_to_multiple."""
    top, bottom, left, right = pad
    H, W = video.shape[-2:]
    return video[..., top:H - bottom, left:W - right]


# ---- the original CascadeV's preprocessing (RECIPE.md §12) ----------------------------------------------

def _check_uint8_frames(frames, name):
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        desc = f'{frames.dtype} {frames.shape}' if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f'{name}: expects RGB uint8 numpy frames (T, H, W, 3), got {desc}; convert with '
                         f'tools.video_io.to_uint8')


def cascadev_recon_preprocess(frames, short_edge, multiple=MULTIPLE):
    """The original's reconstruction preprocessing, bit-exact (RECIPE.md §12, `reconK_E` golden cases).

    Per frame: 3x3 box blur (cv2.blur, reflect-101 border); cv2.resize bilinear (no antialiasing) to
    (round(H·s), round(W·s)) with s = short_edge / min(H, W); centred crop of each side down to the largest
    multiple of `multiple` (32, the original's size_div; offsets (w - cw)//2, (h - ch)//2). The filters do not depend on channel order, so RGB in
    gives the original's output in RGB.

    frames: RGB uint8 (T, H, W, 3). Returns RGB uint8 (T, ch, cw, 3), ch and cw multiples of `multiple`.
    Raises ValueError for other inputs or when a resized side is below `multiple` pixels.
    """
    import cv2  # noqa: PLC0415 (OpenCV: only this path needs its fixed-point resize)
    _check_uint8_frames(frames, 'cascadev_recon_preprocess')
    H, W = frames.shape[1:3]
    s = short_edge / min(H, W)
    h, w = round(H * s), round(W * s)
    ch, cw = h // multiple * multiple, w // multiple * multiple
    if ch == 0 or cw == 0:
        raise ValueError(f'cascadev_recon_preprocess: {H}x{W} resized to {h}x{w} is below {multiple} pixels on a '
                         f'side; use a short edge of at least {multiple}')
    top, left = (h - ch) // 2, (w - cw) // 2
    out = np.empty((len(frames), ch, cw, 3), np.uint8)
    for i, frame in enumerate(frames):
        x = cv2.resize(cv2.blur(frame, (3, 3)), (w, h), interpolation=cv2.INTER_LINEAR)
        out[i] = x[top:top + ch, left:left + cw]
    return out


def cascadev_train_crop(frames, resolution):
    """The original's training crop, bit-exact (RECIPE.md §12, `trainK_R` golden cases): no resizing.

    A side shorter than `resolution` is first zero-padded (black) to it, centred (left (R - w)//2, top
    (R - h)//2, the remainder right/bottom); then the centred R x R window at native scale (offsets
    (w - R)//2, (h - R)//2), one window for every frame. The random flip and the [-1, 1] mapping are the
    data pipeline's (tools/data.py).

    frames: RGB uint8 (T, H, W, 3). Returns RGB uint8 (T, R, R, 3).
    """
    _check_uint8_frames(frames, 'cascadev_train_crop')
    R = int(resolution)
    if R < 1:
        raise ValueError(f'cascadev_train_crop: resolution={resolution}; must be a positive number of pixels')
    T, H, W = frames.shape[:3]
    if H < R or W < R:
        ph, pw = max(0, R - H), max(0, R - W)
        frames = np.pad(frames, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        H, W = frames.shape[1:3]
    top, left = (H - R) // 2, (W - R) // 2
    return np.ascontiguousarray(frames[:, top:top + R, left:left + R])
