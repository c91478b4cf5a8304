"""tools/video/read.py on the real clips in ../shared/videos: reading, bad files, writing, geometry."""
import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tools.video import read as video_io
from tools.video.frames import center_crop, pad_to_multiple, resize_short_side, unpad
from tools.video.read import VideoReadError, list_videos, probe_video, read_video
from tools.video.write import VideoWriter, fps_fraction, to_uint8, write_video
from tools.video.panels import side_by_side, write_grid_png

BACKENDS = ['auto', 'pyav']  # PyAV is the only reader ('auto' is the same)

# ../shared/videos/README.md: name -> (frames, height, width, fps)
CLIPS = {
    'demo.mp4': (72, 720, 1280, 24.0),
    'side_by_side_3.mp4': (8, 1024, 2048, 8.0),
    'bigbuckbunny.mp4': (132, 720, 1280, 25.0),
    'carphone_pristine.mp4': (120, 144, 176, 30000 / 1001),
}


def psnr(a, b):
    """PSNR in dB of two videos in [-1, 1] (peak-to-peak 2)."""
    return 10 * math.log10(4.0 / ((a - b) ** 2).mean().item())


def synthetic_clip(t=120, h=144, w=176):
    """Moving gradients and a moving disc, (C, T, H, W) in [-1, 1]: stands in for carphone without ../shared."""
    tt, yy, xx = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing='ij')
    disc = (((yy - h / 2 - 30 * torch.sin(tt / 10)) ** 2 + (xx - w / 2 - 2 * tt + t) ** 2) < 400).float()
    r = torch.sin(xx / 13 + tt / 7)
    g = torch.cos(yy / 11 - tt / 9) * 0.8
    b = disc * 1.6 - 0.8
    return torch.stack([r, g, b]).float().clamp(-1, 1)


@pytest.fixture(scope='module')
def carphone(tmp_path_factory):
    """carphone_pristine.mp4 (120 frames, 144x176, 29.97 fps), or a synthetic clip like it without ../shared."""
    real = Path(__file__).resolve().parents[2] / 'shared' / 'videos' / 'carphone_pristine.mp4'
    if real.is_file():
        return str(real)
    path = tmp_path_factory.mktemp('clips') / 'synthetic.mp4'
    write_video(path, synthetic_clip(), 30000 / 1001)
    return str(path)


@pytest.fixture(scope='module')
def carphone16(carphone):
    return read_video(carphone, num_frames=16)


# ---------------------------------------------------------------------------------------------------------------
# Reading the real clips

@pytest.mark.parametrize('name', sorted(CLIPS))
def test_read_shared_clip(shared_videos, name):
    frames, h, w, fps = CLIPS[name]
    path = shared_videos / name
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (frames, h, w)
    assert info.fps == pytest.approx(fps, abs=1e-3)
    n = frames if h * w <= 144 * 176 or frames <= 8 else 8  # all frames of the small clips, 8 of the big ones
    video, info2 = read_video(path, num_frames=n if n < frames else None)
    assert video.shape == (3, n, h, w) and video.dtype == torch.float32
    assert info2._replace(times=None) == info and len(info2.times) == n
    assert video.min() >= -1 and video.max() <= 1
    assert video.min() < -0.5 and video.max() > 0.5 and video.std() > 0.1  # real content, full range used
    assert (video[:, 0] - video[:, -1]).abs().mean() > 1e-3                # frames differ


def test_every_shared_clip_is_listed_and_readable(shared_videos):
    paths = list_videos(shared_videos)
    assert {os.path.basename(p) for p in paths} >= set(CLIPS)
    for p in paths:
        video, info = read_video(p, num_frames=2, stride=max(1, probe_video(p).num_frames // 2))
        assert video.shape[:2] == (3, 2) and info.num_frames >= 2


def test_stride_start_and_all_frames(carphone):
    full, info = read_video(carphone, backend='pyav')
    assert full.shape == (3, 120, 144, 176) and info.num_frames == 120
    for backend in BACKENDS:
        part, _ = read_video(carphone, num_frames=10, stride=7, start=3, backend=backend)
        assert torch.equal(part, full[:, 3::7][:, :10]), backend
        rest, _ = read_video(carphone, stride=3, start=100, backend=backend)  # num_frames=None: all that fit
        assert torch.equal(rest, full[:, 100::3]) and rest.shape[1] == 7, backend


def test_decord_is_not_a_backend(carphone):
    with pytest.raises(ValueError, match="use 'auto' or 'pyav'"):
        read_video(carphone, num_frames=2, backend='decord')


def test_read_frames_and_read_video_agree(carphone):
    frames, info = video_io.read_frames(carphone, num_frames=4, stride=5, start=7)
    video, info2 = read_video(carphone, num_frames=4, stride=5, start=7)
    assert frames.dtype == np.uint8 and frames.shape == (4, 144, 176, 3) and info == info2
    assert torch.equal(video, torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1)
    assert info.times == pytest.approx([(7 + 5 * k) * 1001 / 30000 for k in range(4)], abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one exception type, the path and the reason in one line, for every backend

def _truncated_copy(src, dst, fraction):
    data = open(src, 'rb').read()
    dst.write_bytes(data[:int(len(data) * fraction)])
    return dst


def _bad_file(kind, tmp_path, carphone, carphone16):
    """Make a bad input of `kind` in tmp_path -> (path, read kwargs, text expected in the message)."""
    if kind == 'missing':
        return tmp_path / 'missing.mp4', {}, 'no such file'
    if kind == 'empty':
        (tmp_path / 'empty.mp4').write_bytes(b'')
        return tmp_path / 'empty.mp4', {}, '0 bytes'
    if kind == 'text':
        (tmp_path / 'notes.mp4').write_text('this is a text file, renamed to .mp4\n')
        return tmp_path / 'notes.mp4', {}, 'text file'
    if kind == 'random_bytes':
        (tmp_path / 'noise.mp4').write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, np.uint8).tobytes())
        return tmp_path / 'noise.mp4', {}, 'not a readable video'
    if kind == 'truncated':  # index (moov) at the end: cut off with the tail
        return _truncated_copy(carphone, tmp_path / 'cut.mp4', 0.3), {}, 'truncated'
    if kind == 'truncated_faststart':  # index at the front claims 16 frames, the data of most is gone
        write_video(tmp_path / 'full.mp4', carphone16[0], 29.97)
        return _truncated_copy(tmp_path / 'full.mp4', tmp_path / 'cut.mp4', 0.6), {}, 'truncated'
    if kind == 'corrupt':  # complete file, a run of zeroed bytes in the frame data
        write_video(tmp_path / 'full.mp4', carphone16[0], 29.97)
        data = bytearray((tmp_path / 'full.mp4').read_bytes())
        data[len(data) // 2:len(data) // 2 + 2000] = bytes(2000)
        (tmp_path / 'corrupt.mp4').write_bytes(bytes(data))
        return tmp_path / 'corrupt.mp4', {}, 'corrupt'
    if kind == 'audio_only':
        import av
        with av.open(str(tmp_path / 'audio.mp4'), 'w') as c:
            s = c.add_stream('aac', rate=16000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format='fltp', layout='mono')
            frame.sample_rate = 16000
            for i in range(4):
                frame.pts = i * 1024
                c.mux(s.encode(frame))
            c.mux(s.encode(None))
        return tmp_path / 'audio.mp4', {}, 'no video stream'
    if kind == 'folder':
        return tmp_path, {}, 'folder'
    if kind == 'too_few_frames':
        return (carphone, dict(num_frames=100, stride=2),
                'has 120 frames; --num-frames 100 at --frame-stride 2 from --start 0 needs 199')
    if kind == 'start_past_end':
        return carphone, dict(start=120), 'has 120 frames'
    if kind == 'bad_stride':
        return carphone, dict(num_frames=4, stride=0), 'stride >= 1'
    raise AssertionError(kind)


BAD_KINDS = ['missing', 'empty', 'text', 'random_bytes', 'truncated', 'truncated_faststart', 'corrupt',
             'audio_only', 'folder', 'too_few_frames', 'start_past_end', 'bad_stride']


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('kind', BAD_KINDS)
def test_bad_input(kind, backend, tmp_path, carphone, carphone16):
    path, kwargs, reason = _bad_file(kind, tmp_path, carphone, carphone16)
    with pytest.raises(VideoReadError) as e:
        read_video(path, backend=backend, **kwargs)
    msg = str(e.value)
    assert msg.startswith(f'{path}: ') and reason in msg and '\n' not in msg, msg
    assert len(msg) < 400, msg
    if kind not in ('corrupt', 'too_few_frames', 'start_past_end', 'bad_stride'):  # probe does not decode
        with pytest.raises(VideoReadError, match=reason):
            probe_video(path)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('kind', ['truncated_faststart', 'corrupt'])
def test_decoders_catch_damage_without_the_prechecks(kind, backend, tmp_path, carphone, carphone16, monkeypatch):
    """The MP4 box check finds truncation early; without it the decoders' own failures still end as VideoReadError."""
    path, _, _ = _bad_file(kind, tmp_path, carphone, carphone16)
    monkeypatch.setattr(video_io, '_check_mp4_boxes', lambda path, size: None)
    with pytest.raises(VideoReadError) as e:
        read_video(path, backend=backend)
    assert str(e.value).startswith(f'{path}: ') and ('truncated' in str(e.value) or 'corrupt' in str(e.value))


# ---------------------------------------------------------------------------------------------------------------
# Writing

def test_mp4_round_trip(tmp_path, carphone16):
    video, info = carphone16
    out = tmp_path / 'out.mp4'
    write_video(out, video, info.fps)
    assert sorted(os.listdir(tmp_path)) == ['out.mp4']  # no temp file left
    for backend in BACKENDS:
        back, info2 = read_video(out, backend=backend)
        assert back.shape == video.shape, backend
        assert info2.fps == pytest.approx(29.97, abs=1e-3) and info2.num_frames == 16
        assert psnr(back, video) > 30, (backend, psnr(back, video))


def test_round_trip_hd_and_fps_values(tmp_path, shared_videos):
    video, _ = read_video(shared_videos / 'demo.mp4', num_frames=4)
    write_video(tmp_path / 'demo.mp4', video, 24)
    back, info = read_video(tmp_path / 'demo.mp4')
    assert back.shape == video.shape and info.fps == 24.0 and psnr(back, video) > 35
    small = video[:, :3, :64, :64]
    for fps in (12.5, 23.976, 60):
        write_video(tmp_path / 'f.mp4', small, fps)
        assert probe_video(tmp_path / 'f.mp4').fps == pytest.approx(fps, abs=1e-3)


def test_fps_fraction():
    assert fps_fraction(29.97) == Fraction(30000, 1001) == fps_fraction(30000 / 1001)
    assert fps_fraction(23.976) == Fraction(24000, 1001) and fps_fraction(59.94) == Fraction(60000, 1001)
    assert fps_fraction(24) == 24 and fps_fraction(25.0) == 25 and fps_fraction(12.5) == Fraction(25, 2)
    with pytest.raises(ValueError, match='fps'):
        fps_fraction(0)


def test_writer_streams_chunks_and_checks_sizes(tmp_path, carphone16):
    video = carphone16[0]
    with VideoWriter(tmp_path / 'chunks.mkv', fps=10) as w:
        for t in range(0, 16, 5):
            w.write(video[:, t:t + 5])
        w.write(to_uint8(video[:, :2]))  # uint8 (T, H, W, 3) frames too
        with pytest.raises(ValueError, match='differs'):
            w.write(video[:, :1, :64])
    back, info = read_video(tmp_path / 'chunks.mkv')
    assert back.shape == (3, 18, 144, 176) and info.fps == 10
    assert psnr(back[:, :16], video) > 30


def test_writer_is_atomic(tmp_path, carphone16):
    video = carphone16[0]
    final = tmp_path / 'result.mp4'
    final.write_bytes(b'previous result')
    with pytest.raises(RuntimeError, match='interrupted'):
        with VideoWriter(final, fps=25) as w:
            for _ in range(5):  # 80 frames: past the encoder's look-ahead, so the temp file holds data
                w.write(video)
            assert os.path.getsize(w.tmp) > 0 and final.read_bytes() == b'previous result'
            raise RuntimeError('interrupted')
    assert final.read_bytes() == b'previous result'
    assert sorted(os.listdir(tmp_path)) == ['result.mp4']
    # closing without frames saves nothing and leaves nothing behind
    with pytest.raises(ValueError, match='no frames'):
        with VideoWriter(tmp_path / 'empty.mp4', fps=25):
            pass
    assert sorted(os.listdir(tmp_path)) == ['result.mp4']
    # success replaces the old file; missing folders are created
    write_video(final, video[:, :4], 25)
    write_video(tmp_path / 'new' / 'dir' / 'clip.mp4', video[:, :4], 25)
    assert probe_video(final).num_frames == 4 and probe_video(tmp_path / 'new' / 'dir' / 'clip.mp4').num_frames == 4
    with pytest.raises(ValueError, match='cannot write'):
        VideoWriter(tmp_path / 'clip.gif', fps=25)


def test_odd_size_writing(tmp_path, carphone16):
    odd = carphone16[0][:, :6, :143, :175]
    for name, kwargs in [('odd.mp4', {}), ('odd444.mp4', dict(pix_fmt='yuv444p'))]:  # VP9 4:2:0, H.264 4:4:4
        write_video(tmp_path / name, odd, 25, **kwargs)
        back, info = read_video(tmp_path / name)
        assert back.shape == odd.shape and (info.height, info.width) == (143, 175) and psnr(back, odd) > 30


def test_to_uint8():
    v = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 5)
    out = to_uint8(v)
    assert out.shape == (1, 1, 5, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255] and (out[..., 0] == out[..., 2]).all()
    with pytest.raises(ValueError, match='C, T, H, W'):
        to_uint8(torch.zeros(3, 4, 4))


# ---------------------------------------------------------------------------------------------------------------
# Geometry

def test_pad_and_unpad_odd_size_exactly(carphone16):
    video = carphone16[0]  # 144 x 176
    padded, pad = pad_to_multiple(video, 32)
    assert padded.shape == (3, 16, 160, 192) and pad == (8, 8, 8, 8)
    assert torch.equal(unpad(padded, pad), video)
    assert torch.equal(padded[..., :8, 8:-8], video[..., :1, :].expand(-1, -1, 8, -1))  # replicate, not zeros
    odd = video[..., :143, :175]
    padded, pad = pad_to_multiple(odd, 32)
    assert padded.shape[-2:] == (160, 192) and pad == (8, 9, 8, 9)  # top/left get the floor
    assert torch.equal(unpad(padded, pad), odd)
    batch = torch.stack([odd, odd.flip(-1)])  # (B, C, T, H, W) works too
    padded, pad = pad_to_multiple(batch, 32)
    assert padded.shape == (2, 3, 16, 160, 192) and torch.equal(unpad(padded, pad), batch)
    same, pad = pad_to_multiple(video[..., :128, :160], 32)
    assert pad == (0, 0, 0, 0) and same.shape[-2:] == (128, 160)


def test_resize_short_side(carphone16):
    video = carphone16[0]
    assert resize_short_side(video, 0) is video
    small = resize_short_side(video, 64)
    assert small.shape == (3, 16, 64, 78)  # 176 * 64 / 144 = 78.2
    assert small.min() >= -1 and small.max() <= 1
    assert torch.allclose(small.mean(), video.mean(), atol=0.01)
    flat = torch.full((3, 2, 100, 60), 0.25)
    assert torch.allclose(resize_short_side(flat, 30), torch.full((3, 2, 50, 30), 0.25))
    # antialiased: a 1-pixel checkerboard averages out instead of aliasing
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None]) % 2 * 2.0 - 1
    down = resize_short_side(checker.expand(3, 1, 64, 64), 16)
    assert down.abs().max() < 0.1


def test_center_crop(carphone16):
    video = carphone16[0]
    crop = center_crop(video, 128, 128)
    assert crop.shape == (3, 16, 128, 128) and torch.equal(crop, video[..., 8:136, 24:152])
    with pytest.raises(ValueError, match='at least'):
        center_crop(video, 160, 160)


# ---------------------------------------------------------------------------------------------------------------
# Comparisons

def test_side_by_side(carphone16):
    a = carphone16[0][:, :4]
    b = resize_short_side(a, 72)  # other size: resized to the first panel's height
    out = side_by_side([a, b, a], ['input', 'half size', ''])
    assert out.shape == (3, 4, 144, 3 * 176)
    assert torch.equal(out[..., 352:], a)                                   # no label: panel untouched
    assert torch.equal(out[..., 100:, :176], a[..., 100:, :])               # the label stays top-left
    corner = out[..., 2:12, 2:40]
    assert not torch.equal(corner, a[..., 2:12, 2:40]) and corner.mean() < a[..., 2:12, 2:40].mean()  # dark box
    assert out[..., 2:20, 2:40].max() > 0.9                                 # white text
    assert (out[..., 176:352] - a).abs().mean() < 0.1                       # resized panel resembles the input
    with pytest.raises(ValueError, match='frame count'):
        side_by_side([a, a[:, :2]], ['a', 'b'])
    with pytest.raises(ValueError, match='labels'):
        side_by_side([a, a], ['a'])


def test_write_grid_png(tmp_path, carphone16):
    video = carphone16[0]
    path = tmp_path / 'grid.png'
    write_grid_png(path, [video, video.flip(-1)[:, :3]], ['input', 'flipped'], num_frames=4)
    img = np.asarray(Image.open(path))
    assert img.shape == (2 * 144, 4 * 176, 3)
    assert (img[144:, 3 * 176:] == 0).all()  # second clip has 3 frames: 3 columns, black after
    ref = to_uint8(video[:, 15:16])[0]       # last column of row 1 = the last frame
    assert np.abs(img[:144, 3 * 176:].astype(int) - ref).max() <= 1
    assert os.listdir(tmp_path) == ['grid.png']


# ---------------------------------------------------------------------------------------------------------------
# Listing

def test_list_videos(tmp_path):
    for name in ['b.mp4', 'A.MOV', 'c.webm', 'd.avi', 'e.mkv', 'notes.txt', '.hidden.mp4', 'frame.png']:
        (tmp_path / name).write_bytes(b'x')
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'sub' / 'f.mp4').write_bytes(b'x')
    names = [os.path.basename(p) for p in list_videos(tmp_path)]
    assert names == ['A.MOV', 'b.mp4', 'c.webm', 'd.avi', 'e.mkv']
    assert list_videos(tmp_path / 'b.mp4') == [str(tmp_path / 'b.mp4')]
    with pytest.raises(VideoReadError) as e:
        list_videos(tmp_path / 'nope')
    assert str(e.value).startswith(f"{tmp_path / 'nope'}: no such file or folder")
    with pytest.raises(VideoReadError) as e:
        list_videos(tmp_path / 'sub' / '..' / 'sub' / 'empty_dir_does_not_exist')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(VideoReadError) as e:
        list_videos(tmp_path / 'empty')
    assert str(tmp_path / 'empty') in str(e.value) and 'no video files' in str(e.value)
