"""The library's per-video loop (tools/recon/reconstruct.py, tools/recon/render.py): stage hooks, one SVD decode stream,
--interp / --upscale, latent names from files, device and dtype resolution (tiny config, random weights, CPU)."""
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from models.pipeline import CascadeV, interpolate_latent
from models.weights import resolve_device, resolve_dtype
from tools.video.frames import FramePlan, plan
from tools.recon.latents import LatentError, load_latent, safe_name, save_latent
from tools.recon.reconstruct import ReconSettings, reconstruct
from tools.recon.records import LatentMeta
from tools.recon.render import output_timing
from tools.video.streaming import rechunk
from tools.video.read import probe_video, read_video
from tools.video.write import to_uint8, write_video

REPO = Path(__file__).resolve().parents[1]
STAGES = {'read', 'compressor', 'dit', 'previewer', 'vae', 'write', 'metrics'}


pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def pipe(repo_root):
    from tools.config import load_config
    cfg = load_config(str(repo_root / 'configs' / 'tiny.py'), ['sampling.steps=1'])
    return CascadeV.from_config(cfg, device='cpu')


@pytest.fixture(scope='module')
def clip(shared_videos, tmp_path_factory):
    """carphone: 6 frames at 64x80 (write_video), 29.97 fps; latent 2x3, SVD latent 8x12 (several DiT tiles)."""
    from tools.video.frames import resize
    frames, info = read_video(shared_videos / 'carphone_pristine.mp4', num_frames=6)
    path = tmp_path_factory.mktemp('clip') / 'clip.mp4'
    write_video(path, resize(frames, 64, 80), info.fps)
    return path


def sha(frames):
    return hashlib.sha256(to_uint8(frames).tobytes()).hexdigest()


def test_stage_hooks_see_every_stage_in_order(pipe, clip, tmp_path):
    seen = []

    class Hook:
        def __init__(self, stage):
            self.stage = stage

        def __enter__(self):
            seen.append(self.stage)

        def __exit__(self, *exc):
            return False
    info = reconstruct(pipe, tmp_path, video=clip, settings=ReconSettings(steps=1), chunk_frames=4, timer=Hook)
    assert set(seen) == STAGES and seen[:2] == ['read', 'compressor'] and seen.index('dit') < seen.index('vae')
    assert seen.count('compressor') == 2 and seen.count('previewer') == 2       # 6 frames in chunks of 4
    assert info['timings'] == {} and info['frames'] == 6
    info = reconstruct(pipe, tmp_path / 'b', video=clip, settings=ReconSettings(steps=1), metrics=False)
    assert set(info['timings']) == STAGES - {'metrics'} and info['metrics'] == {}


@pytest.mark.parametrize('chunk_frames', [2, 3, 16])
def test_svd_decode_is_one_stream_over_the_clip(pipe, clip, tmp_path, monkeypatch, chunk_frames):
    """Any chunk_frames gives the frames of one whole-clip decode (decode_overlap blends across every decoder
    chunk), from one vae_decode_chunks call."""
    assert pipe.vae.decode_overlap > 0
    calls = []
    decode = CascadeV.vae_decode_chunks
    monkeypatch.setattr(CascadeV, 'vae_decode_chunks', lambda self, z, chunk_size=None: calls.append(1) or decode(
        self, z, chunk_size))
    settings = ReconSettings(steps=1)
    info = reconstruct(pipe, tmp_path, video=clip, settings=settings, chunk_frames=chunk_frames, metrics=False)
    assert len(calls) == 1
    latent, meta = load_latent(tmp_path / 'latent.safetensors')
    z = pipe.refine(latent[None], steps=1, seed=42, name='clip')
    whole = pipe._need('vae').decode(z).float().clamp(-1, 1)[0]                   # (3, 6, 64, 96) at once
    assert info['frames_sha256']['rec.mp4'] == sha(meta.plan.to_output(whole))


def test_rechunk_recuts_a_stream_holding_one_chunk_at_most():
    parts = [torch.arange(a, b).view(1, -1) for a, b in ((0, 3), (3, 6), (6, 8))]
    pulled = []
    stream = rechunk((pulled.append(p) or p for p in parts), dim=1)
    got = [stream.take(2) for _ in range(4)]
    assert torch.equal(torch.cat(got, dim=1), torch.arange(8).view(1, -1)) and [g.shape[1] for g in got] == [2] * 4
    assert len(pulled) == 3
    stream = rechunk(iter(parts), dim=1)
    assert stream.take(1).tolist() == [[0]] and len(stream.buffer) == 1              # the rest of chunk 1 only
    assert stream.take(10).tolist() == [list(range(1, 8))]
    with pytest.raises(ValueError, match='ended'):
        stream.take(1)


def test_interpolate_latent_keeps_originals_at_multiples_of_k():
    x = torch.randn(2, 16, 3, 2, 3)
    assert interpolate_latent(x, 1) is x
    y = interpolate_latent(x, 4)
    assert y.shape == (2, 16, 9, 2, 3)                                              # 4·(3−1)+1
    assert torch.equal(y[:, :, ::4], x)
    torch.testing.assert_close(y[:, :, 1], 0.75 * x[:, :, 0] + 0.25 * x[:, :, 1])
    torch.testing.assert_close(y[:, :, 6], 0.5 * x[:, :, 1] + 0.5 * x[:, :, 2])
    with pytest.raises(ValueError, match='integer >= 1'):
        interpolate_latent(x, 0)


def test_interp_1_is_exactly_the_plain_decode(pipe):
    latent = torch.randn(16, 3, 2, 3)
    assert torch.equal(pipe.decode(latent, steps=1, interp=1), pipe.decode(latent, steps=1))
    assert pipe.decode(latent, steps=1, interp=2).shape == (3, 5, 64, 96)


def test_interp_k_outputs_and_frame_times(pipe, clip, tmp_path):
    info = reconstruct(pipe, tmp_path, video=clip, settings=ReconSettings(steps=1, interp=3, num_frames=3),
                       chunk_frames=4)
    assert info['frames'] == 7 and info['fps'] == pytest.approx(3 * 29.97, abs=1e-2)
    for f in ('rec.mp4', 'preview.mp4', 'cmp.mp4'):
        assert probe_video(tmp_path / f).num_frames == 7
    cmp = read_video(tmp_path / 'cmp.mp4')[0][:, :, :, :80]                          # the original's panel
    assert (cmp[:, 0] - cmp[:, 2]).abs().max() < 0.05 < (cmp[:, 2] - cmp[:, 3]).abs().max()   # held, then next
    meta = LatentMeta(name='v', plan=plan(64, 80), source_fps=10.0, times=[0.0, 0.1, 0.3])
    fps, times = output_timing(meta, None, 2)
    assert fps == 20.0 and times == pytest.approx([0.0, 0.05, 0.1, 0.2, 0.3])
    meta = LatentMeta(name='v', plan=plan(64, 80), source_fps=10.0, times=[0.0, 0.1])
    assert output_timing(meta, 12.0, 2, warn=lambda m: None) == (12.0, None)


def test_upscale_outputs_at_the_models_resolution(pipe, clip, tmp_path):
    assert plan(256, 455, size=1024, upscale=True).output == (1024, 1820)
    assert plan(256, 455, size=1024).output == (256, 455)
    p = plan(64, 80, size=128, upscale=True)
    frames = torch.rand(3, 2, 64, 80) * 2 - 1
    assert p.reference(frames).shape == (3, 2, 128, 160) == p.to_output(torch.zeros(3, 2, *p.model)).shape
    assert FramePlan.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    info = reconstruct(pipe, tmp_path, video=clip, settings=ReconSettings(steps=1, size=128, upscale=True,
                                                                          num_frames=2))
    rec = probe_video(tmp_path / 'rec.mp4')
    assert (info['height'], info['width']) == (rec.height, rec.width) == (128, 160)
    assert info['metrics']['refined']['psnr'] > 0


@pytest.mark.parametrize('name', ['../x', '/abs/path', '..', '.', '', 'a\x00b', 'a/b', 'a\\b', None, 7, ' ', ' .. ',
                                  'done.json\u202e', 'a\u200bb', 'a\tb'])
def test_unsafe_names_in_latent_files_are_refused(name, tmp_path):
    with pytest.raises(LatentError, match='not a single safe folder name'):
        safe_name(name, 'f.safetensors')
    meta = LatentMeta(name=name, plan=plan(64, 64))
    save_latent(tmp_path / 'l.safetensors', torch.zeros(16, 1, 2, 2), meta)
    with pytest.raises(LatentError, match=re.escape(f'{tmp_path}/l.safetensors: its metadata names')):
        load_latent(tmp_path / 'l.safetensors')
    assert safe_name('clip 1.mp4', 'f') == 'clip 1.mp4' and safe_name('vidéo-视频', 'f') == 'vidéo-视频'


def test_devices_and_dtypes_resolve_or_fail_in_one_line():
    assert resolve_dtype('auto', 'cpu') == torch.float32 == resolve_dtype(None, 'cpu')
    assert resolve_dtype('bf16') == torch.bfloat16
    with pytest.raises(ValueError, match="device 'gpu7' is unknown; use auto, cpu, cuda or cuda:N"):
        resolve_device('gpu7')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='no CUDA GPU'):
            resolve_device('cuda')
        with pytest.raises(ValueError, match='no CUDA GPU'):
            resolve_device('cuda:1')
    else:
        assert resolve_dtype('auto', 'cuda') == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)


def test_no_library_module_imports_a_cli():
    for folder in ('models', 'diffusion', 'tools'):
        for f in (REPO / folder).rglob('*.py'):
            text = f.read_text()
            assert not re.search(r'^\s*(from (recon|train_vae) |import (recon|train_vae)\b)', text, re.M), f


def test_benchmark_times_the_library_function(pipe, clip, tmp_path, monkeypatch):
    import tools.bench.recon as bench
    import tools.recon.reconstruct as lib
    from tools.bench.recon import run_recon
    calls = []
    real = lib.reconstruct
    monkeypatch.setattr(bench, 'reconstruct', lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    stages, steps, info = run_recon(pipe, str(clip), tmp_path, frames=3, steps=1, chunk_frames=2)
    assert len(calls) == 1 and calls[0]['timer'] is not None and len(steps) == 1
    assert {s['stage'] for s in stages} == STAGES and info['frames'] == 3
    assert probe_video(tmp_path / 'rec.mp4').num_frames == 3


def test_default_timer_waits_for_cuda_at_both_ends(monkeypatch):
    """On CUDA the stage clock reads after torch.cuda.synchronize, so queued kernels count for their stage."""
    import torch

    from tools.recon.reconstruct import _perf_timer
    events = []
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda device=None: events.append(('sync', str(device))))
    timings = {}
    timer = _perf_timer(timings, torch.device('cuda', 0))
    with timer('vae'):
        events.append('work')
    assert events == [('sync', 'cuda:0'), 'work', ('sync', 'cuda:0')] and timings['vae'] >= 0
    events.clear()
    with _perf_timer(timings, torch.device('cpu'))('vae'):
        pass
    assert events == []
