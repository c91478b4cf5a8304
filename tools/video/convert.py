"""What reading does to sources the model was not trained on: HDR tone mapping, deinterlacing, and what a
stream is (HDR transfer, field order, alpha, a raw stream's made-up timestamps).

The model was trained on progressive SDR BT.709 video; tools/video/read.py applies these steps by default
(keep_hdr / keep_fields turn them off) and reports each in VideoInfo.notes.

- HDR (BT.2100 PQ or HLG transfer): decoded frames (10/12-bit YUV) are piped as rawvideo through the ffmpeg
  that imageio-ffmpeg ships: FFmpeg's `zscale` (zimg) to linear light (100 cd/m² = 1.0), BT.2020 -> BT.709
  primaries, `tonemap=mobius` (desat 0) with a fixed signal peak, BT.709 transfer, full-range RGB. The operator
  works on each frame alone (no peak detection across frames), so reading in chunks gives the frames of one
  read. HDR reference white (203 cd/m², BT.2408) comes out at about 235 of 255.
- Interlaced (the decoder's frame flag or the stream's field order): FFmpeg's `bwdif` in PyAV's filter graph,
  mode send_frame (one frame out per frame in, at the input rate). Each output frame uses its neighbours, so a
  read decodes one frame of context on each side (deinterlace_context) and gives the frames of one whole read.
"""
import subprocess
from fractions import Fraction

import av
import imageio_ffmpeg
import numpy as np

HDR_TRANSFERS = {16: 'pq', 18: 'hlg'}              # AVColorTransferCharacteristic: SMPTE ST 2084, ARIB STD-B67
TRC_NAMES = {'pq': 'smpte2084', 'hlg': 'arib-std-b67'}
PRIMARIES = {1: 'bt709', 9: 'bt2020', 11: 'smpte431', 12: 'smpte432'}         # others are read as BT.2020
MATRICES = {0: 'gbr', 1: 'bt709', 9: 'bt2020nc', 10: 'bt2020c', 14: 'ictcp'}  # others are read as BT.2020 NCL
DEFAULT_PEAK = 1000.0                              # cd/m²: HDR10 mastering displays, HLG's nominal display
TONEMAP = 'mobius'
TONEMAP_BATCH = 8                                  # frames per ffmpeg call (memory: a few frames of float RGB)
FIELD_ORDERS = {2: 'tff', 5: 'tff', 3: 'bff', 4: 'bff'}    # AVFieldOrder TT, BT (top shown first), BB, TB
AVFMT_NOTIMESTAMPS = 0x0080                        # a demuxer whose timestamps are made up (raw streams)


class ConvertError(RuntimeError):
    """A conversion failed; the message is one short reason (tools/video/read.py prefixes the path)."""


# ---- what a stream is ----------------------------------------------------------------------------------------

def raw_stream(fmt):
    """True for the demuxer (av ContainerFormat) of a raw elementary stream or image pipe (H.264/HEVC/MPEG-2
    Annex B, MJPEG): it makes timestamps up from a default rate (25 fps), whatever the stream states."""
    return bool(fmt.flags & AVFMT_NOTIMESTAMPS) or fmt.name.endswith('_pipe')


def hdr_transfer(frame, stream):
    """'pq' | 'hlg' for a BT.2100 transfer (the frame's tag, else the stream's), None for SDR."""
    return HDR_TRANSFERS.get(frame.color_trc or stream.codec_context.color_trc)


def signal_peak(frame):
    """The peak (cd/m²) tone mapping assumes, as FFmpeg's tonemap reads it from side data: the content light
    level's MaxCLL, else the mastering display's maximum luminance, else DEFAULT_PEAK."""
    types = av.sidedata.sidedata.Type
    try:
        max_cll = int(np.frombuffer(bytes(frame.side_data[types.CONTENT_LIGHT_LEVEL]), '<u4')[0])
        if max_cll > 0:
            return float(max_cll)
    except (KeyError, AttributeError, ValueError, IndexError):
        pass
    try:
        m = np.frombuffer(bytes(frame.side_data[types.MASTERING_DISPLAY_METADATA]), '<i4')
        if m.size >= 22 and m[21] and m[19] > 0 and m[18] > 0:     # has_luminance, max_luminance num/den
            return float(m[18] / m[19])
    except (KeyError, AttributeError, ValueError):
        pass
    return DEFAULT_PEAK


def field_order(frame, stream):
    """'tff' | 'bff' for interlaced video (the stream's field order), 'interlaced' when only the frame's flag
    says so (bwdif then takes each frame's own order), None for progressive."""
    order = FIELD_ORDERS.get(stream.codec_context.field_order)
    return order or ('interlaced' if frame.interlaced_frame else None)


def transparency(frame):
    """Fraction (0..1) of the frame's pixels that are not opaque, or None when its format has no alpha."""
    if not any(c.is_alpha for c in frame.format.components):
        return None
    alpha = frame.to_ndarray(format='rgba')[..., 3]
    return float(np.mean(alpha < 255))


# ---- deinterlacing ---------------------------------------------------------------------------------------

def deinterlace_context(indices, num_frames):
    """The shown frames to decode for deinterlacing `indices`: each one and its neighbours (sorted)."""
    return sorted({j for i in indices for j in (i - 1, i, i + 1) if 0 <= j < num_frames})


def _drain(graph, out):
    while True:
        try:
            out.append(graph.pull())
        except (av.BlockingIOError, av.EOFError):
            return


def bwdif(frames, order):
    """Consecutive decoded frames (a list of av.VideoFrame, one size and format) -> the same number of
    deinterlaced frames (bwdif mode send_frame; order 'tff' | 'bff', or 'interlaced': each frame's own flag).
    The first and last frame of the list are filtered from one side only, as at the ends of a file."""
    parity = {'tff': 'tff', 'bff': 'bff'}.get(order, 'auto')
    f0 = frames[0]
    graph = av.filter.Graph()
    src = graph.add_buffer(width=f0.width, height=f0.height, format=f0.format, time_base=Fraction(1, 1000))
    filt = graph.add('bwdif', f'mode=send_frame:parity={parity}:deint=all')
    sink = graph.add('buffersink')
    src.link_to(filt)
    filt.link_to(sink)
    graph.configure()
    out = []
    for k, frame in enumerate(frames):
        frame.pts, frame.time_base = k, Fraction(1, 1000)
        graph.push(frame)
        _drain(graph, out)
    graph.push(None)
    _drain(graph, out)
    if len(out) != len(frames):
        raise ConvertError(f'deinterlacing (bwdif) gave {len(out)} frames for {len(frames)}')
    return out


def deinterlace(decoded, indices, order):
    """{shown index: av.VideoFrame} holding `indices` and their neighbours (deinterlace_context) ->
    [deinterlaced av.VideoFrame for each of `indices`]. Each run of consecutive decoded frames goes through
    its own bwdif graph, so a frame's output depends on its neighbours only, never on where a read started."""
    keys, done = sorted(decoded), {}
    runs, run = [], [keys[0]]
    for k in keys[1:]:
        if k == run[-1] + 1:
            run.append(k)
        else:
            runs.append(run)
            run = [k]
    runs.append(run)
    wanted = set(indices)
    for run in runs:
        out = bwdif([decoded[k] for k in run], order)
        done.update((k, f) for k, f in zip(run, out) if k in wanted)
    return [done[i] for i in indices]


# ---- HDR tone mapping ----------------------------------------------------------------------------------

def tonemap_filter(frame, transfer, peak):
    """The ffmpeg -vf chain that maps one HDR frame like `frame` (its primaries, matrix, range) to full-range
    BT.709 RGB (gbrp): zscale to linear light, BT.709 primaries, tonemap=mobius, BT.709 transfer."""
    tags = (f'color_trc={TRC_NAMES[transfer]}:color_primaries={PRIMARIES.get(frame.color_primaries, "bt2020")}:'
            f'colorspace={MATRICES.get(frame.colorspace, "bt2020nc")}:range={"pc" if frame.color_range == 2 else "tv"}')
    return (f'setparams={tags},zscale=t=linear:npl=100,format=gbrpf32le,zscale=p=bt709,'
            f'tonemap=tonemap={TONEMAP}:desat=0:peak={peak / 100:g},zscale=t=bt709:m=bt709:r=full,format=gbrp')


def _raw_planes(frame):
    """The frame's pixels in its own pixel format as rawvideo bytes (planes in order, row padding dropped)."""
    fmt = frame.format
    nbytes = (max(c.bits for c in fmt.components) + 7) // 8
    parts = []
    for i, plane in enumerate(frame.planes):
        row = plane.width * sum(c.plane == i for c in fmt.components) * nbytes
        rows = np.frombuffer(plane, np.uint8)[:plane.height * plane.line_size].reshape(plane.height, -1)
        parts.append(np.ascontiguousarray(rows[:, :row]).tobytes())
    return b''.join(parts)


def _rawvideo_frame(frame, h, w):
    """`frame` at h x w in a format _raw_planes can lay out (planar or semi-planar; packed ones -> 16-bit)."""
    if (frame.height, frame.width) != (h, w):
        frame = frame.reformat(width=w, height=h)
    if not frame.format.is_planar:
        frame = frame.reformat(format='gbrp16le' if frame.format.is_rgb else 'yuv444p16le')
    return frame


def tonemap(frames, transfer, peak, out):
    """HDR av.VideoFrames -> SDR BT.709 RGB written into `out`, uint8 (len(frames), h, w, 3), TONEMAP_BATCH
    frames per ffmpeg call. transfer: 'pq' | 'hlg'; peak: cd/m² (signal_peak). ConvertError (one line)."""
    h, w = out.shape[1:3]
    for a in range(0, len(frames), TONEMAP_BATCH):
        batch = [_rawvideo_frame(f, h, w) for f in frames[a:a + TONEMAP_BATCH]]
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), '-hide_banner', '-loglevel', 'error', '-f', 'rawvideo',
               '-pix_fmt', batch[0].format.name, '-s', f'{w}x{h}', '-i', '-',
               '-vf', tonemap_filter(batch[0], transfer, peak), '-f', 'rawvideo', '-pix_fmt', 'gbrp', '-']
        try:
            run = subprocess.run(cmd, input=b''.join(_raw_planes(f) for f in batch), capture_output=True)
        except OSError as e:
            raise ConvertError(f'ffmpeg for HDR tone mapping cannot run ({e.strerror})') from None
        want = len(batch) * 3 * h * w
        if run.returncode or len(run.stdout) != want:
            lines = run.stderr.decode(errors='replace').strip().splitlines() or [f'{len(run.stdout)} bytes']
            raise ConvertError(f'HDR tone mapping (ffmpeg zscale + tonemap) failed: {lines[-1][:160]}')
        gbr = np.frombuffer(run.stdout, np.uint8).reshape(len(batch), 3, h, w)
        out[a:a + len(batch)] = gbr[:, [2, 0, 1]].transpose(0, 2, 3, 1)       # planes G, B, R -> RGB


# ---- the one line --------------------------------------------------------------------------------------

def notes(info, keep_hdr=False, keep_fields=False):
    """What reading does to the video of VideoInfo `info` (its hdr, peak, fields, alpha, fps_assumed), one
    phrase each -> tuple of str (empty for a progressive SDR file with a stated frame rate and no alpha)."""
    out = []
    if info.hdr and not keep_hdr:
        out.append(f'HDR {info.hdr.upper()} tone-mapped to SDR BT.709 (FFmpeg zscale + tonemap={TONEMAP}, peak '
                   f'{info.peak:g} cd/m²; --keep-hdr keeps the code values)')
    if info.fields and not keep_fields:
        order = {'tff': 'top field first', 'bff': 'bottom field first'}.get(info.fields, 'field order per frame')
        out.append(f'interlaced ({order}) deinterlaced with FFmpeg bwdif, one frame per frame (--keep-fields '
                   f'keeps the fields)')
    if info.alpha is not None:
        out.append(f'alpha channel dropped ({100 * info.alpha:.0f} % of the first frame transparent): colours '
                   f'under transparent pixels are read as stored; composite onto a background first to choose them')
    if info.fps_assumed:
        out.append(f'the stream states no frame rate: {info.fps:g} fps assumed (the demuxer\'s default); pass '
                   f'--fps to write another rate')
    return tuple(out)
