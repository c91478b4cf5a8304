"""Reader and writer conformance: frames come out as a player shows them, and written files keep what went in.

Each test builds its small input with the ffmpeg that imageio-ffmpeg ships (or with our writer) and compares with
the value a player (the ffmpeg CLI) gives: display rotation, edit lists, SAR, frame times, odd sizes, colour tags,
lossless output, and full-range / BT.709 / 10-bit decoding.
"""
import subprocess
from fractions import Fraction

import numpy as np
import pytest
import torch

from tools.video.read import probe_video, read_frames, read_video

from tools.video.write import VideoWriter, write_video

BACKENDS = ['auto', 'pyav']  # PyAV is the only reader; 'auto' must behave the same


def ffmpeg(*args):
    """Run the bundled ffmpeg CLI; -> stdout bytes (stderr in the assertion message on failure)."""
    import imageio_ffmpeg
    run = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-v', 'error', '-y', *map(str, args)],
                         capture_output=True)
    assert run.returncode == 0, run.stderr.decode(errors='replace')[-2000:]
    return run.stdout


def ffmpeg_frames(path, h, w, *extra):
    """What the ffmpeg CLI shows (autorotated, every shown frame once) as uint8 (T, h, w, 3) RGB."""
    raw = ffmpeg('-i', path, *extra, '-fps_mode', 'passthrough', '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-')
    assert len(raw) % (h * w * 3) == 0, f'{len(raw)} bytes are not whole {h}x{w} frames'
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


def ffmpeg_stream_line(path):
    """The 'Stream #0:0: Video: ...' line ffmpeg prints for `path` (codec, pixel format, tags, size, SAR)."""
    import imageio_ffmpeg
    err = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-hide_banner', '-i', str(path)],
                         capture_output=True, text=True).stderr
    return next(line for line in err.splitlines() if 'Video:' in line)


def marker_clip(t=6, h=180, w=320):
    """Grey frames with a red 20x40 block at the top-left corner and a frame-number ramp: uint8 (t, h, w, 3)."""
    frames = np.full((t, h, w, 3), 100, np.uint8)
    frames[:, :20, :40] = (230, 30, 30)
    frames[:, h // 2:, w // 2:, 1] = np.arange(t, dtype=np.uint8)[:, None, None] * 30
    return frames


def write_uint8(path, frames, fps=30, **kwargs):
    with VideoWriter(path, fps, **kwargs) as w:
        w.write(frames)
    return path


def psnr(a, b):
    return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))


def max_diff(a, b):
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


# ---------------------------------------------------------------------------------------------------------------
# Display rotation

@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('rotation', [90, 180, 270])
def test_display_rotation(rotation, backend, tmp_path):
    src = write_uint8(tmp_path / 'stored.mp4', marker_clip())
    path = tmp_path / f'rot{rotation}.mp4'
    ffmpeg('-display_rotation', rotation, '-i', src, '-c', 'copy', path)  # counter-clockwise, as players apply it
    h, w = (320, 180) if rotation in (90, 270) else (180, 320)
    info = probe_video(path, backend=backend)
    assert (info.height, info.width, info.rotation, info.num_frames) == (h, w, rotation, 6)
    frames, info2 = read_frames(path, backend=backend)
    assert frames.shape == (6, h, w, 3) and info2._replace(times=None) == info
    stored, _ = read_frames(src)
    assert np.array_equal(frames, np.rot90(stored, rotation // 90, axes=(1, 2)))  # counter-clockwise
    red = np.argwhere((frames[0, ..., 0] > 180) & (frames[0, ..., 1] < 80))
    corner = {90: (h - 40, 0), 180: (h - 20, w - 40), 270: (0, w - 20)}[rotation]
    assert tuple(red.min(0)) == corner, (rotation, red.min(0), red.max(0))
    assert max_diff(frames, ffmpeg_frames(path, h, w)) <= 1  # what the ffmpeg CLI shows (it autorotates)
    part, pinfo = read_frames(path, num_frames=2, stride=2, start=1, backend=backend)
    assert np.array_equal(part, frames[1:5:2]) and pinfo.times == pytest.approx([1 / 30, 3 / 30])


@pytest.mark.parametrize('flags', [('-display_hflip',), ('-display_rotation', 90, '-display_hflip'),
                                   ('-display_rotation', 270, '-display_vflip')])
def test_display_matrix_with_flips_matches_ffmpeg(flags, tmp_path):
    src = write_uint8(tmp_path / 'stored.mp4', marker_clip(t=2))
    path = tmp_path / 'flipped.mp4'
    ffmpeg(*flags, '-i', src, '-c', 'copy', path)
    frames, info = read_frames(path)
    assert max_diff(frames, ffmpeg_frames(path, info.height, info.width)) <= 1


def test_legacy_rotate_tag(tmp_path):
    """A `rotate=90` tag (clockwise, as old phones wrote it) in a container that keeps tags: upright, rotation 270."""
    src = write_uint8(tmp_path / 'stored.mp4', marker_clip(t=2))
    path = tmp_path / 'tagged.mkv'
    ffmpeg('-i', src, '-c', 'copy', '-metadata:s:v', 'rotate=90', path)
    frames, info = read_frames(path)
    stored, _ = read_frames(src)
    assert (info.height, info.width, info.rotation) == (320, 180, 270)
    assert np.array_equal(frames, np.rot90(stored, -1, axes=(1, 2)))  # turned clockwise: the marker is top-right
    assert tuple(np.argwhere(frames[0, ..., 0] > 180).min(0)) == (0, 180 - 20)


# ---------------------------------------------------------------------------------------------------------------
# Edit lists

@pytest.fixture(scope='module')
def trimmed(tmp_path_factory):
    """An mp4 cut with `-c copy` at a non-keyframe: the container lists 60 frames, a player shows 47."""
    d = tmp_path_factory.mktemp('editlist')
    ffmpeg('-f', 'lavfi', '-i', 'testsrc2=size=160x96:rate=30', '-frames:v', 90, '-c:v', 'libx264', '-g', 30,
           '-bf', 0, '-pix_fmt', 'yuv420p', d / 'src.mp4')
    ffmpeg('-ss', 0.42, '-i', d / 'src.mp4', '-t', 1.57, '-c', 'copy', d / 'trimmed.mp4')
    return d / 'trimmed.mp4'


@pytest.mark.parametrize('backend', BACKENDS)
def test_edit_list_trim(trimmed, backend):
    import av
    with av.open(str(trimmed)) as c:
        assert c.streams.video[0].frames == 60  # the container's claim
    shown = ffmpeg_frames(trimmed, 96, 160)
    assert len(shown) == 47
    info = probe_video(trimmed, backend=backend)
    frames, info2 = read_frames(trimmed, backend=backend)
    assert info.num_frames == info2.num_frames == len(frames) == 47
    assert max_diff(frames, shown) <= 1
    assert info2.times == pytest.approx([i / 30 for i in range(47)], abs=1e-3) and not info2.vfr
    part, _ = read_frames(trimmed, num_frames=5, stride=3, start=30, backend=backend)  # seeks past a keyframe
    assert np.array_equal(part, frames[30:45:3])


def test_edit_list_trim_with_b_frames(tmp_path):
    """B-frames: the shown frames (and their times) are those ffmpeg shows, in display order."""
    ffmpeg('-f', 'lavfi', '-i', 'testsrc2=size=160x96:rate=30', '-frames:v', 90, '-c:v', 'libx264', '-g', 30,
           '-bf', 2, '-pix_fmt', 'yuv420p', tmp_path / 'src.mp4')
    ffmpeg('-ss', 0.433, '-i', tmp_path / 'src.mp4', '-t', 1.5667, '-c', 'copy', tmp_path / 'trimmed.mp4')
    shown = ffmpeg_frames(tmp_path / 'trimmed.mp4', 96, 160)
    frames, info = read_frames(tmp_path / 'trimmed.mp4')
    assert probe_video(tmp_path / 'trimmed.mp4').num_frames == len(frames) == len(shown) == info.num_frames
    assert max_diff(frames, shown) <= 1
    part, _ = read_frames(tmp_path / 'trimmed.mp4', num_frames=3, start=len(frames) - 3)
    assert np.array_equal(part, frames[-3:])


@pytest.mark.parametrize('name,codec', [('bframes.mkv', ['-c:v', 'libx264', '-g', 12, '-bf', 3]),
                                        ('mpeg4.avi', ['-c:v', 'mpeg4', '-bf', 2]),
                                        ('vp9.webm', ['-c:v', 'libvpx-vp9', '-deadline', 'realtime'])])
def test_other_containers_and_late_starts(name, codec, tmp_path):
    """Every frame equals ffmpeg's; reads that start late (a seek) return the same frames as a full read."""
    ffmpeg('-f', 'lavfi', '-i', 'testsrc2=size=96x64:rate=25', '-frames:v', 40, *codec, tmp_path / name)
    frames, info = read_frames(tmp_path / name)
    assert info.num_frames == len(frames) == 40 and info.fps == 25 and not info.vfr
    assert max_diff(frames, ffmpeg_frames(tmp_path / name, 64, 96)) <= 1
    for start in (1, 13, 34):
        part, pinfo = read_frames(tmp_path / name, num_frames=3, stride=2, start=start)
        assert np.array_equal(part, frames[start:start + 6:2]), start
        assert pinfo.times == pytest.approx([(start + k) / 25 for k in (0, 2, 4)], abs=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# Sample aspect ratio

@pytest.mark.parametrize('backend', BACKENDS)
def test_sar_read_and_written(backend, tmp_path):
    ffmpeg('-f', 'lavfi', '-i', 'testsrc2=size=240x180:rate=25', '-frames:v', 4, '-vf', 'setsar=4/3',
           '-c:v', 'libx264', '-pix_fmt', 'yuv420p', tmp_path / 'anamorphic.mp4')
    video, info = read_video(tmp_path / 'anamorphic.mp4', backend=backend)
    assert info.sar == Fraction(4, 3) and probe_video(tmp_path / 'anamorphic.mp4').sar == Fraction(4, 3)
    write_video(tmp_path / 'out.mp4', video, info.fps, sar=info.sar)
    assert read_video(tmp_path / 'out.mp4', backend=backend)[1].sar == Fraction(4, 3)
    assert 'SAR 4:3 DAR 16:9' in ffmpeg_stream_line(tmp_path / 'out.mp4')
    write_video(tmp_path / 'odd.mp4', video[..., :179, :], info.fps, sar=info.sar)  # the VP9 path keeps it too
    assert probe_video(tmp_path / 'odd.mp4').sar == Fraction(4, 3)
    ffmpeg('-display_rotation', 90, '-i', tmp_path / 'anamorphic.mp4', '-c', 'copy', tmp_path / 'turned.mp4')
    assert probe_video(tmp_path / 'turned.mp4').sar == Fraction(3, 4)  # of the displayed (upright) frame


def test_sar_of_carphone(shared_videos):
    path = shared_videos / 'carphone_pristine.mp4'
    if not path.is_file():
        pytest.skip(f'{path} not found')
    assert probe_video(path).sar == Fraction(128, 117)


# ---------------------------------------------------------------------------------------------------------------
# Frame times

VFR_TIMES = [n / 30 for n in range(12)] + [0.4 + n / 15 for n in range(12)] + [1.2 + n / 30 for n in range(12)]


@pytest.mark.parametrize('backend', BACKENDS)
def test_variable_frame_rate(backend, tmp_path):
    """12 frames at 30 fps, 12 at 15, 12 at 30: times read and written within 1 ms of the source's."""
    ticks = r'if(lt(N\,12)\,2*N\,if(lt(N\,24)\,24+4*(N-12)\,72+2*(N-24)))'  # in 1/60 s (commas escaped)
    ffmpeg('-f', 'lavfi', '-i', 'testsrc2=size=96x64:rate=30', '-frames:v', 36, '-vf', f'setpts={ticks}/(60*TB)',
           '-fps_mode', 'passthrough', '-c:v', 'libx264', '-pix_fmt', 'yuv420p', tmp_path / 'vfr.mp4')
    video, info = read_video(tmp_path / 'vfr.mp4', backend=backend)
    assert info.num_frames == 36 and info.vfr and probe_video(tmp_path / 'vfr.mp4').vfr
    assert np.abs(np.array(info.times) - VFR_TIMES).max() < 1e-3
    assert info.fps == pytest.approx(35 / 1.5667, rel=1e-3)  # average rate of the shown frames
    write_video(tmp_path / 'out.mp4', video, info.fps, times=info.times)
    _, back = read_video(tmp_path / 'out.mp4', backend=backend)
    assert back.num_frames == 36 and back.vfr and np.abs(np.array(back.times) - VFR_TIMES).max() < 1e-3
    part, pinfo = read_video(tmp_path / 'vfr.mp4', num_frames=3, stride=2, start=20, backend=backend)
    assert np.abs(np.array(pinfo.times) - VFR_TIMES[20:25:2]).max() < 1e-3
    # times shifted to start at 0 and kept across write() calls; a constant rate without times
    with VideoWriter(tmp_path / 'chunks.mkv', 30) as w:
        w.write(video[:, :20], [t + 5 for t in VFR_TIMES[:20]])
        w.write(video[:, 20:], [t + 5 for t in VFR_TIMES[20:]])
        with pytest.raises(ValueError, match='increase strictly'):
            w.write(video[:, :1], [0.0])
    assert np.abs(np.array(read_video(tmp_path / 'chunks.mkv')[1].times) - VFR_TIMES).max() < 1e-3
    write_video(tmp_path / 'cfr.mp4', video, 30)
    cfr = read_video(tmp_path / 'cfr.mp4')[1]
    assert cfr.fps == 30 and not cfr.vfr and cfr.times == pytest.approx([n / 30 for n in range(36)])


# ---------------------------------------------------------------------------------------------------------------
# Exact size, colour, lossless

@pytest.mark.parametrize('backend', BACKENDS)
def test_odd_size_kept(backend, tmp_path):
    frames = marker_clip(t=5, h=143, w=175)
    for name in ('odd.mp4', 'odd.mkv'):
        write_uint8(tmp_path / name, frames)
        back, info = read_frames(tmp_path / name, backend=backend)
        assert back.shape == frames.shape and (info.height, info.width) == (143, 175)
        assert psnr(back, frames) > 35, psnr(back, frames)  # lossy (4:2:0 chroma at edges), the same picture
        assert len(ffmpeg_frames(tmp_path / name, 143, 175)) == 5            # ffmpeg decodes 175x143 too
        assert '175x143' in ffmpeg_stream_line(tmp_path / name)
    with pytest.raises(ValueError, match='odd'):
        write_uint8(tmp_path / 'odd.mov', frames)


COLOURS = {'red': (255, 0, 0), 'green': (0, 255, 0), 'blue': (0, 0, 255), 'grey': (128, 128, 128)}


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('size', [(64, 96), (63, 95)])  # H.264 and the odd-size encoding
def test_colours_tagged_bt709(size, backend, tmp_path):
    import av
    frames = np.stack([np.broadcast_to(np.array(c, np.uint8), (*size, 3)) for c in COLOURS.values()])
    path = write_uint8(tmp_path / 'colours.mp4', frames, fps=4)
    with av.open(str(path)) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range) == (1, 1, 1, 1)  # bt709 x3, tv
    assert 'tv, bt709' in ffmpeg_stream_line(path)
    ours, _ = read_frames(path, backend=backend)
    cli = ffmpeg_frames(path, *size)
    for got in (ours, cli):
        centre = got[:, size[0] // 2, size[1] // 2].astype(int)
        assert np.abs(centre - np.array(list(COLOURS.values()))).max() <= 4, centre.tolist()


@pytest.mark.parametrize('name', ['exact.mp4', 'exact.mkv', 'odd.mp4'])
def test_lossless_round_trip(name, tmp_path):
    rng = np.random.default_rng(0)
    h, w = (143, 175) if name.startswith('odd') else (64, 96)
    frames = rng.integers(0, 256, (5, h, w, 3), dtype=np.uint8)
    write_uint8(tmp_path / name, frames, lossless=True)
    back, info = read_frames(tmp_path / name)
    assert np.array_equal(back, frames) and info.num_frames == 5
    assert np.array_equal(ffmpeg_frames(tmp_path / name, h, w), frames)
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1
    write_video(tmp_path / f'v_{name}', video, 25, lossless=True)
    assert np.array_equal(read_frames(tmp_path / f'v_{name}')[0], frames)


# ---------------------------------------------------------------------------------------------------------------
# Decoding colour of other encodings (regression): full range, BT.709, 10-bit

PATCHES = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128), (250, 200, 30), (20, 60, 200),
                    (0, 0, 0), (255, 255, 255)], np.uint8)


@pytest.mark.parametrize('encoding', [
    ('yuv420p', 'bt709', 'tv'), ('yuv420p', 'bt709', 'pc'), ('yuvj420p', 'bt470bg', 'pc'),
    ('yuv420p', 'smpte170m', 'tv'), ('yuv420p10le', 'bt709', 'tv'), ('yuv444p10le', 'bt2020nc', 'tv')])
def test_decodes_tagged_encodings_within_3_levels(encoding, tmp_path):
    pix_fmt, matrix, rng = encoding
    img = np.repeat(np.repeat(PATCHES[None], 32, 0), 32, 1)  # (32, 256, 3): flat 32x32 patches
    (tmp_path / 'rgb.raw').write_bytes(np.repeat(img[None], 2, 0).tobytes())
    ffmpeg('-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', '256x32', '-r', 10, '-i', tmp_path / 'rgb.raw',
           '-vf', f'scale=out_color_matrix={matrix.replace("nc", "")}:out_range={rng}', '-colorspace', matrix,
           '-color_range', rng, '-c:v', 'libx264', '-qp', 0, '-pix_fmt', pix_fmt, tmp_path / 'coded.mp4')
    assert f'{rng}, {matrix}' in ffmpeg_stream_line(tmp_path / 'coded.mp4')
    frames, _ = read_frames(tmp_path / 'coded.mp4')
    centres = frames[0, 16, 16::32].astype(int)
    assert np.abs(centres - PATCHES).max() <= 3, centres.tolist()
