"""Videos as people have them: HDR (PQ, HLG), interlaced, raw elementary streams, alpha.

Each input is built here with the ffmpeg that imageio-ffmpeg ships; each test asserts the value the reader must
give (tools/video/read.py, tools/video/convert.py) and, end to end, what recon.py records (tiny config, CPU).
"""
import contextlib
import io
import json
import shutil
import subprocess

import av
import numpy as np
import pytest

import recon
from tools.recon.latents import load_latent
from tools.recon.reconstruct import ReconSettings, output_settings
from tools.video.read import probe_video, read_frames

PQ_WHITE, HLG_WHITE = 573, 721         # 10-bit limited luma of HDR reference white (203 cd/m², BT.2408)
HDR = {'pq': ('smpte2084', PQ_WHITE), 'hlg': ('arib-std-b67', HLG_WHITE)}


def ffmpeg(*args):
    """Run the bundled ffmpeg CLI -> stdout bytes (stderr in the assertion message on failure)."""
    import imageio_ffmpeg
    run = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-v', 'error', '-y', *map(str, args)], capture_output=True)
    assert run.returncode == 0, run.stderr.decode(errors='replace')[-2000:]
    return run.stdout


def cli_rgb(path, h, w, vf='format=rgb24'):
    """What the ffmpeg CLI decodes (through `vf`, ending in rgb24) as uint8 (T, h, w, 3)."""
    raw = ffmpeg('-i', path, '-vf', vf, '-fps_mode', 'passthrough', '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-')
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


def hdr_clip(path, transfer, lum, frames=6, x265=None):
    """64x64 BT.2020 10-bit HDR clip (libx264 high10, or libx265 with `x265` params) with luma `lum` (an
    expression of X and N) and neutral chroma, tagged with `transfer`."""
    trc = HDR[transfer][0]
    src = (f'color=c=black:s=64x64:r=30,format=yuv420p10le,geq=lum={lum}:cb=512:cr=512,setparams=color_primaries='
           f'bt2020:color_trc={trc}:colorspace=bt2020nc:range=tv')
    codec = (['-c:v', 'libx265', '-x265-params', f'log-level=error:{x265}'] if x265 is not None
             else ['-c:v', 'libx264', '-profile:v', 'high10'])
    ffmpeg('-f', 'lavfi', '-i', src, '-frames:v', frames, *codec, '-pix_fmt', 'yuv420p10le', '-color_primaries',
           'bt2020', '-color_trc', trc, '-colorspace', 'bt2020nc', path)
    return path


def interlaced_clip(path, order='tff', frames=6):
    """A 4-px white bar moving 4 px per field at 60 fields/s, woven into 64x64 frames at 30 fps (H.264 PAFF/MBAFF)."""
    ffmpeg('-f', 'lavfi', '-i', "color=c=black:s=64x64:r=60,format=gray,geq=lum='if(between(X-4*N,0,3),255,0)'",
           '-vf', f'format=yuv420p,tinterlace=interleave_{"top" if order == "tff" else "bottom"},setfield={order}',
           '-frames:v', frames, '-c:v', 'libx264', '-flags', '+ildct+ilme', '-x264-params', f'{order}=1', '-r', 30,
           path)
    return path


def comb(frames):
    """Mean over frames of mean |row r - row r+1| minus mean |row r - row r+2| (grey): ~0 for progressive."""
    g = frames.astype(np.float64).mean(-1)
    return float(np.mean(np.abs(g[:, :-1] - g[:, 1:]).mean((1, 2)) - np.abs(g[:, :-2] - g[:, 2:]).mean((1, 2))))


def chunked(path, n, size, stride=1, **kw):
    """read_frames of frames 0, stride, ... (n of them) in chunks of `size` -> (frames, times)."""
    parts = [read_frames(path, num_frames=min(size, n - a), stride=stride, start=a * stride, **kw)
             for a in range(0, n, size)]
    return np.concatenate([p[0] for p in parts]), sum((p[1].times for p in parts), ())


# ---- HDR -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('transfer,stored', [('pq', 146), ('hlg', 189)])
def test_hdr_reference_white_is_tone_mapped_near_sdr_white(transfer, stored, tmp_path):
    path = hdr_clip(tmp_path / f'{transfer}.mp4', transfer, HDR[transfer][1])
    frames, info = read_frames(path)
    assert (info.hdr, info.peak) == (transfer, 1000.0)
    assert 225 <= frames[0, 32, 32, 0] <= 245 and np.ptp(frames[0, 32, 32]) <= 1       # was 146 (PQ) of 255
    assert len(info.notes) == 1 and f'HDR {transfer.upper()} tone-mapped to SDR BT.709' in info.notes[0]
    assert 'tonemap=mobius' in info.notes[0] and '--keep-hdr' in info.notes[0]
    # the same chain run by the ffmpeg CLI on the file itself gives the same frames
    vf = (f'zscale=t=linear:npl=100,format=gbrpf32le,zscale=p=bt709,tonemap=tonemap=mobius:desat=0:peak=10,'
          f'zscale=t=bt709:m=bt709:r=full,format=gbrp,format=rgb24')
    assert np.array_equal(frames, cli_rgb(path, 64, 64, vf))
    kept, kinfo = read_frames(path, keep_hdr=True)
    assert kept[0, 32, 32].tolist() == [stored] * 3 and kinfo.notes == () and kinfo.hdr == transfer
    assert np.array_equal(kept, cli_rgb(path, 64, 64))                       # the code values, as rgb24 gives


def test_tone_mapping_works_frame_by_frame_so_chunks_equal_one_read(tmp_path):
    path = hdr_clip(tmp_path / 'ramp.mp4', 'pq', 'clip(200+X*8+N*40\\,64\\,940)', frames=7)
    whole, info = read_frames(path)
    assert len(np.unique(whole[:, 32, 32, 0])) == 7                          # every frame differs
    for size in (1, 3):
        frames, times = chunked(path, 7, size)
        assert np.array_equal(frames, whole) and times == info.times
    frames, _ = read_frames(path, num_frames=3, stride=2, start=1)
    assert np.array_equal(frames, whole[1::2])


@pytest.mark.parametrize('params,peak', [('max-cll=400,100', 400.0),
                                         ('master-display=G(13250,34500)B(7500,3000)R(34000,16000)'
                                          'WP(15635,16450)L(40000000,50)', 4000.0)])
def test_tone_mapping_peak_comes_from_the_streams_light_level(params, peak, tmp_path):
    """MaxCLL, else the mastering display's maximum (FFmpeg tonemap's order); a lower peak maps white brighter."""
    path = hdr_clip(tmp_path / 'x265.mp4', 'pq', PQ_WHITE, frames=2, x265=params)
    frames, info = read_frames(path)
    assert info.peak == peak and f'peak {peak:g} cd/m²' in info.notes[0]
    assert (frames[0, 32, 32, 0] > 235) == (peak < 1000)


def test_sdr_progressive_file_is_read_bit_for_bit_as_before(carphone):
    frames, info = read_frames(carphone, num_frames=5, stride=2, start=3)
    with av.open(carphone) as c:
        ref = [f.to_ndarray(format='rgb24') for k, f in zip(range(12), c.decode(video=0))][3::2]
    assert np.array_equal(frames, np.stack(ref))
    assert (info.hdr, info.fields, info.alpha, info.fps_assumed, info.notes) == (None, None, None, False, ())
    assert np.array_equal(read_frames(carphone, num_frames=5, stride=2, start=3, keep_hdr=True,
                                      keep_fields=True)[0], frames)


# ---- interlaced ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('order', ['tff', 'bff'])
def test_interlaced_video_is_deinterlaced_one_frame_per_frame(order, tmp_path):
    path = interlaced_clip(tmp_path / f'{order}.mp4', order)
    woven, winfo = read_frames(path, keep_fields=True)
    frames, info = read_frames(path)
    assert info.fields == order and winfo.notes == () and 'deinterlaced with FFmpeg bwdif' in info.notes[0]
    assert abs(comb(woven) - 31.9) < 0.5 and abs(comb(frames)) < 0.5
    assert frames.shape == woven.shape == (6, 64, 64, 3) and info.times == winfo.times     # at the input rate
    assert abs(info.fps - 30) < 1e-6
    x = np.arange(64)
    bar = [(f.mean((0, 2)) * x).sum() / f.mean((0, 2)).sum() for f in frames.astype(np.float64)]
    assert np.allclose(bar, 8 * np.arange(6) + 1.5, atol=0.5)      # each frame shows its first field's bar
    for size, stride in ((1, 1), (2, 1), (4, 1), (1, 2), (2, 3)):             # a frame of context each side
        n = len(range(0, 6, stride))
        got, times = chunked(path, n, size, stride)
        assert np.array_equal(got, frames[::stride]) and times == info.times[::stride], (size, stride)


def test_progressive_file_is_not_taken_for_interlaced(carphone):
    assert probe_video(carphone).fields is None


# ---- raw elementary streams ------------------------------------------------------------------------------

def test_raw_h264_stream_keeps_the_rate_it_states(tmp_path):
    raw = tmp_path / 'cam.h264'
    ffmpeg('-f', 'lavfi', '-i', 'testsrc=s=64x64:r=10', '-frames:v', 8, '-c:v', 'libx264', '-f', 'h264', raw)
    shutil.copy(raw, tmp_path / 'cam.mp4')                                   # as camera tools hand it over
    for path in (raw, tmp_path / 'cam.mp4'):
        frames, info = read_frames(path)
        assert (info.fps, info.num_frames, info.fps_assumed, info.notes) == (10.0, 8, False, ())
        assert np.allclose(info.times, np.arange(8) / 10) and frames.shape == (8, 64, 64, 3)
        assert read_frames(path, num_frames=3, start=4)[1].times == pytest.approx((0.4, 0.5, 0.6))


def test_raw_stream_without_a_rate_says_which_rate_it_assumes(tmp_path):
    path = tmp_path / 'cam.mjpeg'
    ffmpeg('-f', 'lavfi', '-i', 'testsrc=s=64x64:r=10', '-frames:v', 4, '-c:v', 'mjpeg', '-f', 'mjpeg', path)
    info = probe_video(path)
    assert (info.fps, info.fps_assumed) == (25.0, True)
    assert len(info.notes) == 1 and '25 fps assumed' in info.notes[0] and '--fps' in info.notes[0]
    whole, _ = read_frames(path)
    part, pinfo = read_frames(path, num_frames=2, start=2)           # its demuxer cannot seek: decoded from the start
    assert np.array_equal(part, whole[2:]) and pinfo.times == pytest.approx((0.08, 0.12))


# ---- alpha ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('codec', [('-c:v', 'qtrle', '-pix_fmt', 'argb'),
                                   ('-c:v', 'prores_ks', '-profile:v', '4444', '-pix_fmt', 'yuva444p10le')])
def test_alpha_is_dropped_with_one_line(codec, tmp_path):
    """The left half is transparent; the colour stored under it is read (as FFmpeg's rgb24 gives it)."""
    path = tmp_path / 'alpha.mov'
    ffmpeg('-f', 'lavfi', '-i', "color=s=32x32:r=10,format=rgba,geq=r=200:g=50:b=20:a='if(lt(X,16),0,255)'",
           '-frames:v', 3, *codec, path)
    frames, info = read_frames(path)
    assert info.alpha == 0.5 and len(info.notes) == 1 and 'alpha channel dropped (50 %' in info.notes[0]
    assert np.array_equal(frames, cli_rgb(path, 32, 32))
    assert np.abs(frames[:, :, :16].astype(int) - (200, 50, 20)).max() <= 2


# ---- recon.py end to end ------------------------------------------------------------------------------------

def run_recon(repo_root, *args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = recon.main(['--config', str(repo_root / 'configs' / 'tiny.py'), '--device', 'cpu', '--preview-only',
                           '--no-metrics', '--size', '64', *map(str, args)])
    return code, out.getvalue() + err.getvalue()


def test_output_settings_record_the_reader_flags_only_when_set(tiny_cfg):
    base = output_settings(ReconSettings(), tiny_cfg, 'fp32')
    assert not {'keep_hdr', 'keep_fields'} & set(base)                      # as done.json held them before
    assert output_settings(ReconSettings(keep_hdr=True), tiny_cfg, 'fp32') == {**base, 'keep_hdr': True}


def test_recon_records_conversions_and_rate_and_resumes(repo_root, tmp_path, one_torch_thread):
    src = tmp_path / 'in'
    src.mkdir()
    hdr_clip(src / 'hdr.mp4', 'pq', PQ_WHITE, frames=2)
    ffmpeg('-f', 'lavfi', '-i', 'testsrc=s=64x64:r=10', '-frames:v', 3, '-c:v', 'libx264', '-f', 'h264',
           src / 'cam.mp4')
    code, text = run_recon(repo_root, '--input', src, '--output', tmp_path / 'out')
    assert code == 0, text
    assert 'hdr: HDR PQ tone-mapped to SDR BT.709' in text
    hdr = json.loads((tmp_path / 'out' / 'hdr' / 'done.json').read_text())
    cam = json.loads((tmp_path / 'out' / 'cam' / 'done.json').read_text())
    assert len(hdr['source_notes']) == 1 and 'tonemap=mobius' in hdr['source_notes'][0]
    assert 'source_notes' not in cam and cam['fps'] == 10.0 and cam['frames'] == 3
    assert load_latent(tmp_path / 'out' / 'cam' / 'latent.safetensors')[1].source_fps == 10.0
    assert not {'keep_hdr', 'keep_fields'} & set(hdr['settings'])
    code, text = run_recon(repo_root, '--input', src, '--output', tmp_path / 'out')
    assert code == 0 and text.count('skipped') == 2, text
    code, text = run_recon(repo_root, '--input', src / 'hdr.mp4', '--output', tmp_path / 'out', '--keep-hdr')
    assert code == 0 and 'keep_hdr unrecorded -> True' in text and 'tone-mapped' not in text, text
    hdr = json.loads((tmp_path / 'out' / 'hdr' / 'done.json').read_text())
    assert hdr['settings']['keep_hdr'] is True and 'source_notes' not in hdr
