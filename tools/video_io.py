"""Video I/O: read clips as a player shows them (PyAV), write videos that keep size, SAR, times and colours.

Reading never hands a file to a decoder before cheap checks (exists, not empty, not text, MP4 boxes complete), and
every failure surfaces as one `VideoReadError` whose message is "PATH: reason; fix".
"""
import math
import os
import re
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
    """A video as a player shows it.

    fps: average rate of the shown frames; num_frames: frames shown (edit lists honoured); height, width: the
    displayed (rotated) size in stored pixels; sar: sample aspect ratio of the displayed frame (pixel width /
    height; a 90/270 rotation inverts the stored one); rotation: counter-clockwise degrees (0/90/180/270) applied
    to get the upright frame (FFmpeg's display-matrix convention; a legacy `rotate=90` tag, clockwise, reads as
    270); times: presentation times (s) of the returned frames from the first shown frame of the file (None from
    probe_video); vfr: frame durations differ by more than ~1 %.
    """
    fps: float
    num_frames: int
    height: int
    width: int
    sar: Fraction = Fraction(1, 1)
    rotation: int = 0
    times: tuple | None = None
    vfr: bool = False


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
    """One short line from a decoder exception (drops '[hh:mm:ss] file.cc:123:' and errno prefixes)."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
    line = re.sub(r'(\[\d\d:\d\d:\d\d\] \S+:\d+: ?)+|\[Errno -?\d+\] ', '', lines[0])
    line = re.sub(r": '[^']*'$", '', line).strip()  # PyAV appends the file name, already in our message
    return (line or type(e).__name__)[:160]


# ----------------------------------------------------------------------------------------------------------------
# Reading (PyAV, the FFmpeg bundled with it: frames as a player shows them)

def _import_av():
    import av  # noqa: PLC0415
    return av


# counter-clockwise display rotation (degrees) -> (swap rows/columns, flip rows, flip columns)
_ROTATIONS = {0: (False, False, False), 90: (True, True, False), 180: (False, True, True), 270: (True, False, True)}


def _orientation(frame, stream):
    """(rotation, (swap, flip_rows, flip_cols)) that make `frame` upright, from its display matrix or the legacy tag.

    The display matrix (FFmpeg's convention: counter-clockwise degrees, `ffmpeg -display_rotation`) wins; else the
    legacy `rotate` tag (clockwise degrees, as old phones and old FFmpeg wrote it) is used. Flips in the matrix are
    applied as FFmpeg's CLI applies them; a matrix that is not a multiple of 90 degrees uses the nearest multiple.
    """
    av = _import_av()
    try:
        m = np.frombuffer(bytes(frame.side_data[av.sidedata.sidedata.Type.DISPLAYMATRIX]), '<i4')
    except (KeyError, AttributeError, ValueError):
        m = None
    if m is not None and m.size == 9 and (m[0] or m[1]):
        rotation = round(frame.rotation / 90) * 90 % 360
        a, b, c, d = (int(v) for v in (m[0], m[1], m[3], m[4]))
        if abs(b) > abs(a):
            return rotation, (True, b < 0, c < 0)
        return rotation, (False, d < 0, a < 0)
    tag = {k.lower(): v for k, v in stream.metadata.items()}.get('rotate', '0')
    try:
        rotation = -round(float(tag) / 90) * 90 % 360
    except ValueError:
        rotation = 0
    return rotation, _ROTATIONS[rotation]


def _upright(frames, orient):
    """Apply (swap, flip_rows, flip_cols) to uint8 frames (T, H, W, 3) -> contiguous upright frames."""
    swap, flip_rows, flip_cols = orient
    if swap:
        frames = frames.swapaxes(1, 2)
    if flip_rows:
        frames = frames[:, ::-1]
    if flip_cols:
        frames = frames[:, :, ::-1]
    return np.ascontiguousarray(frames)


def _is_vfr(pts, time_base):
    """True when frame durations (differences of sorted presentation timestamps) differ by more than ~1 %."""
    if len(pts) < 3:
        return False
    d = np.diff(np.asarray(pts, np.int64))
    return bool(d.max() - d.min() > 0.01 * np.median(d) + 1)  # + 1 tick: rounding of coarse time bases (mkv: 1 ms)


def _probe(path):
    """Header, shown packets and first frame -> (VideoInfo without times, sorted shown pts, time_base, orientation).

    The frame count is the number of packets a player shows (edit lists honoured: packets the demuxer marks
    discardable are not counted), never the container's claim. Demuxing reads the file but decodes one frame.
    """
    av = _import_av()
    try:
        with av.open(path) as c:
            if not c.streams.video:
                kinds = sorted({s.type for s in c.streams}) or ['no streams']
                raise VideoReadError(f"{path}: has no video stream (only {', '.join(kinds)}); pass a video file")
            s = c.streams.video[0]
            pts, first, no_pts = [], None, 0
            for packet in c.demux(s):
                if first is None:
                    frames = s.decode(packet if packet.size else None)
                    first = frames[0] if frames else None
                if packet.size and not packet.is_discard:
                    no_pts += packet.pts is None
                    pts.append(packet.pts if packet.pts is not None else len(pts))
            tb = s.time_base or Fraction(1, 1)
            sar = s.sample_aspect_ratio or s.codec_context.sample_aspect_ratio or Fraction(1, 1)
            rates = (s.average_rate or s.guessed_rate, s.base_rate)
            if first is not None:  # stream objects are only valid while the container is open
                rotation, orient = _orientation(first, s)
                h, w = first.height, first.width
    except VideoReadError:
        raise
    except MemoryError:
        raise
    except Exception as e:
        raise VideoReadError(f"{path}: not a readable video container ({_short(e)}); {REENCODE}") from None
    if first is None or not pts:
        raise VideoReadError(f"{path}: truncated or corrupt: no frame could be decoded; {REENCODE}")
    pts.sort()
    rate = rates[0]
    if no_pts or len(pts) < 2 or pts[-1] == pts[0]:
        rate = rate or rates[1]
        fps, vfr = (float(rate) if rate else 0.0), False
    else:
        fps, vfr = float((len(pts) - 1) / ((pts[-1] - pts[0]) * tb)), _is_vfr(pts, tb)
        if rate and not vfr and abs(float(rate) / fps - 1) < 0.01:
            fps = float(rate)  # the container's exact rate over one measured from coarse (e.g. 1 ms) timestamps
    if orient[0]:
        h, w, sar = w, h, 1 / Fraction(sar)
    info = VideoInfo(fps, len(pts), h, w, Fraction(sar), rotation, None, vfr)
    return info, (None if no_pts else pts), tb, orient


def probe_video(path, backend='auto'):
    """VideoInfo of the whole file (times None) as a player shows it: displayed size, shown-frame count, SAR."""
    path = str(path)
    _check_backend(backend)
    _check_file(path)
    return _probe(path)[0]


def _check_backend(backend):
    if backend not in ('auto', 'pyav'):
        raise ValueError(f"backend={backend!r}; use 'auto' or 'pyav' (PyAV is the only reader: decord ignores "
                         f"display rotation and edit lists)")


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


def _decode(path, indices, pts, store):
    """Decode the shown frames `indices` (sorted), calling store(slot, frame) for each; -> their pts by slot.

    With known timestamps the decoder seeks to the keyframe before the first wanted frame and frames are matched
    by pts; when the seek lands after it (or on a non-keyframe) decoding restarts from the beginning. Decoding
    stops after the last wanted frame.
    """
    av = _import_av()
    by_pts = pts is not None
    want = {(pts[i] if by_pts else i): j for j, i in enumerate(indices)}  # pts (or shown index) -> output slot
    for seek in ([True, False] if by_pts and indices[0] > 0 else [False]):
        got, shown, found = [None] * len(indices), 0, 0
        with av.open(path) as c:
            s = c.streams.video[0]
            s.thread_type = 'AUTO'
            if seek:
                c.seek(pts[indices[0]], stream=s, backward=True)
            for k, frame in enumerate(c.decode(s)):
                if seek and k == 0 and not (frame.key_frame and frame.pts is not None
                                            and frame.pts <= pts[indices[0]]):
                    break
                j = want.get(frame.pts if by_pts else shown)
                shown += 1
                if j is None or got[j] is not None:
                    continue
                store(j, frame)
                got[j], found = frame.pts, found + 1
                if found == len(indices):
                    return got
        if not seek:
            missing = next(i for i, g in zip(indices, got) if g is None)
            raise VideoReadError(f"{path}: truncated or corrupt: decoding stopped after {shown} frames but "
                                 f"{len(pts) if by_pts else indices[-1] + 1} are listed (frame {missing} was "
                                 f"needed); {REENCODE}")
    raise VideoReadError(f"{path}: truncated or corrupt: frames could not be located; {REENCODE}")


def read_frames(path, num_frames=None, stride=1, start=0, backend='auto'):
    """Shown frames start, start+stride, ... -> (uint8 (T, H, W, 3) RGB upright, VideoInfo of the whole file).

    Frames are what a player shows: display rotation applied (H, W are the displayed size), edit lists honoured,
    YUV converted to RGB with the stream's matrix and range (untagged: BT.601, as FFmpeg assumes). info.times are
    the returned frames' presentation times in seconds from the first shown frame of the file; info.sar is the
    displayed frame's sample aspect ratio. backend: 'auto' or 'pyav' (the same). Memory ~ the returned frames.
    """
    path = str(path)
    _check_backend(backend)
    _check_file(path)
    info, pts, tb, orient = _probe(path)
    indices = frame_indices(info.num_frames, num_frames, stride, start, path)
    h, w = (info.width, info.height) if orient[0] else (info.height, info.width)  # stored size
    frames = np.empty((len(indices), h, w, 3), np.uint8)

    def store(j, frame):
        size = {} if (frame.height, frame.width) == (h, w) else {'width': w, 'height': h}  # mid-stream size change
        frames[j] = frame.to_ndarray(format='rgb24', **size)
    try:
        got = _decode(path, indices, pts, store)
    except (VideoReadError, MemoryError):
        raise
    except Exception as e:
        raise VideoReadError(f"{path}: truncated or corrupt, decoding failed ({_short(e)}); {REENCODE}") from None
    if pts is not None:
        times = tuple(float((p - pts[0]) * tb) for p in got)
    else:
        times = tuple(i / (info.fps or 1.0) for i in indices)
    return _upright(frames, orient), info._replace(times=times)


def read_video(path, num_frames=None, stride=1, start=0, backend='auto'):
    """Read frames start, start+stride, ... -> ((C, T, H, W) float32 in [-1, 1], VideoInfo); see read_frames."""
    frames, info = read_frames(path, num_frames, stride, start, backend)
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


TIME_BASE = Fraction(1, 90000)  # timestamps of frames written with explicit times (the MPEG clock)
BT709 = 1                       # AVCOL_SPC/PRI/TRC_BT709
TV_RANGE, PC_RANGE, RGB_MATRIX = 1, 2, 0


class VideoWriter:
    """Streams frames into a video file that keeps their size, SAR, times and colours; memory stays flat.

    Encodings (pixel sizes are kept exactly, no padding or cropping):
    - even H x W, yuv420p: H.264 (libx264, crf/preset), plays everywhere;
    - odd H or W, yuv420p: VP9 (libvpx-vp9, the same crf number) — H.264 4:2:0 can only crop to even sizes;
      browsers (Chrome, Firefox, Edge, Safari 14+) and players (VLC, mpv, ffmpeg) play it in .mp4/.mkv;
    - pix_fmt='yuv444p': H.264 4:4:4 at any size (ffmpeg/VLC/mpv; most browsers do not play it);
    - lossless=True: libx264rgb at qp 0, RGB stored exactly (bit-exact round trip through read_frames; for
      metrics, not for browsers).
    RGB -> YUV uses BT.709 limited range and the stream is tagged bt709/tv (colorspace, primaries, transfer,
    range). `sar` (Fraction, e.g. 4/3) is written as the sample aspect ratio. write(frames, times): times (seconds,
    strictly increasing across calls) put each frame at its source time (VFR; shifted so the first frame is at 0,
    on a 1/90000 s clock); times=None writes a constant `fps`. Frames go to PATH.tmp, renamed to PATH by close();
    on an exception inside `with` (or abort()) the temp file is removed and an existing PATH is left untouched.
    """

    def __init__(self, path, fps, crf=18, preset='medium', pix_fmt='yuv420p', sar=None, lossless=False):
        self.path = str(path)
        ext = os.path.splitext(self.path)[1].lower()
        if ext not in WRITE_FORMATS:
            raise ValueError(f"{self.path}: cannot write '{ext}' files; use one of {'/'.join(WRITE_FORMATS)}")
        if pix_fmt not in ('yuv420p', 'yuv444p'):
            raise ValueError(f"{self.path}: pix_fmt={pix_fmt!r}; use 'yuv420p' or 'yuv444p'")
        self.format, self.fps, self.tmp = WRITE_FORMATS[ext], fps_fraction(fps), self.path + '.tmp'
        self.crf, self.preset, self.pix_fmt, self.lossless = crf, preset, pix_fmt, bool(lossless)
        self.sar = Fraction(sar) if sar is not None else None
        if self.sar is not None and self.sar <= 0:
            raise ValueError(f"{self.path}: sar={sar}; must be a positive ratio (e.g. Fraction(4, 3))")
        self.container = self.stream = None
        self.size = None        # (H, W) of the frames given
        self.num_written = 0
        self.timed = None       # True once frames came with times, False without
        self.t0 = self.last_pts = None
        self.closed = False

    def _codec(self, h, w):
        """(encoder, pix_fmt, options) for an H x W frame."""
        if self.lossless:
            return 'libx264rgb', 'rgb24', {'qp': '0', 'preset': self.preset}
        if self.pix_fmt == 'yuv420p' and (h % 2 or w % 2):
            if self.format == 'mov':
                raise ValueError(f"{self.path}: {h}x{w} is odd; odd sizes are written as VP9, which needs .mp4 or "
                                 f".mkv (or pass pix_fmt='yuv444p')")
            return 'libvpx-vp9', 'yuv420p', {'crf': str(self.crf), 'b': '0', 'deadline': 'good', 'cpu-used': '4',
                                             'row-mt': '1'}
        return 'libx264', self.pix_fmt, {'crf': str(self.crf), 'preset': self.preset}

    def _open(self, h, w, timed):
        av = _import_av()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.size, self.timed = (h, w), timed
        codec, self.enc_fmt, options = self._codec(h, w)
        opts = {'movflags': 'faststart'} if self.format in ('mp4', 'mov') else {}
        self.container = av.open(self.tmp, mode='w', format=self.format, options=opts)
        s = self.container.add_stream(codec, rate=self.fps, options=options)
        s.height, s.width, s.pix_fmt = h, w, self.enc_fmt
        cc = s.codec_context
        if timed:
            cc.time_base = s.time_base = TIME_BASE
        cc.color_primaries, cc.color_trc = BT709, BT709
        cc.colorspace, cc.color_range = (RGB_MATRIX, PC_RANGE) if self.lossless else (BT709, TV_RANGE)
        if self.sar is not None:
            cc.sample_aspect_ratio = s.sample_aspect_ratio = self.sar
        self.stream = s

    def _pts(self, times, n):
        """Integer timestamps for the next n frames (constant rate, or `times` on the 1/90000 s clock)."""
        if times is None:
            return list(range(self.num_written, self.num_written + n))
        t = np.asarray(times, np.float64).reshape(-1)
        if len(t) != n or not np.isfinite(t).all():
            raise ValueError(f"{self.path}: times has {len(t)} values for {n} frames; give one finite time each")
        if self.t0 is None:
            self.t0 = float(t[0])
        pts = [round((x - self.t0) / TIME_BASE) for x in t]
        prev = self.last_pts
        if any(b <= a for a, b in zip([-1 if prev is None else prev] + pts, pts)):
            raise ValueError(f"{self.path}: times must increase strictly (also across write() calls), got "
                             f"{[round(float(x), 4) for x in t[:6]]}")
        return pts

    def write(self, frames, times=None):
        """Append frames: (C, T, H, W) float in [-1, 1] or uint8 (T, H, W, 3); times: their source times (s)."""
        if self.closed:
            raise ValueError(f"{self.path}: write() after close()")
        arr = frames if isinstance(frames, np.ndarray) else to_uint8(frames)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"{self.path}: frames must be (C, T, H, W) float or (T, H, W, 3) uint8, got "
                             f"{arr.dtype} {arr.shape}")
        if self.container is None:
            self._open(*arr.shape[1:3], timed=times is not None)
        if tuple(arr.shape[1:3]) != self.size:
            raise ValueError(f"{self.path}: frame size {arr.shape[1]}x{arr.shape[2]} differs from the first "
                             f"frames' {self.size[0]}x{self.size[1]}; resize before writing")
        if (times is not None) != self.timed:
            raise ValueError(f"{self.path}: give times with every write() or with none")
        av = _import_av()
        time_base = TIME_BASE if self.timed else 1 / self.fps
        for img, pts in zip(arr, self._pts(times, len(arr))):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format='rgb24')
            if not self.lossless:
                frame = frame.reformat(format=self.enc_fmt, dst_colorspace='ITU709', dst_color_range='MPEG')
            frame.pts, frame.time_base = pts, time_base
            self.container.mux(self.stream.encode(frame))
            self.num_written, self.last_pts = self.num_written + 1, pts

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


def write_video(path, video, fps, times=None, **kwargs):
    """Write a (C, T, H, W) video in [-1, 1] (times: per-frame source times in s; kwargs: crf, preset, pix_fmt,
    sar, lossless; see VideoWriter)."""
    with VideoWriter(path, fps, **kwargs) as w:
        for t in range(0, video.shape[1], 16):  # uint8 conversion in chunks: memory flat in length
            w.write(video[:, t:t + 16], None if times is None else list(times)[t:t + 16])


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
