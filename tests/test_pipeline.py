"""models/pipeline.py: the CascadeV Python API (tiny config, random weights, CPU) and windowed DiT inference."""
import hashlib

import pytest
import torch

from models.dit import VideoDiT
from models.pipeline import CascadeV, NonFiniteError, noise_seed, upsample_latent
from models.weights import MissingWeightsError

TINY_OPTS = {}                       # overrides applied to configs/tiny.py in these tests


@pytest.fixture(scope='module')
def cfg(repo_root):
    from tools.config import load_config
    return load_config(str(repo_root / 'configs' / 'tiny.py'), TINY_OPTS)


@pytest.fixture(scope='module')
def pipe(cfg):
    return CascadeV.from_config(cfg, device='cpu', dtype='fp32')


def video(T, H, W, seed=0):
    """A smooth random clip (1, 3, T, H, W) in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, T, max(H // 8, 1), max(W // 8, 1), generator=g) * 2 - 1
    return torch.nn.functional.interpolate(x, size=(T, H, W), mode='trilinear', align_corners=False)


# ---- seeds, conditioning, geometry ----------------------------------------------------------------------

def test_noise_seed_is_stable_sha256_of_seed_and_name():
    expected = int.from_bytes(hashlib.sha256(b'42:carphone').digest()[:8], 'big') & (2 ** 63 - 1)
    assert noise_seed(42, 'carphone') == expected          # no Python hash(): same in every process
    assert noise_seed(42, 'carphone') != noise_seed(43, 'carphone') != noise_seed(42, 'demo')
    assert 0 <= noise_seed(0, '') < 2 ** 63


def test_upsample_latent_is_bilinear_x_sr_times_scale():
    lat = torch.full((2, 16, 3, 2, 5), 2.0)
    ref = upsample_latent(lat, 4, 0.13025)
    assert ref.shape == (2, 16, 3, 8, 20)
    torch.testing.assert_close(ref, torch.full_like(ref, 2.0 * 0.13025))
    lat = torch.randn(1, 16, 2, 3, 4)
    per_frame = torch.nn.functional.interpolate(lat[:, :, 1], scale_factor=4, mode='bilinear', align_corners=False)
    torch.testing.assert_close(upsample_latent(lat, 4, 0.5)[:, :, 1], per_frame * 0.5)


# ---- the API on the tiny config ---------------------------------------------------------------------------

@pytest.mark.parametrize('T', [1, 3, 8, 13])
def test_api_shapes_any_length_non_square(pipe, T):
    x = video(T, 64, 96)
    lat = pipe.encode(x)
    assert lat.shape == (1, 16, T, 2, 3) and lat.dtype == torch.float32
    prev = pipe.preview(lat)
    assert prev.shape == (1, 3, T, 64, 96) and prev.abs().max() <= 1
    rec = pipe.decode(lat, steps=1)
    assert rec.shape == (1, 3, T, 64, 96) and torch.isfinite(rec).all() and rec.abs().max() <= 1


def test_single_clip_without_batch_dim(pipe):
    x = video(2, 32, 64)[0]                                      # (3, T, H, W)
    lat = pipe.encode(x)
    assert lat.shape == (16, 2, 1, 2)
    assert pipe.preview(lat).shape == (3, 2, 32, 64)
    rec = pipe.decode(lat, steps=1, seed=3)
    torch.testing.assert_close(rec, pipe.decode(lat[None], steps=1, seed=3)[0], rtol=0, atol=0)


def test_frames_smaller_than_one_dit_tile(pipe, cfg):
    lat = pipe.encode(video(2, 32, 32))                          # SVD latent 4x4 < the 8x8 DiT tile
    assert cfg.model.input_size > 4
    rec = pipe.decode(lat, steps=1, scheduler='DDIM')
    assert rec.shape == (1, 3, 2, 32, 32) and torch.isfinite(rec).all()


def test_decode_is_seeded_by_seed_and_name(pipe):
    lat = pipe.encode(video(2, 64, 64))
    a = pipe.refine(lat, steps=2, seed=42, name='clip')
    torch.testing.assert_close(a, pipe.refine(lat, steps=2, seed=42, name='clip'), rtol=0, atol=0)
    g = torch.Generator().manual_seed(noise_seed(42, 'clip'))
    torch.testing.assert_close(a, pipe.refine(lat, steps=2, generator=g), rtol=0, atol=0)
    assert not torch.equal(a, pipe.refine(lat, steps=2, seed=42, name='other'))
    assert not torch.equal(a, pipe.refine(lat, steps=2, seed=7, name='clip'))


def test_chunked_vae_decode_equals_whole(pipe):
    """Without overlap (vae.decode_overlap=0), frame ranges that are multiples of decode_chunk decode to the
    same frames as one decode; with overlap only one stream over the whole clip blends across range ends."""
    z = torch.randn(1, 4, 10, 8, 8) * 0.5
    overlap, pipe.vae.decode_overlap = pipe.vae.decode_overlap, 0
    try:
        whole = torch.cat(list(pipe.vae_decode_chunks(z)), dim=2)
        k = pipe.vae.decode_chunk
        parts = torch.cat([torch.cat(list(pipe.vae_decode_chunks(z[:, :, a:a + 2 * k])), dim=2)
                           for a in range(0, 10, 2 * k)], dim=2)
    finally:
        pipe.vae.decode_overlap = overlap
    torch.testing.assert_close(parts, whole, rtol=0, atol=0)


@pytest.mark.parametrize('stage,module,method,expected', [
    ('compressor', 'compressor', 'forward', 'the compressor output'),
    ('previewer', 'previewer', 'forward', 'the previewer output'),
    ('dit', 'dit', 'forward_windowed', r'the DiT sampler \(EulerA\) output'),
    ('vae', 'vae', '_decode_frames', 'the SVD VAE decoder output'),
])
@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_stage_output_names_stage_dtype_and_fix(pipe, cfg, monkeypatch, stage, module, method,
                                                           expected, bad):
    """NaN/inf out of any stage raise one line (stage, dtype, fix) instead of becoming a black or clamped video."""
    target = getattr(pipe, module)
    real = getattr(target, method)
    monkeypatch.setattr(target, method, lambda *a, **k: real(*a, **k) * bad)
    fp16 = CascadeV(cfg, compressor=pipe.compressor, previewer=pipe.previewer, dit=pipe.dit, vae=pipe.vae,
                    dtype='fp16')                     # the label the message names; the stages stay fp32 here
    with pytest.raises(NonFiniteError, match=f'^{expected} holds NaN/inf values under fp16: .*--dtype bf16 or fp32$'):
        lat = fp16.encode(video(2, 32, 32))
        fp16.preview(lat)
        fp16.decode(lat, steps=1)


def test_missing_weights_raise_before_building(cfg, tmp_path):
    real = cfg.copy()
    real.random_init = False
    real.weights = dict(dit=str(tmp_path / 'dit.pth'), compressor=str(tmp_path / 'effnet.safetensors'),
                        previewer=str(tmp_path / 'previewer.safetensors'), vae=str(tmp_path / 'svd_vae'))
    with pytest.raises(MissingWeightsError, match=r'dit\.pth.*bash pretrained/download\.sh'):
        CascadeV.from_config(real)


def test_missing_stage_is_named(pipe, cfg):
    fast = CascadeV(cfg, compressor=pipe.compressor, previewer=pipe.previewer)      # as stages=(...) builds it
    lat = fast.encode(video(1, 32, 32))
    assert fast.preview(lat).shape == (1, 3, 1, 32, 32)
    with pytest.raises(RuntimeError, match='dit stage was not built'):
        fast.decode(lat)


# ---- windowed / tiled DiT inference --------------------------------------------------------------------------

@pytest.fixture(scope='module')
def dit(cfg):
    torch.manual_seed(0)
    return VideoDiT.from_config(cfg.model).eval()


@pytest.fixture
def identity_dit(cfg):
    """A DiT whose per-tile forward returns its input's first 8 channels (ε = the noisy latent)."""
    model = VideoDiT.from_config(cfg.model).eval()
    model.forward_conditioned = lambda x, temb, c6, as_images=False: x[:, :model.out_channels]
    return model


@pytest.mark.parametrize('T', [1, 3, 8, 13])
@pytest.mark.parametrize('hw', [(8, 8), (12, 20), (20, 12), (4, 6), (28, 36)])
@pytest.mark.parametrize('blend', ['smooth', 'overwrite'])
def test_identity_model_tiling_reconstructs_input(identity_dit, T, hw, blend):
    x = torch.randn(2, 20, T, *hw)
    out = identity_dit.forward_windowed(x, torch.tensor([500.0, 20.0]), tile_blend=blend)
    torch.testing.assert_close(out, x[:, :4], rtol=0, atol=1e-6)


def test_tiled_equals_direct_for_one_tile(dit, cfg):
    S, L = cfg.model.input_size, cfg.model.lats_per_vid
    x = torch.randn(1, 20, L, S, S)
    t = torch.tensor([300.0])
    with torch.no_grad():
        torch.testing.assert_close(dit.forward_windowed(x, t), dit(x, t)[:, :4], rtol=0, atol=0)


def test_windowed_matches_direct_on_a_shorter_clip(dit, cfg):
    S = cfg.model.input_size
    x = torch.randn(1, 20, 3, S, S)                    # shorter than one window: one direct call
    with torch.no_grad():
        torch.testing.assert_close(dit.forward_windowed(x, 10.0), dit(x, 10.0)[:, :4], rtol=0, atol=0)
