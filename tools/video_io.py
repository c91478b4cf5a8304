"""Video I/O: read clips (decord, PyAV fallback) as (C, T, H, W) tensors in [-1, 1], write mp4 and PNG grids.

Reading never hands a file to a decoder before cheap checks (exists, not empty, not text, MP4 boxes complete), and
every failure surfaces as one `VideoReadError` whose message is "PATH: reason; fix".
"""
import math
import os
import re
import warnings
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from tools.files import atomic_write
from tools.frames import resize as _resize

VIDEO_EXTS = ('.mp4', '.mov', '.avi', '.mkv', '.webm')
WRITE_FORMATS = {'.mp4': 'mp4', '.mov': 'mov', '.mkv': 'matroska'}  # H.264 inside each
REENCODE = "re-download or re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)"


class VideoReadError(ValueError):
    """A video cannot be read as asked; the message is one line: "PATH: reason; fix"."""


class VideoInfo(NamedTuple):
    fps: float
    num_frames: int
    height: int
    width: int


# ----------------------------------------------------------------------------------------------------------------
# Cheap checks before any decoder sees the file (decoders are native code: keep garbage away from them)

def _check_file(path):
    """Raise VideoReadError for a missing, empty, text or truncated-MP4 file; return its size in bytes."""
    if not os.path.exists(path):
        raise VideoReadError(f"{path}: no such file; check the path (relative paths start at {os.getcwd()})")
    if os.path.isdir(path):
        raise VideoReadError(f"{path}: is a folder, not a video file; pass one video (or use list_videos on the folder)")
    try:
        size = os.path.getsize(path)
        with open(path, 'rb') as f:
            head = f.read(1024)
    except OSError as e:
        raise VideoReadError(f"{path}: cannot be opened ({e.strerror}); check its permissions") from None
    if size == 0:
        raise VideoReadError(f"{path}: empty file (0 bytes); {REENCODE}")
    if os.path.splitext(path)[1].lower() in VIDEO_EXTS and _looks_like_text(head):
        start = head[:40].decode('utf-8', 'replace').splitlines()[0] if head.strip() else ''
        raise VideoReadError(f"{path}: not a video, it is a text file (starts with {start!r}); "
                             f"pass a video file ({'/'.join(VIDEO_EXTS)})")
    if head[4:8] == b'ftyp':
        _check_mp4_boxes(path, size)
    return size


def _looks_like_text(head):
    if b'\0' in head:
        return False
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError:
        return False
    return sum(c.isprintable() or c in '\t\r\n' for c in text) >= 0.95 * len(text)


def _check_mp4_boxes(path, size):
    """Walk the top-level ISO-BMFF boxes (headers only): a box running past the end of the file means truncation."""
    seen, off = set(), 0
    with open(path, 'rb') as f:
        while off < size and len(seen) < 100_000:
            f.seek(off)
            h = f.read(16)
            n, typ = int.from_bytes(h[:4], 'big'), h[4:8].decode('latin-1')
            if len(h) >= 16 and n == 1:
                n = int.from_bytes(h[8:16], 'big')  # 64-bit "largesize"
            elif n == 0:
                n = size - off                      # "extends to the end of the file"
            if len(h) < 8 or n < 8:
                if 'moov' in seen and 'mdat' in seen:
                    return  # junk after a complete file: let the decoder judge
                raise VideoReadError(f"{path}: truncated or corrupt MP4 (bad box header at byte {off} of {size}); "
                                     f"{REENCODE}")
            if off + n > size and (typ in ('mdat', 'moov', 'moof') or 'moov' not in seen):
                raise VideoReadError(f"{path}: truncated file: its '{typ}' box at byte {off} needs {n} bytes but only "
                                     f"{size - off} remain (file has {size} bytes; an interrupted download or "
                                     f"recording?); {REENCODE}")
            seen.add(typ)
            off += n
    if 'moov' not in seen:
        raise VideoReadError(f"{path}: incomplete MP4, it has no 'moov' index (the recording or download did not "
                             f"finish); {REENCODE}")


def _short(e):
    """One short line from a decoder exception (drops decord's '[hh:mm:ss] file.cc:123:' prefixes)."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
    line = re.sub(r'(\[\d\d:\d\d:\d\d\] \S+:\d+: ?)+|\[Errno -?\d+\] ', '', lines[0])
    line = re.sub(r": '[^']*'$", '', line).strip()  # PyAV appends the file name, already in our message
    return (line or type(e).__name__)[:160]


# ----------------------------------------------------------------------------------------------------------------
# Backends

def _import_decord():
    import decord  # noqa: PLC0415 (optional: absent on some platforms)
    return decord


def _import_av():
    import av  # noqa: PLC0415
    return av


def _probe_pyav(path):
    """VideoInfo from the container header (frame count from the index, else counted packets; no decoding)."""
    av = _import_av()
    try:
        with av.open(path) as c:
            if not c.streams.video:
                kinds = sorted({s.type for s in c.streams}) or ['no streams']
                raise VideoReadError(f"{path}: has no video stream (only {', '.join(kinds)}); pass a video file")
            s = c.streams.video[0]
            rate = s.average_rate or s.guessed_rate or s.base_rate
            n = s.frames or sum(1 for p in c.demux(s) if p.size)
            return VideoInfo(float(rate) if rate else 0.0, int(n), s.codec_context.height, s.codec_context.width)
    except VideoReadError:
        raise
    except MemoryError:
        raise
    except Exception as e:
        raise VideoReadError(f"{path}: not a readable video container ({_short(e)}); {REENCODE}") from None


def _read_pyav(path, indices, info):
    """Decode sequentially, keep only `indices` (sorted), stop after the last one: memory ~ len(indices) frames."""
    av = _import_av()
    out, j, decoded = None, 0, 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = 'AUTO'
        for i, frame in enumerate(c.decode(s)):
            decoded = i + 1
            if i != indices[j]:
                continue
            img = frame.to_ndarray(format='rgb24')  # (H, W, 3) uint8
            if out is None:
                out = np.empty((len(indices), *img.shape), np.uint8)
            elif img.shape != out.shape[1:]:
                img = frame.to_ndarray(format='rgb24', width=out.shape[2], height=out.shape[1])
            out[j] = img
            j += 1
            if j == len(indices):
                return out
    raise VideoReadError(f"{path}: truncated or corrupt: decoding stopped after {decoded} frames but the container "
                         f"lists {info.num_frames} (frame {indices[j]} was needed); {REENCODE}")


def _read_decord(path, indices, info):
    decord = _import_decord()
    vr = decord.VideoReader(path, ctx=decord.cpu(0))
    if indices[-1] >= len(vr):
        raise RuntimeError(f"decord indexes {len(vr)} frames, frame {indices[-1]} needed")
    return vr.get_batch(list(indices)).asnumpy()  # (T, H, W, 3) uint8


def _probe_decord(path):
    decord = _import_decord()
    vr = decord.VideoReader(path, ctx=decord.cpu(0))
    h, w = vr[0].shape[:2]
    return VideoInfo(float(vr.get_avg_fps()), len(vr), h, w)


def _backends(backend):
    if backend not in ('auto', 'decord', 'pyav'):
        raise ValueError(f"backend={backend!r}; use 'auto', 'decord' or 'pyav'")
    if backend != 'auto':
        return [backend]
    try:
        _import_decord()
        return ['decord', 'pyav']
    except Exception:  # not installed, or a broken native library
        return ['pyav']


def _has_av():
    try:
        _import_av()
        return True
    except Exception:
        return False


def probe_video(path, backend='auto'):
    """fps, frame count and size of a video without decoding it (PyAV header; decord if PyAV is missing)."""
    path = str(path)
    _check_file(path)
    if backend == 'decord' or (backend == 'auto' and not _has_av()):
        try:
            return _probe_decord(path)
        except Exception as e:
            raise VideoReadError(f"{path}: not a readable video ({_short(e)}); {REENCODE}") from None
    return _probe_pyav(path)


# ----------------------------------------------------------------------------------------------------------------
# Reading

def frame_indices(num_available, num_frames=None, stride=1, start=0, path='video'):
    """Indices start, start+stride, ... (num_frames of them; None = all that fit); VideoReadError if too few."""
    if stride < 1 or start < 0 or (num_frames is not None and num_frames < 1):
        raise VideoReadError(f"{path}: --num-frames {num_frames} --frame-stride {stride} --start {start}: need "
                             f"num_frames >= 1, stride >= 1, start >= 0; fix the flags")
    if num_frames is None:
        num_frames = max(0, math.ceil((num_available - start) / stride))
    needed = start + (num_frames - 1) * stride + 1
    if num_frames == 0 or needed > num_available:
        raise VideoReadError(f"{path}: has {num_available} frames; --num-frames {num_frames or 'all'} at "
                             f"--frame-stride {stride} from --start {start} needs {max(needed, start + 1)}; "
                             f"lower --num-frames, --frame-stride or --start")
    return list(range(start, needed, stride))


def read_video(path, num_frames=None, stride=1, start=0, backend='auto'):
    """Read frames start, start+stride, ... -> ((C, T, H, W) float32 in [-1, 1], VideoInfo of the whole file).

    num_frames=None reads every frame from `start` at `stride`. backend: 'auto' (decord, PyAV if decord is
    missing or fails), 'decord' or 'pyav'. Only the needed frames are kept in memory.
    """
    path = str(path)
    _check_file(path)
    order = _backends(backend)
    if order == ['pyav'] and not _has_av():
        raise ImportError("reading videos needs PyAV or decord: pip install av")
    # PyAV opens the header first: a file it cannot parse never reaches decord (native crashes, stderr noise)
    info = _probe_pyav(path) if (order[0] == 'pyav' or _has_av()) else None
    errors = []
    for name in order:
        try:
            if info is None:
                info = _probe_decord(path)
            indices = frame_indices(info.num_frames, num_frames, stride, start, path)
            frames = (_read_decord if name == 'decord' else _read_pyav)(path, indices, info)
            break
        except (VideoReadError, MemoryError):
            raise
        except ImportError as e:
            if backend != 'auto':
                raise ImportError(f"backend={backend!r} needs {e.name or name}: pip install "
                                  f"{'decord' if name == 'decord' else 'av'}, or use backend='auto'") from e
            errors.append(f"{name}: {_short(e)}")
        except Exception as e:
            errors.append(f"{name}: {_short(e)}")
    else:
        raise VideoReadError(f"{path}: truncated or corrupt, decoding failed ({'; '.join(errors)}); {REENCODE}")
    info = info._replace(height=frames.shape[1], width=frames.shape[2])
    video = torch.empty((3, *frames.shape[:3]), dtype=torch.float32)
    video.copy_(torch.from_numpy(frames).permute(3, 0, 1, 2))  # (C, T, H, W)
    return video.div_(127.5).sub_(1.0), info


def list_videos(path_or_folder):
    """A file -> [file]; a folder -> its video files (by extension, not recursive), sorted by name."""
    path = str(path_or_folder)
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise VideoReadError(f"{path}: no such file or folder; pass a video file or a folder of videos")
    found = sorted(os.path.join(path, n) for n in os.listdir(path)
                   if n.lower().endswith(VIDEO_EXTS) and not n.startswith('.')
                   and os.path.isfile(os.path.join(path, n)))
    if not found:
        raise VideoReadError(f"{path}: folder has no video files ({'/'.join(VIDEO_EXTS)}, not searched "
                             f"recursively); put videos there or pass a file")
    return found


# ----------------------------------------------------------------------------------------------------------------
# Writing

def to_uint8(video):
    """(C, T, H, W) in [-1, 1] -> uint8 numpy (T, H, W, 3) (1-channel videos are repeated to RGB)."""
    if video.ndim != 4 or video.shape[0] not in (1, 3):
        raise ValueError(f"expected a video (C, T, H, W) with C = 1 or 3, got shape {tuple(video.shape)}")
    x = video.detach().float().cpu().add(1.0).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)
    return x.expand(3, *x.shape[1:]).permute(1, 2, 3, 0).numpy()


def fps_fraction(fps):
    """fps as an exact Fraction: NTSC rates (29.97, 23.976, 59.94 ...) become n*1000/1001."""
    if isinstance(fps, Fraction):
        return fps
    fps = float(fps)
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps={fps}; must be a positive number (e.g. 24, 29.97)")
    n = round(fps * 1.001)
    if abs(fps - n / 1.001) < 5e-3 and abs(fps - round(fps)) > 5e-3:
        return Fraction(n * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


class VideoWriter:
    """Streams frames into an H.264 file: memory stays flat; the file appears under its name only on success.

    Frames go to PATH.tmp, which is renamed to PATH by close(); on an exception inside `with` (or abort()) the
    temp file is removed and an existing PATH is left untouched. yuv420p (plays everywhere) needs even sizes:
    an odd height/width is padded by one replicated row/column at the bottom/right (the file is one pixel larger).
    pix_fmt='yuv444p' keeps odd sizes exactly, but some players (browsers) do not play it.
    """

    def __init__(self, path, fps, crf=18, preset='medium', pix_fmt='yuv420p'):
        self.path = str(path)
        ext = os.path.splitext(self.path)[1].lower()
        if ext not in WRITE_FORMATS:
            raise ValueError(f"{self.path}: cannot write '{ext}' files; use one of {'/'.join(WRITE_FORMATS)}")
        self.format, self.fps, self.tmp = WRITE_FORMATS[ext], fps_fraction(fps), self.path + '.tmp'
        self.options = {'crf': str(crf), 'preset': preset}
        self.pix_fmt = pix_fmt
        self.container = self.stream = None
        self.size = None        # (H, W) of the frames given
        self.num_written = 0
        self.closed = False

    def _open(self, h, w):
        av = _import_av()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.size = (h, w)
        self.even = self.pix_fmt == 'yuv420p'
        if self.even and (h % 2 or w % 2):
            warnings.warn(f"{self.path}: {h}x{w} is odd; yuv420p needs even sizes, so the file is "
                          f"{h + h % 2}x{w + w % 2} (last row/column repeated); pix_fmt='yuv444p' keeps {h}x{w}")
        opts = {'movflags': 'faststart'} if self.format in ('mp4', 'mov') else {}
        self.container = av.open(self.tmp, mode='w', format=self.format, options=opts)
        s = self.container.add_stream('libx264', rate=self.fps, options=self.options)
        s.height, s.width = (h + h % 2, w + w % 2) if self.even else (h, w)
        s.pix_fmt = self.pix_fmt
        self.stream = s

    def write(self, frames):
        """Append frames: a (C, T, H, W) tensor in [-1, 1] or a uint8 numpy array (T, H, W, 3)."""
        if self.closed:
            raise ValueError(f"{self.path}: write() after close()")
        arr = frames if isinstance(frames, np.ndarray) else to_uint8(frames)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"{self.path}: frames must be (C, T, H, W) float or (T, H, W, 3) uint8, got "
                             f"{arr.dtype} {arr.shape}")
        if self.container is None:
            self._open(*arr.shape[1:3])
        if tuple(arr.shape[1:3]) != self.size:
            raise ValueError(f"{self.path}: frame size {arr.shape[1]}x{arr.shape[2]} differs from the first "
                             f"frames' {self.size[0]}x{self.size[1]}; resize before writing")
        av = _import_av()
        for img in arr:
            if self.even and (img.shape[0] % 2 or img.shape[1] % 2):
                img = np.pad(img, ((0, img.shape[0] % 2), (0, img.shape[1] % 2), (0, 0)), mode='edge')
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format='rgb24')
            frame.pts, frame.time_base = self.num_written, 1 / self.fps
            self.container.mux(self.stream.encode(frame))
            self.num_written += 1

    def close(self):
        """Flush the encoder and move PATH.tmp to PATH."""
        if self.closed:
            return
        if self.container is None:
            self.abort()
            raise ValueError(f"{self.path}: no frames were written; nothing saved")
        try:
            self.container.mux(self.stream.encode(None))
            self.container.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self.closed = True

    def abort(self):
        """Drop everything written so far (PATH.tmp is removed, PATH untouched)."""
        self.closed = True
        if self.container is not None:
            try:
                self.container.close()
            except Exception:
                pass
        if os.path.exists(self.tmp):
            os.remove(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def write_video(path, video, fps, **kwargs):
    """Write a (C, T, H, W) video in [-1, 1] as H.264 (kwargs: crf, preset, pix_fmt; see VideoWriter)."""
    with VideoWriter(path, fps, **kwargs) as w:
        for t in range(0, video.shape[1], 16):  # uint8 conversion in chunks: memory flat in length
            w.write(video[:, t:t + 16])


# ----------------------------------------------------------------------------------------------------------------
# Side-by-side comparisons and PNG grids

def _label_overlay(text, frame_h):
    """Label as (rgb (3, h, w) in [-1, 1], alpha (1, h, w)): white text on a dark box, sized to the frame."""
    from PIL import Image, ImageDraw, ImageFont  # noqa: PLC0415
    size = max(11, round(frame_h / 24))
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: fixed bitmap font
        font = ImageFont.load_default()
    margin = max(2, size // 4)
    x0, y0, x1, y1 = ImageDraw.Draw(Image.new('L', (1, 1))).textbbox((0, 0), text, font=font)
    w, h = x1 - x0 + 2 * margin, y1 - y0 + 2 * margin
    text_mask = Image.new('L', (w, h), 0)
    ImageDraw.Draw(text_mask).text((margin - x0, margin - y0), text, fill=255, font=font)
    t = torch.from_numpy(np.asarray(text_mask, dtype=np.float32) / 255.0)[None]  # (1, h, w) text coverage
    box = 0.65                                                                    # opacity of the dark box
    alpha = box + (1 - box) * t
    rgb = (2 * t / alpha - 1).expand(3, -1, -1)  # over black: white where text, black elsewhere
    return rgb, alpha


def draw_label(video, text):
    """Draw `text` at the top-left of every frame of a (C, T, H, W) video (returns a new tensor)."""
    if not text:
        return video
    video = video.clone()
    rgb, alpha = _label_overlay(text, video.shape[-2])
    m = max(2, round(video.shape[-2] / 100))  # offset from the corner
    h, w = min(rgb.shape[1], video.shape[-2] - m), min(rgb.shape[2], video.shape[-1] - m)
    if h <= 0 or w <= 0:
        return video
    rgb, alpha = rgb[:, None, :h, :w].to(video), alpha[:, None, :h, :w].to(video)
    region = video[:, :, m:m + h, m:m + w]
    video[:, :, m:m + h, m:m + w] = region * (1 - alpha) + rgb * alpha
    return video


def side_by_side(videos, labels=None):
    """Panels left to right -> (C, T, H, W1 + W2 + ...): each resized to the first one's height, labelled."""
    if not videos:
        raise ValueError("side_by_side needs at least one video")
    labels = list(labels) if labels is not None else [''] * len(videos)
    if len(labels) != len(videos):
        raise ValueError(f"side_by_side got {len(videos)} videos but {len(labels)} labels")
    T, H = videos[0].shape[1], videos[0].shape[-2]
    panels = []
    for v, label in zip(videos, labels):
        if v.shape[1] != T:
            raise ValueError(f"side_by_side: all videos need the same frame count, got {v.shape[1]} and {T}")
        v = _resize(v.float(), H, max(1, round(v.shape[-1] * H / v.shape[-2])))
        panels.append(draw_label(v, label))
    return torch.cat(panels, dim=-1)


def write_grid_png(path, videos, labels=None, num_frames=4):
    """PNG grid: one labelled row per clip, `num_frames` evenly spaced frames as columns."""
    from PIL import Image  # noqa: PLC0415
    labels = list(labels) if labels is not None else [''] * len(videos)
    if not videos or len(labels) != len(videos):
        raise ValueError(f"write_grid_png got {len(videos)} videos and {len(labels)} labels; give one label each")
    H = videos[0].shape[-2]
    rows = []
    for v, label in zip(videos, labels):
        T = v.shape[1]
        idx = np.unique(np.linspace(0, T - 1, min(num_frames, T)).round().astype(int))
        v = _resize(v[:, idx].float(), H, max(1, round(v.shape[-1] * H / v.shape[-2])))  # (C, n, H, W')
        v = torch.cat([draw_label(v[:, :1], label), v[:, 1:]], dim=1)   # label on the first column
        rows.append(torch.cat(list(v.unbind(1)), dim=-1))  # (C, H, n·W')
    width = max(r.shape[-1] for r in rows)
    rows = [F.pad(r, (0, width - r.shape[-1]), value=-1.0) for r in rows]  # black to the right of short rows
    grid = to_uint8(torch.cat(rows, dim=-2)[:, None])[0]  # (H_total, W, 3)
    path = str(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format='PNG'))
