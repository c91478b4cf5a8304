"""Video I/O: read clips as a player shows them (PyAV), write videos that keep size, SAR, times and colours.

Reading never hands a file to a decoder before cheap checks (exists, not empty, not text, MP4 boxes complete), and
every failure surfaces as one `VideoReadError` whose message is "PATH: reason; fix".
"""
import functools
import math
import os
import re
from fractions import Fraction
from typing import NamedTuple

import av
import numpy as np

from tools.video.convert import (ConvertError, deinterlace, deinterlace_context, field_order, hdr_transfer,
                                 notes, raw_stream, signal_peak, tonemap, transparency)
from tools.video.frames import from_uint8

VIDEO_EXTS = ('.mp4', '.mov', '.avi', '.mkv', '.webm')
REENCODE = "re-download or re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)"


class VideoReadError(ValueError):
    """A video cannot be read as asked; the message is one line: "PATH: reason; fix"."""


class VideoInfo(NamedTuple):
    """A video as a player shows it.

    fps: average rate of the shown frames (a raw elementary stream: the rate its own timing info states, else
    the demuxer's default 25 with fps_assumed True); num_frames: frames shown (edit lists honoured); height,
    width: the displayed (rotated) size in stored pixels; sar: sample aspect ratio of the displayed frame (pixel
    width / height; a 90/270 rotation inverts the stored one); rotation: counter-clockwise degrees (0/90/180/270)
    applied to get the upright frame (FFmpeg's display-matrix convention; a legacy `rotate=90` tag, clockwise,
    reads as 270); times: presentation times (s) of the returned frames from the first shown frame of the file
    (None from probe_video); vfr: frame durations differ by more than ~1 %.
    What the source is (tools/video/convert.py): hdr 'pq' | 'hlg' (BT.2100 transfer) or None for SDR; peak: the
    HDR signal peak in cd/m² tone mapping assumes (None for SDR); fields: 'tff' | 'bff' | 'interlaced' (order
    per frame) or None for progressive; alpha: fraction (0..1) of the first frame's pixels not opaque, None
    without an alpha channel; fps_assumed: the stream states no rate. notes: what reading does to the frames
    (tone mapping, deinterlacing, alpha dropped, rate assumed), one phrase each, () for a progressive SDR file.
    """
    fps: float
    num_frames: int
    height: int
    width: int
    sar: Fraction = Fraction(1, 1)
    rotation: int = 0
    times: tuple | None = None
    vfr: bool = False
    hdr: str | None = None
    peak: float | None = None
    fields: str | None = None
    alpha: float | None = None
    fps_assumed: bool = False
    notes: tuple = ()


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

# counter-clockwise display rotation (degrees) -> (swap rows/columns, flip rows, flip columns)
_ROTATIONS = {0: (False, False, False), 90: (True, True, False), 180: (False, True, True), 270: (True, False, True)}


def _orientation(frame, stream):
    """(rotation, (swap, flip_rows, flip_cols)) that make `frame` upright, from its display matrix or the legacy tag.

    The display matrix (FFmpeg's convention: counter-clockwise degrees, `ffmpeg -display_rotation`) wins; else the
    legacy `rotate` tag (clockwise degrees, as old phones and old FFmpeg wrote it) is used. Flips in the matrix are
    applied as FFmpeg's CLI applies them; a matrix that is not a multiple of 90 degrees uses the nearest multiple.
    """
    try:
        m = np.frombuffer(bytes(frame.side_data[av.sidedata.sidedata.Type.DISPLAYMATRIX]), '<i4')
    except (KeyError, AttributeError, ValueError):
        m = None
    if m is not None and m.size == 9 and (m[0] or m[1]):
        a, b, c, d = (int(v) for v in (m[0], m[1], m[3], m[4]))
        ccw = -math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c)))  # av_display_rotation_get
        rotation = round(ccw / 90) * 90 % 360
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
    """_probe_file, remembered per (path, size, modification time): chunked reads of one clip probe it once."""
    st = os.stat(path)
    return _probe_file(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _probe_file(path, size, mtime_ns):
    """Header, shown packets and first frame -> (VideoInfo without times and notes, sorted shown pts or None,
    time_base, orientation, whether the pts are the frames' times: not in a raw stream, whose demuxer makes
    them up).

    The frame count is the number of packets a player shows (edit lists honoured: packets the demuxer marks
    discardable are not counted), never the container's claim. Demuxing reads the file but decodes one frame.
    """
    try:
        with av.open(path) as c:
            if not c.streams.video:
                kinds = sorted({s.type for s in c.streams})
                found = f"only {', '.join(kinds)}" if kinds else 'no streams at all'
                raise VideoReadError(f"{path}: has no video stream ({found}); pass a video file")
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
            raw = raw_stream(c.format)
            if raw:          # the rate the stream's timing info states (SPS VUI, sequence header), else the demuxer's
                rates = (s.codec_context.framerate, s.average_rate or 25)
            if first is not None:  # stream objects are only valid while the container is open
                rotation, orient = _orientation(first, s)
                h, w = first.height, first.width
                hdr = hdr_transfer(first, s)
                kind = dict(hdr=hdr, peak=signal_peak(first) if hdr else None, fields=field_order(first, s),
                            alpha=transparency(first))
    except VideoReadError:
        raise
    except MemoryError:
        raise
    except Exception as e:
        raise VideoReadError(f"{path}: not a readable video container ({_short(e)}); {REENCODE}") from None
    if first is None or not pts:
        raise VideoReadError(f"{path}: truncated or corrupt: no frame could be decoded; {REENCODE}")
    pts.sort()
    fps, vfr = _rate(pts, no_pts or raw, rates, tb)
    kind['fps_assumed'] = raw and not rates[0]
    if orient[0]:
        h, w, sar = w, h, 1 / Fraction(sar)
    info = VideoInfo(fps, len(pts), h, w, Fraction(sar), rotation, None, vfr, **kind)
    return info, (None if no_pts else tuple(pts)), tb, orient, not raw


def _rate(pts, no_pts, rates, tb):
    """(fps, vfr) from the sorted shown pts, or from the stated (average, base) rates without timestamps."""
    rate = rates[0]
    if no_pts or len(pts) < 2 or pts[-1] == pts[0]:
        rate = rate or rates[1]
        return (float(rate) if rate else 0.0), False
    fps, vfr = float((len(pts) - 1) / ((pts[-1] - pts[0]) * tb)), _is_vfr(pts, tb)
    if rate and not vfr and abs(float(rate) / fps - 1) < 0.01:
        fps = float(rate)  # the container's exact rate over one measured from coarse (e.g. 1 ms) timestamps
    return fps, vfr


def probe_video(path, backend='auto', keep_hdr=False, keep_fields=False):
    """VideoInfo of the whole file (times None) as a player shows it: displayed size, shown-frame count, SAR;
    its notes say what read_frames with the same keep_hdr / keep_fields does to the frames."""
    path = str(path)
    _check_backend(backend)
    _check_file(path)
    info = _probe(path)[0]
    return info._replace(notes=notes(info, keep_hdr, keep_fields))


def _check_backend(backend):
    if backend not in ('auto', 'pyav'):
        raise ValueError(f"backend={backend!r}; use 'auto' or 'pyav' (PyAV is the only reader; decord does not "
                         f"honour edit lists)")


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
    by pts; when the seek fails or lands after it (or on a non-keyframe) decoding restarts from the beginning.
    Decoding stops after the last wanted frame.
    """
    by_pts = pts is not None
    want = {(pts[i] if by_pts else i): j for j, i in enumerate(indices)}  # pts (or shown index) -> output slot
    for seek in ([True, False] if by_pts and indices[0] > 0 else [False]):
        got, shown, found = [None] * len(indices), 0, 0
        with av.open(path) as c:
            s = c.streams.video[0]
            s.thread_type = 'AUTO'
            if seek:
                try:
                    c.seek(pts[indices[0]], stream=s, backward=True)
                except av.FFmpegError:                 # a demuxer that cannot seek (image pipes): from the start
                    continue
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


def read_frames(path, num_frames=None, stride=1, start=0, backend='auto', keep_hdr=False, keep_fields=False):
    """Shown frames start, start+stride, ... -> (uint8 (T, H, W, 3) RGB upright, VideoInfo of the whole file).

    Frames are what a player shows: display rotation applied (H, W are the displayed size), edit lists honoured,
    YUV converted to RGB with the stream's matrix and range (untagged: BT.601, as FFmpeg assumes). info.times are
    the returned frames' presentation times in seconds from the first shown frame of the file; info.sar is the
    displayed frame's sample aspect ratio. backend: 'auto' or 'pyav' (the same).
    By default HDR (PQ / HLG) is tone-mapped to SDR BT.709 and interlaced video deinterlaced (bwdif, one frame
    per frame): tools/video/convert.py; keep_hdr=True reads the code values, keep_fields=True the woven fields.
    info.notes says what was done. Reading in chunks gives the frames of one read. Memory ~ the returned frames
    (twice that while converting). VideoReadError (one line) for a file that cannot be read as asked.
    """
    path = str(path)
    _check_backend(backend)
    _check_file(path)
    info, pts, tb, orient, timed = _probe(path)
    indices = frame_indices(info.num_frames, num_frames, stride, start, path)
    size = (info.width, info.height) if orient[0] else (info.height, info.width)  # stored size
    hdr, fields = (None if keep_hdr else info.hdr), (None if keep_fields else info.fields)
    try:
        if hdr or fields:
            frames, got = _read_converted(path, indices, pts, info, size, hdr, fields)
        else:
            frames = np.empty((len(indices), *size, 3), np.uint8)
            got = _decode(path, indices, pts, lambda j, frame: _rgb24(frame, size, frames[j]))
    except ConvertError as e:
        raise VideoReadError(f"{path}: {e}") from None
    except (VideoReadError, MemoryError):
        raise
    except Exception as e:
        raise VideoReadError(f"{path}: truncated or corrupt, decoding failed ({_short(e)}); {REENCODE}") from None
    if pts is not None and timed:
        times = tuple(float((p - pts[0]) * tb) for p in got)
    else:
        times = tuple(i / (info.fps or 1.0) for i in indices)
    return _upright(frames, orient), info._replace(times=times, notes=notes(info, keep_hdr, keep_fields))


def _rgb24(frame, size, out):
    """Decoded frame -> RGB uint8 into `out` (H, W, 3), scaled to the stored size after a mid-stream size change."""
    h, w = size
    out[...] = frame.to_ndarray(format='rgb24', **({} if (frame.height, frame.width) == (h, w) else
                                                     {'width': w, 'height': h}))


def _read_converted(path, indices, pts, info, size, hdr, fields):
    """Decode `indices` (with a frame of context on each side when deinterlacing), deinterlace with bwdif when
    `fields`, tone-map when `hdr` -> (uint8 (T, H, W, 3) stored size, pts of `indices` by slot)."""
    h, w = size
    wanted = deinterlace_context(indices, info.num_frames) if fields else indices
    decoded = {}

    def store(j, frame):
        decoded[wanted[j]] = frame if (frame.height, frame.width) == size else frame.reformat(width=w, height=h)
    got = dict(zip(wanted, _decode(path, wanted, pts, store)))
    frames = deinterlace(decoded, indices, fields) if fields else [decoded[i] for i in indices]
    decoded.clear()
    out = np.empty((len(indices), h, w, 3), np.uint8)
    if hdr:
        tonemap(frames, hdr, info.peak, out)
    else:
        for j, frame in enumerate(frames):
            _rgb24(frame, size, out[j])
    return out, [got[i] for i in indices]


def read_video(path, num_frames=None, stride=1, start=0, backend='auto', keep_hdr=False, keep_fields=False):
    """Read frames start, start+stride, ... -> ((C, T, H, W) float32 in [-1, 1], VideoInfo); see read_frames."""
    frames, info = read_frames(path, num_frames, stride, start, backend, keep_hdr, keep_fields)
    return from_uint8(frames), info


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
