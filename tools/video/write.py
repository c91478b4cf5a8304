"""Writing videos that keep what was read: exact size, SAR, frame times, BT.709 colour tags; optional lossless."""
import math
import os
from fractions import Fraction

import av
import numpy as np
import torch

from tools.files import temp_path

WRITE_FORMATS = {'.mp4': 'mp4', '.mov': 'mov', '.mkv': 'matroska'}


def to_uint8(video):
    """(C, T, H, W) in [-1, 1] -> uint8 numpy (T, H, W, 3) (1-channel videos are repeated to RGB)."""
    if video.ndim != 4 or video.shape[0] not in (1, 3):
        raise ValueError(f"expected a video (C, T, H, W) with C = 1 or 3, got shape {tuple(video.shape)}")
    out = np.empty((video.shape[1], *video.shape[2:], 3), np.uint8)
    for t in range(video.shape[1]):                  # a frame at a time: one frame of float temporaries
        x = video[:, t].detach().float().cpu().add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)
        out[t] = x.expand(3, *x.shape[1:]).permute(1, 2, 0).numpy()
    return out


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
      .mp4/.mkv only; ffmpeg and FFmpeg-based players decode it, Chrome/Firefox/Edge support VP9 in MP4;
    - pix_fmt='yuv444p': H.264 4:4:4 at any size (ffmpeg/VLC/mpv; most browsers do not play it);
    - lossless=True: libx264rgb at qp 0, RGB stored exactly (bit-exact round trip through read_frames; for
      metrics, not for browsers).
    RGB -> YUV uses BT.709 limited range and the stream is tagged bt709/tv (colorspace, primaries, transfer,
    range). `sar` (Fraction, e.g. 4/3) is written as the sample aspect ratio. write(frames, times): times (seconds,
    strictly increasing across calls) put each frame at its source time (VFR; shifted so the first frame is at 0,
    on a 1/90000 s clock); times=None writes a constant `fps`. Frames go to `tmp` (PATH.<pid>.<random>.tmp, this
    writer's own: tools.files.temp_path), renamed to PATH by close(); on an exception inside `with` (or abort())
    the temp file is removed and an existing PATH is left untouched.
    x264 holds up to about `lookahead` + `threads` + 8 frames (its default look-ahead 40 at preset medium: 216
    MB for 720p, measured); a smaller lookahead bounds that for wide side-by-side files. threads: the encoder's
    (None: its own choice, 1.5 per CPU core for x264).
    """

    def __init__(self, path, fps, crf=18, preset='medium', pix_fmt='yuv420p', sar=None, lossless=False,
                 lookahead=None, threads=None):
        self.path = str(path)
        ext = os.path.splitext(self.path)[1].lower()
        if ext not in WRITE_FORMATS:
            raise ValueError(f"{self.path}: cannot write '{ext}' files; use one of {'/'.join(WRITE_FORMATS)}")
        if pix_fmt not in ('yuv420p', 'yuv444p'):
            raise ValueError(f"{self.path}: pix_fmt={pix_fmt!r}; use 'yuv420p' or 'yuv444p'")
        self.format, self.fps, self.tmp = WRITE_FORMATS[ext], fps_fraction(fps), temp_path(self.path)
        self.crf, self.preset, self.pix_fmt, self.lossless = crf, preset, pix_fmt, bool(lossless)
        self.lookahead = lookahead      # x264 rc-lookahead in frames (None: the preset's, 40 for medium)
        self.threads = threads          # encoder threads (None: the encoder's default)
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
        la = {} if self.lookahead is None else {'rc-lookahead': str(self.lookahead)}   # frames x264 holds
        if self.lossless:
            return 'libx264rgb', 'rgb24', {'qp': '0', 'preset': self.preset, **la}
        if self.pix_fmt == 'yuv420p' and (h % 2 or w % 2):
            if self.format == 'mov':
                raise ValueError(f"{self.path}: {h}x{w} is odd; odd sizes are written as VP9, which needs .mp4 or "
                                 f".mkv (or pass pix_fmt='yuv444p')")
            return 'libvpx-vp9', 'yuv420p', {'crf': str(self.crf), 'b': '0', 'deadline': 'good', 'cpu-used': '4',
                                             'row-mt': '1'}
        return 'libx264', self.pix_fmt, {'crf': str(self.crf), 'preset': self.preset, **la}

    def _open(self, h, w, timed):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.size, self.timed = (h, w), timed
        codec, self.enc_fmt, options = self._codec(h, w)
        opts = {'movflags': 'faststart'} if self.format in ('mp4', 'mov') else {}
        self.container = av.open(self.tmp, mode='w', format=self.format, options=opts)
        if self.threads:
            options['threads'] = str(self.threads)
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
        time_base = TIME_BASE if self.timed else 1 / self.fps
        for img, pts in zip(arr, self._pts(times, len(arr))):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format='rgb24')
            if not self.lossless:
                frame = frame.reformat(format=self.enc_fmt, dst_colorspace='ITU709', dst_color_range='MPEG')
            frame.pts, frame.time_base = pts, time_base
            self.container.mux(self.stream.encode(frame))
            self.num_written, self.last_pts = self.num_written + 1, pts

    def close(self):
        """Flush the encoder and move the temp file to PATH."""
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
        """Drop everything written so far (the temp file is removed, PATH untouched)."""
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
