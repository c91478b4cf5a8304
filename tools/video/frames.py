"""Frame geometry: the frame plan (source -> model -> output frames), resize/crop/pad, the original's preprocessing.

    p = plan(144, 176, size=64, square=True)     # pure arithmetic, JSON-able: p.to_dict(), FramePlan.from_dict
    model_in = p.to_model(frames)                # (C, T, 144, 176) -> (C, T, 64, 64): crop, resize, pad to 32
                                                 # (plan(..., multiple=8): another autoencoder's factor)
    out = p.to_output(model_out)                 # (C, T, 64, 64) -> (C, T, 144, 144): unpad, resize back
    ref = p.reference(frames)                    # (C, T, 144, 144): what `out` is compared with

recon.py, tools/eval.py and the benchmark go through one plan, so what is compared is what was made.
Tensor helpers act on the last two dims, so (C, T, H, W) and (B, C, T, H, W) both work. The two
`cascadev_*` functions reproduce, bit for bit, how the original prepared 8-bit frames
(../shared/golden/RECIPE.md §12); they work on RGB uint8 numpy arrays (T, H, W, 3) and need OpenCV.
"""
from dataclasses import dataclass, fields

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from tools.video.write import to_uint8

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


def from_uint8(frames):
    """RGB uint8 (T, H, W, 3) -> float32 (3, T, H, W) in [-1, 1]: v / 127.5 - 1 (tools/video_io.to_uint8
    inverts it exactly)."""
    x = torch.empty((3, *frames.shape[:3]), dtype=torch.float32)
    x.copy_(torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2))
    return x.div_(127.5).sub_(1.0)


def map_frames(fn, frames, uint8=False):
    """fn (float (3, 1, H, W) in [-1, 1] -> (C, 1, h, w)) applied to RGB uint8 frames (T, H, W, 3) one at a
    time -> float32 (C, T, h, w), or with uint8=True RGB uint8 (T, h, w, 3). Memory: the result plus one
    frame's float temporaries, not a whole float chunk at the source size."""
    out = None
    for j in range(len(frames)):
        y = fn(from_uint8(frames[j:j + 1]))                        # (C, 1, h, w)
        if uint8:
            y = to_uint8(y)                                        # (1, h, w, 3)
            out = np.empty((len(frames), *y.shape[1:]), np.uint8) if out is None else out
            out[j] = y[0]
        else:
            out = y.new_empty((y.shape[0], len(frames), *y.shape[2:])) if out is None else out
            out[:, j] = y[:, 0]
    return out


# ---- the original CascadeV's preprocessing (RECIPE.md §12) ----------------------------------------------

def _check_uint8_frames(frames, name):
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        desc = f'{frames.dtype} {frames.shape}' if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f'{name}: expects RGB uint8 numpy frames (T, H, W, 3), got {desc}; convert with '
                         f'tools.video.write.to_uint8')


def cascadev_box(height, width, short_edge, multiple=MULTIPLE, fix='use a short edge'):
    """The original's reconstruction geometry (RECIPE.md §12): resized size (round(H·s), round(W·s)),
    s = short_edge / min(H, W), and the centred crop of each side down to a multiple of `multiple`
    -> ((h, w), (top, left, ch, cw)). ValueError (ending with `fix`) when a cropped side would be 0."""
    s = short_edge / min(height, width)
    h, w = round(height * s), round(width * s)
    ch, cw = h // multiple * multiple, w // multiple * multiple
    if ch == 0 or cw == 0:
        raise ValueError(f'{height}x{width} resized to {h}x{w} is below {multiple} pixels on a side; {fix} of at '
                         f'least {multiple}')
    return (h, w), ((h - ch) // 2, (w - cw) // 2, ch, cw)


def cascadev_recon_preprocess(frames, short_edge, multiple=MULTIPLE):
    """The original's reconstruction preprocessing, bit-exact (RECIPE.md §12, `reconK_E` golden cases).

    Per frame: 3x3 box blur (cv2.blur, reflect-101 border); cv2.resize bilinear (no antialiasing) to
    (round(H·s), round(W·s)) with s = short_edge / min(H, W); centred crop of each side down to the largest
    multiple of `multiple` (32, the original's size_div; offsets (w - cw)//2, (h - ch)//2). The filters do
    not depend on channel order, so RGB in gives the original's output in RGB.

    frames: RGB uint8 (T, H, W, 3). Returns RGB uint8 (T, ch, cw, 3), ch and cw multiples of `multiple`.
    Raises ValueError for other inputs or when a resized side is below `multiple` pixels.
    """
    _check_uint8_frames(frames, 'cascadev_recon_preprocess')
    try:
        (h, w), (top, left, ch, cw) = cascadev_box(*frames.shape[1:3], short_edge, multiple)
    except ValueError as e:
        raise ValueError(f'cascadev_recon_preprocess: {e}') from None
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
    data pipeline's (tools/training/data.py).

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


TRANSFORMS = ('crop', 'resize_crop')   # data.transform: cascadev_train_crop | resize_short_side, then center_crop


# ---- the frame plan: source frames <-> model frames <-> output frames -------------------------------------

PREPROCESS = ('default', 'cascadev')


def _box(height, width, h, w):
    """The centred h x w box of an H x W frame as [top, left, h, w] (offsets rounded down, as center_crop)."""
    return [(height - h) // 2, (width - w) // 2, h, w]


@dataclass(frozen=True)
class FramePlan:
    """How a clip's frames are selected and shaped on the way into the model and back out: plain numbers.

    preprocess='default' (full frame): source (H, W) -> `crop` (the central square with --square, else
    none) -> bilinear antialiased resize of the short side to `size` (0 keeps the size) -> `resized` ->
    replicate-pad to multiples of `multiple` (`pad`, split evenly) -> `model`. `multiple` is the model's
    spatial factor: 32 for CascadeV's compressor, another autoencoder's own (e.g. 8: a 1080-row frame is not
    padded). Outputs undo the pad and resize back, so `output` is the source size (the square's size with
    --square) and `reference` is the source cropped.

    preprocess='cascadev' (the original's reconstruction preprocessing, RECIPE.md §12): 3x3 box blur and
    OpenCV bilinear resize of the short side to `size` (0: the source's short side) -> `resized` -> `crop`
    (centred, to multiples of 32, which `multiple` divides, then the central square with --square; the box
    is in `resized` pixels). No padding: `model` == `output` == the crop, and `reference` is the preprocessed
    source, as the original compared.

    upscale=True keeps the model's resolution: `output` is `resized` (short side `size`, the source's
    aspect ratio, no padding) instead of the source size, and `reference` is the source resized to it —
    the cascade as a super-resolution stage. (With cascadev, output already is the model's size.)

    Frames: source frames start, start + stride, ..., `num_frames` of them (None: all that exist).
    Boxes are [top, left, h, w], pad is [top, bottom, left, right], sizes are [h, w] in pixels.
    """
    source: tuple
    size: int = 0
    square: bool = False
    preprocess: str = 'default'
    start: int = 0
    stride: int = 1
    num_frames: int = None
    upscale: bool = False
    multiple: int = MULTIPLE
    crop: tuple = None
    resized: tuple = None
    pad: tuple = (0, 0, 0, 0)
    model: tuple = None
    output: tuple = None

    def to_dict(self):
        """JSON-able dict (tuples as lists); FramePlan.from_dict inverts it."""
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, d):
        """The plan a to_dict() (e.g. done.json's 'plan') describes; ValueError naming unknown keys."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f'FramePlan.from_dict: unknown keys {unknown}; expected {sorted(names)}')
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    # -- source -> model -----------------------------------------------------------------------------
    def to_model(self, video):
        """Source frames (..., C, T, H, W) in [-1, 1] -> model frames (..., C, T, *model), multiples of
        `multiple`."""
        self._check_source(video)
        if self.preprocess == 'cascadev':
            return self.reference(video)
        top, left, h, w = self.crop or (0, 0, *self.source)
        x = resize(video[..., top:top + h, left:left + w], *self.resized)
        return pad_to_multiple(x, self.multiple)[0]

    def reference(self, video):
        """Source frames (..., C, T, H, W) in [-1, 1] -> what the outputs are compared with, (..., *output).

        default: the crop of the source (exact values; resized to `output` with upscale); cascadev: the
        original's preprocessed frames.
        """
        self._check_source(video)
        if self.preprocess == 'default':
            top, left, h, w = self.crop or (0, 0, *self.source)
            return resize(video[..., top:top + h, left:left + w], *self.output)
        if video.dim() == 5:
            return torch.stack([self.reference(clip) for clip in video])
        x = cascadev_recon_preprocess(to_uint8(video), self.size or min(self.source))   # (T, h32, w32, 3)
        top, left, h, w = self.crop
        top, left = top - (self.resized[0] - x.shape[1]) // 2, left - (self.resized[1] - x.shape[2]) // 2
        x = np.ascontiguousarray(x[:, top:top + h, left:left + w])
        return from_uint8(x)                                                             # x/127.5 - 1, §12

    # -- model -> output ---------------------------------------------------------------------------------
    def to_output(self, video):
        """Model frames (..., C, T, *model) -> output frames (..., C, T, *output) in [-1, 1]: unpad, resize back."""
        if tuple(video.shape[-2:]) != tuple(self.model):
            raise ValueError(f'FramePlan.to_output: frames are {tuple(video.shape[-2:])}, the plan\'s model size '
                             f'is {tuple(self.model)}; pass the frames the model made from this plan')
        return resize(unpad(video, self.pad), *self.output).clamp(-1, 1)

    def _check_source(self, video):
        if tuple(video.shape[-2:]) != tuple(self.source):
            raise ValueError(f'FramePlan: frames are {video.shape[-2]}x{video.shape[-1]} but the plan is for '
                             f'{self.source[0]}x{self.source[1]} sources; make a plan for these frames')


def plan(height, width, size=0, square=False, preprocess='default', start=0, stride=1, num_frames=None,
         upscale=False, multiple=MULTIPLE):
    """The FramePlan for (height, width) source frames (see FramePlan); ValueError for impossible settings.
    multiple: the model's spatial factor, a divisor of 32 (cascadev's crop is to 32 whatever it is)."""
    if preprocess not in PREPROCESS:
        raise ValueError(f"preprocess={preprocess!r}; use one of {', '.join(PREPROCESS)}")
    if int(multiple) < 1 or MULTIPLE % int(multiple):
        raise ValueError(f'plan: multiple {multiple}; need a divisor of {MULTIPLE}')
    if size < 0 or start < 0 or stride < 1 or (num_frames is not None and num_frames < 1):
        raise ValueError(f'plan: size {size}, start {start}, stride {stride}, num_frames {num_frames}; need '
                         f'size >= 0, start >= 0, stride >= 1, num_frames >= 1 or None')
    height, width = int(height), int(width)
    common = dict(source=(height, width), size=int(size), square=bool(square), preprocess=preprocess,
                  start=int(start), stride=int(stride), num_frames=None if num_frames is None else int(num_frames),
                  upscale=bool(upscale), multiple=int(multiple))
    if preprocess == 'cascadev':
        try:
            (h, w), (top, left, ch, cw) = cascadev_box(height, width, size or min(height, width), fix='use a --size')
        except ValueError as e:
            raise ValueError(f'preprocess cascadev: {e}') from None
        if square:
            s = min(ch, cw)
            top, left, ch, cw = top + (ch - s) // 2, left + (cw - s) // 2, s, s
        return FramePlan(**common, crop=(top, left, ch, cw), resized=(h, w), model=(ch, cw), output=(ch, cw))
    crop = tuple(_box(height, width, *[min(height, width)] * 2)) if square else None
    h, w = crop[2:] if crop else (height, width)
    resized = short_side_size(h, w, size)
    ph, pw = -resized[0] % multiple, -resized[1] % multiple
    pad = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)                   # as pad_to_multiple splits it
    return FramePlan(**common, crop=crop, resized=resized, pad=pad,
                     model=(resized[0] + ph, resized[1] + pw), output=resized if upscale else (h, w))

