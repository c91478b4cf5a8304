"""Frozen stages (compressor, previewer, SVD VAE) and weight handling, with random weights on CPU."""
import argparse
import hashlib
import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torchvision.models import efficientnet_v2_s

from models.svd_vae import SVDVAE, check_vae_config
from models.tiling import chunk_spans, tiled_apply
from models.weights import (DOWNLOAD_CMD, REPO_ROOT, MissingWeightsError, WeightsFormatError, build_compressor,
                            build_previewer, build_vae, check_weights, convert_pth_to_safetensors, resolve_path)
from tools.config import load_config
from tools.video.frames import plan

SHARED = Path(__file__).resolve().parents[2] / 'shared'
GOLDEN_STAGES = SHARED / 'golden' / 'golden_stages_a.safetensors'
TINY = str(REPO_ROOT / 'configs' / 'tiny.py')
SMALL_VAE = dict(block_out_channels=[32, 32, 32, 32], down_block_types=['DownEncoderBlock2D'] * 4,
                 layers_per_block=1, latent_channels=4)
DOWNLOAD = REPO_ROOT / 'pretrained' / 'download.sh'


@pytest.fixture(scope='module')
def cfg():
    return load_config(TINY, {'vae.config': SMALL_VAE, 'vae.decode_overlap': 0})   # the original's chunks


@pytest.fixture(scope='module')
def compressor(cfg):
    return build_compressor(cfg)                                           # random_init: seeded, calibrated BN


@pytest.fixture(scope='module')
def previewer(cfg):
    return build_previewer(cfg)


@pytest.fixture(scope='module')
def vae(cfg):
    return build_vae(cfg)                                                  # encode_chunk 8, decode_chunk 4


def rel_err(a, b):
    """Max abs difference relative to the reference's max (the parity convention)."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def video(b, t, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


def released_cfg(tmp_path, **weights):
    """tiny config with random_init off and weight paths pointing into tmp_path."""
    names = dict(dit='dit.pth', compressor='effnet_encoder.safetensors', previewer='previewer.safetensors',
                 vae='svd_vae')
    names.update(weights)
    opts = {'random_init': False, 'vae.config': {}}
    opts.update({f'weights.{k}': str(tmp_path / v) for k, v in names.items()})
    return load_config(TINY, opts)


# ---- key names: the released files must load strict -------------------------------------------------

def test_compressor_keys_match_torchvision_and_release(compressor):
    keys = set(compressor.state_dict())
    backbone = {f'backbone.{k}' for k in efficientnet_v2_s(weights=None).features.state_dict()}
    mapper = {'mapper.0.weight', 'mapper.1.running_mean', 'mapper.1.running_var', 'mapper.1.num_batches_tracked'}
    assert keys == backbone | mapper
    assert compressor.state_dict()['mapper.0.weight'].shape == (16, 1280, 1, 1)
    if GOLDEN_STAGES.is_file():
        from safetensors import safe_open
        with safe_open(str(GOLDEN_STAGES), 'pt') as f:
            meta = json.loads(f.metadata()['meta'])
        sd = compressor.state_dict()
        assert [[k, list(sd[k].shape)] for k in sorted(sd)] == meta['keys']['effnet']


def test_previewer_keys(previewer):
    sd = previewer.state_dict()
    assert {k.split('.')[1] for k in sd} == {str(i) for i in (0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 23, 24)}
    assert len(previewer.blocks) == 25 and len(sd) == 58
    assert sd['blocks.0.weight'].shape == (512, 16, 1, 1) and sd['blocks.24.weight'].shape == (3, 128, 1, 1)
    assert sd['blocks.6.weight'].shape == (512, 256, 2, 2)                  # ConvTranspose: (in, out, k, k)
    if GOLDEN_STAGES.is_file():
        from safetensors import safe_open
        with safe_open(str(GOLDEN_STAGES), 'pt') as f:
            meta = json.loads(f.metadata()['meta'])
        assert [[k, list(sd[k].shape)] for k in sorted(sd)] == meta['keys']['previewer']


def test_release_layout_safetensors_load_strict(tmp_path, compressor, previewer):
    """Random weights saved in the released layout load back through build_* with strict key checks."""
    g = torch.Generator().manual_seed(1)
    for module, name in ((compressor, 'effnet_encoder.safetensors'), (previewer, 'previewer.safetensors')):
        state = {k: (torch.randn(v.shape, generator=g) * 0.02 if v.is_floating_point() else v).contiguous()
                 for k, v in module.state_dict().items()}
        for k in state:
            if k.endswith('running_var'):
                state[k] = state[k].abs() + 0.5
        save_file(state, str(tmp_path / name))
    cfg = released_cfg(tmp_path)
    comp, prev = build_compressor(cfg), build_previewer(cfg)
    saved = load_file(str(tmp_path / 'effnet_encoder.safetensors'))
    assert all(torch.equal(comp.state_dict()[k], v) for k, v in saved.items())
    saved = load_file(str(tmp_path / 'previewer.safetensors'))
    assert all(torch.equal(prev.state_dict()[k], v) for k, v in saved.items())
    # a file with the wrong keys is refused with one line naming it
    (tmp_path / 'effnet_encoder.safetensors').unlink()
    shutil.copy(tmp_path / 'previewer.safetensors', tmp_path / 'effnet_encoder.safetensors')
    with pytest.raises(WeightsFormatError, match='effnet_encoder.safetensors: not a StableCascade') as e:
        build_compressor(cfg)
    assert '\n' not in str(e.value)
    (tmp_path / 'effnet_encoder.safetensors').write_bytes(b'truncated')
    with pytest.raises(WeightsFormatError, match='effnet_encoder.safetensors: not a readable safetensors'):
        build_compressor(cfg)
    state = load_file(str(tmp_path / 'previewer.safetensors'))
    state['blocks.0.weight'] = torch.zeros(512, 4, 1, 1)                   # right keys, wrong shape
    save_file(state, str(tmp_path / 'previewer.safetensors'))
    with pytest.raises(WeightsFormatError, match=r'previewer.safetensors: not .*size mismatch.*blocks\.0\.weight'):
        build_previewer(cfg)


# ---- shapes, padding, normalisation -----------------------------------------------------------------

def test_compressor_shapes_and_size_rule(compressor):
    clip = video(1, 8, 256, 320)[0]                                         # (3, 8, 256, 320), no batch dim
    assert compressor.encode(clip).shape == (16, 8, 8, 10)
    assert compressor.encode(video(2, 2, 160, 192)).shape == (2, 16, 2, 5, 6)
    with pytest.raises(ValueError, match=r'SemanticCompressor.encode: frames are 144x176; .*multiples of 32.*plan'):
        compressor.encode(video(2, 2, 144, 176))                            # the frame plan pads, never the stage


def test_compressor_normalisation(compressor):
    frames = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    x = compressor.normalize(frames)[0, :, 0, 0]
    expected = [(0.0 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (1.0 - 0.406) / 0.225]
    torch.testing.assert_close(x, torch.tensor(expected))


def test_previewer_shapes_and_crop(previewer):
    latent = torch.randn(16, 3, 8, 10)
    assert previewer.decode(latent).shape == (3, 3, 64, 80)                 # 8x up: a quarter of 256 x 320
    assert previewer.decode(latent, upsample=True).shape == (3, 3, 256, 320)
    out = previewer.decode(latent[None, :, :, :5, :6], upsample=True)       # latent of a 160 x 192 clip
    assert out.shape == (1, 3, 3, 160, 192)
    full = F.interpolate(previewer(latent[:, :, :5, :6].transpose(0, 1)) * 2 - 1, size=(160, 192),
                         mode='bilinear', align_corners=False)
    torch.testing.assert_close(out[0].transpose(0, 1), full, rtol=0, atol=1e-5)


def test_vae_shapes_sampling_and_crop(vae):
    clip = video(1, 5, 64, 80)
    mean, std = vae.encode_moments(clip)
    assert mean.shape == std.shape == (1, 4, 5, 8, 10) and bool((std > 0).all())
    torch.testing.assert_close(vae.encode(clip), mean)
    z1 = vae.encode(clip, sample=True, generator=torch.Generator().manual_seed(3))
    z2 = vae.encode(clip, sample=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(z1, z2) and not torch.allclose(z1, mean)
    torch.testing.assert_close((z1 - mean) / std, torch.randn(mean.shape, generator=torch.Generator().manual_seed(3)))
    chunks = list(vae.decode_iter(mean))                                    # decode_chunk=4: 4 + 1 frames
    assert [c.shape[2] for c in chunks] == [4, 1]
    assert vae.decode(mean).shape == (1, 3, 5, 64, 80)
    with pytest.raises(ValueError, match=r'SVDVAE.encode: frames are 60x76; .*multiples of 8'):
        vae.encode(video(1, 2, 60, 76))


def test_vae_scale_factor_and_temporal_chunks(vae):
    """decode = diffusers decode of latent / 0.13025 with num_frames = each chunk's length, clips folded."""
    latent = torch.randn(2, 4, 6, 4, 5)
    out = vae.decode(latent)
    for b in range(2):
        for start, k in ((0, 4), (4, 2)):
            z = latent[b, :, start:start + k].transpose(0, 1) / 0.13025     # (k, 4, h, w)
            ref = vae.vae.decode(z, num_frames=k).sample.transpose(0, 1)
            torch.testing.assert_close(out[b, :, start:start + k], ref, rtol=1e-4, atol=1e-5)
    enc = vae.vae.encode(video(1, 3, 32, 40)[0].transpose(0, 1)).latent_dist.mode()
    torch.testing.assert_close(vae.encode(video(1, 3, 32, 40))[0].transpose(0, 1), enc * 0.13025)


def test_chunk_size_invariance(compressor, previewer, vae):
    """Chunk size 1 vs 8 frames: same result within 1e-5 (relative to the output's max), fp32."""
    clip = video(1, 8, 64, 96)
    assert rel_err(compressor.encode(clip, chunk_size=1), compressor.encode(clip, chunk_size=8)) < 1e-5
    latent = torch.randn(1, 16, 8, 2, 3)
    assert rel_err(previewer.decode(latent, chunk_size=1), previewer.decode(latent, chunk_size=8)) < 1e-5
    vae.encode_chunk = 1
    mean1, std1 = vae.encode_moments(clip)
    vae.encode_chunk = 8
    mean8, std8 = vae.encode_moments(clip)
    assert rel_err(mean1, mean8) < 1e-5 and rel_err(std1, std8) < 1e-5


def test_tiled_decode():
    z = torch.randn(2, 4, 20, 27)
    up = lambda t: F.interpolate(t, scale_factor=8, mode='nearest')        # tiling must not change a local map
    torch.testing.assert_close(tiled_apply(up, z, tile=8, overlap=3, scale=8), up(z), rtol=0, atol=1e-6)
    torch.manual_seed(0)
    vae = SVDVAE.from_config(SMALL_VAE, decode_chunk=2)                     # own instance: tiling is changed
    latent = torch.randn(1, 4, 2, 10, 12)
    full = vae.decode(latent)
    vae.tile_size, vae.tile_overlap = 12, 4                                 # one tile covers the latent
    assert torch.equal(vae.decode(latent), full)
    vae.tile_size = 8                                                       # 2 x 2 tiles
    tiled = vae.decode(latent)
    assert tiled.shape == full.shape == (1, 3, 2, 80, 96) and torch.isfinite(tiled).all()


def original_chunked_decode(vae, latent):
    """The original's temporal decode: non-overlapping chunks of decode_chunk frames, the last one shorter."""
    parts = []
    for a in range(0, latent.shape[2], vae.decode_chunk):
        z = latent[0, :, a:a + vae.decode_chunk].transpose(0, 1) / vae.scale_factor     # (k, 4, h, w)
        parts.append(vae.vae.decode(z, num_frames=z.shape[0]).sample.transpose(0, 1))
    return torch.cat(parts, dim=1)[None]


def test_decode_overlap_zero_is_the_original_exactly(vae):
    latent = torch.randn(1, 4, 10, 4, 5)
    assert vae.decode_overlap == 0
    assert torch.equal(vae.decode(latent), original_chunked_decode(vae, latent))
    assert torch.equal(vae.decode(latent, decode_overlap=0), original_chunked_decode(vae, latent))
    assert [c.shape[2] for c in vae.decode_iter(latent)] == [4, 4, 2]


def test_chunk_spans():
    assert chunk_spans(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_spans(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert chunk_spans(9, 4, 1) == [(0, 4), (3, 7), (5, 9)]               # the last chunk flush with the end
    assert chunk_spans(9, 4, 3) == [(a, a + 4) for a in range(6)]
    assert chunk_spans(3, 4, 2) == [(0, 3)] and chunk_spans(4, 4, 1) == [(0, 4)]


class FramewiseVAE(torch.nn.Module):
    """A decoder without temporal mixing (each frame from its own latent): any chunking gives the same frames."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(3.0))                  # FrozenStage reads device/dtype from it

    def decode(self, z, num_frames):
        return argparse.Namespace(sample=F.interpolate(torch.tanh(z[:, :3] * self.gain + z[:, 3:]), scale_factor=8))


def test_decode_overlap_weights_sum_to_one():
    vae = SVDVAE(FramewiseVAE(), decode_chunk=4)
    latent = torch.randn(2, 4, 11, 3, 2)
    plain = vae.decode(latent)
    for overlap in (1, 2, 3):
        parts = list(vae.decode_iter(latent, decode_overlap=overlap))
        assert sum(p.shape[2] for p in parts) == 11
        torch.testing.assert_close(torch.cat(parts, dim=2), plain, rtol=0, atol=1e-6)


def test_decode_overlap_blends_shared_frames(vae):
    """overlap 1: frames seen by one chunk are that chunk's decode; the shared frame is the mean of its two decodes."""
    latent = torch.randn(1, 4, 7, 4, 5)
    out = vae.decode(latent, decode_overlap=1)                              # chunks [0, 4) and [3, 7)
    first = vae.decode(latent[:, :, 0:4], decode_chunk=4)
    second = vae.decode(latent[:, :, 3:7], decode_chunk=4)
    torch.testing.assert_close(out[:, :, :3], first[:, :, :3], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, :, 4:], second[:, :, 1:], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, :, 3], (first[:, :, 3] + second[:, :, 0]) / 2, rtol=0, atol=1e-6)
    assert not torch.allclose(out[:, :, 3], first[:, :, 3], atol=1e-4)      # the two decodes differ: a real blend


def test_decode_overlap_checked(cfg):
    with pytest.raises(ValueError, match=r'cfg.vae.decode_overlap = 4 must be an integer in \[0, decode_chunk = 4\)'):
        SVDVAE(FramewiseVAE(), decode_chunk=4, decode_overlap=4)
    with pytest.raises(ValueError, match='decode_overlap = -1'):
        build_vae(load_config(TINY, {'vae.config': SMALL_VAE, 'vae.decode_overlap': -1}))
    vae = build_vae(load_config(TINY, {'vae.config': SMALL_VAE}))
    assert (vae.decode_chunk, vae.decode_overlap) == (4, 2)                 # the default (README: seams)


# ---- frozen, dtype, device, random init ------------------------------------------------------------

def test_frozen_stages_stay_in_eval(compressor, previewer, vae):
    for stage in (compressor, previewer, vae):
        stage.train()
        assert not any(m.training for m in stage.modules())
        assert not any(p.requires_grad for p in stage.parameters())


def test_dtype_from_config(cfg):
    comp = build_compressor(cfg, device='cpu', dtype='bf16')
    assert {p.dtype for p in comp.parameters()} == {torch.bfloat16}
    assert comp.normalize(torch.zeros(1, 3, 2, 2)).dtype == torch.bfloat16
    assert comp.encode(video(1, 1, 64, 64)).dtype == torch.bfloat16
    prev = build_previewer(cfg, dtype=torch.bfloat16)
    assert prev.decode(torch.randn(1, 16, 1, 2, 2)).dtype == torch.bfloat16
    assert build_vae(cfg, dtype='fp16').vae.dtype == torch.float16


def test_random_init_is_seeded_bounded_and_leaves_global_rng_alone(cfg, compressor, previewer):
    state = torch.get_rng_state()
    again = build_previewer(cfg)
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(x, y) for x, y in zip(again.state_dict().values(), previewer.state_dict().values()))
    other = build_previewer(load_config(TINY, {'vae.config': SMALL_VAE, 'init_seed': 1}))
    assert not torch.equal(other.blocks[0].weight, previewer.blocks[0].weight)
    low = torch.randn(2, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    frames = F.interpolate(low, size=(128, 160), mode='bicubic').clamp(-1, 1)  # smooth, frame-like input
    latent = compressor.encode(frames.transpose(0, 1))
    assert torch.isfinite(latent).all() and 0.01 < latent.std() < 30
    preview = previewer.decode(latent)
    assert torch.isfinite(preview).all() and preview.abs().max() < 1e3


def test_random_stages_are_made_once_per_process_and_handed_out_as_copies(cfg, monkeypatch):
    """A fresh seeded build (its calibration run) and the copy the next build gets are equal bit for bit; a copy
    changed in place does not change the next one."""
    from models import weights
    monkeypatch.setattr(weights, '_RANDOM_STAGES', {})
    first = build_compressor(cfg)
    chunk = cfg.compressor.get('chunk_size', 8)
    assert set(weights._RANDOM_STAGES) == {('compressor', 0, chunk)}
    second = build_compressor(cfg)
    assert all(torch.equal(x, y) for x, y in zip(first.state_dict().values(), second.state_dict().values()))
    assert torch.equal(first.mean, second.mean)                   # non-persistent buffers too
    second.mapper[0].weight.data.zero_()
    assert not torch.equal(build_compressor(cfg).mapper[0].weight, second.mapper[0].weight)
    other = load_config(TINY, {'compressor.chunk_size': chunk + 1})   # its own entry, built with that chunk size
    assert build_compressor(other).chunk_size == chunk + 1
    assert set(weights._RANDOM_STAGES) == {('compressor', 0, chunk), ('compressor', 0, chunk + 1)}


def test_tiny_config_vae_downsamples_8x():
    vae = build_vae(load_config(TINY))
    assert vae.encode(video(1, 2, 64, 64)).shape == (1, 4, 2, 8, 8)
    assert vae.decode_chunk == 4 and vae.scale_factor == 0.13025


def test_bad_vae_config_is_one_clear_line():
    with pytest.raises(ValueError, match='multiples of 32'):
        check_vae_config(dict(block_out_channels=[16, 16, 32, 32], down_block_types=['DownEncoderBlock2D'] * 4))
    with pytest.raises(ValueError, match='8x'):
        check_vae_config(dict(block_out_channels=[32, 32, 32], down_block_types=['DownEncoderBlock2D'] * 3))


# ---- missing weights ---------------------------------------------------------------------------------

def test_missing_weights_error_names_files_and_command(tmp_path):
    cfg = released_cfg(tmp_path)
    with pytest.raises(MissingWeightsError) as e:
        check_weights(cfg)
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError) and '\n' not in msg and DOWNLOAD_CMD in msg
    for name in ('dit.pth', 'effnet_encoder.safetensors', 'previewer.safetensors', 'svd_vae/config.json',
                 'svd_vae/diffusion_pytorch_model.safetensors'):
        assert str(tmp_path / name) in msg
    with pytest.raises(MissingWeightsError, match=r'effnet_encoder\.safetensors \(compressor\)'):
        build_compressor(cfg)
    (tmp_path / 'svd_vae').mkdir()
    (tmp_path / 'svd_vae' / 'config.json').write_text('{}')
    with pytest.raises(MissingWeightsError) as e:
        check_weights(cfg, stages=('vae',))
    assert 'config.json' not in str(e.value) and 'diffusion_pytorch_model.fp16.safetensors' in str(e.value)
    assert check_weights(load_config(TINY)) == {}                           # random_init needs no files


def test_weight_paths_are_relative_to_repo_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path('pretrained/previewer.safetensors') == REPO_ROOT / 'pretrained' / 'previewer.safetensors'
    assert resolve_path(str(tmp_path / 'x')) == tmp_path / 'x'


def test_vae_loads_a_diffusers_folder(tmp_path, vae):
    latent = torch.randn(1, 4, 2, 4, 4)
    vae.vae.save_pretrained(str(tmp_path / 'svd_vae'))                     # config.json + safetensors
    torch.testing.assert_close(build_vae(released_cfg(tmp_path)).decode(latent), vae.decode(latent))
    shutil.rmtree(tmp_path / 'svd_vae')
    vae.vae.save_pretrained(str(tmp_path / 'svd_vae'), variant='fp16')     # only the .fp16 file, as --vae-fp16
    assert (tmp_path / 'svd_vae' / 'diffusion_pytorch_model.fp16.safetensors').is_file()
    torch.testing.assert_close(build_vae(released_cfg(tmp_path)).decode(latent), vae.decode(latent))


def test_config_built_vae_loads_a_state_dict(tmp_path, vae):
    save_file(vae.vae.state_dict(), str(tmp_path / 'small_vae.safetensors'))
    cfg = load_config(TINY, {'random_init': False, 'vae.config': SMALL_VAE,
                             'weights.vae': str(tmp_path / 'small_vae.safetensors')})
    loaded = build_vae(cfg)
    assert all(torch.equal(a, b) for a, b in zip(loaded.vae.state_dict().values(), vae.vae.state_dict().values()))


# ---- checkpoint conversion and download.sh -----------------------------------------------------------

def test_convert_pth_uses_weights_only(tmp_path):
    state = {'a.weight': torch.randn(3, 4), 'b.bias': torch.randn(2)}
    torch.save({'state_dict': state, 'epoch': 3}, tmp_path / 'ok.pth')
    assert convert_pth_to_safetensors(tmp_path / 'ok.pth', tmp_path / 'ok.safetensors') == 2
    out = load_file(str(tmp_path / 'ok.safetensors'))
    assert out.keys() == state.keys() and all(torch.equal(out[k], state[k]) for k in state)
    torch.save({'state_dict': state, 'args': argparse.Namespace(lr=1)}, tmp_path / 'pickled.pth')
    with pytest.raises(WeightsFormatError, match='--allow-pickle'):
        convert_pth_to_safetensors(tmp_path / 'pickled.pth', tmp_path / 'p.safetensors')
    assert not (tmp_path / 'p.safetensors').exists()


def run_download(*args, env=None):
    import os
    return subprocess.run(['bash', str(DOWNLOAD), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_download_dry_run_prints_the_plan(tmp_path):
    r = run_download('--dry-run', '--dir', str(tmp_path), '--method', 'curl')
    assert r.returncode == 0, r.stderr
    plan = {'stabilityai/StableWurst/resolve/main/effnet_encoder.safetensors': 'effnet_encoder.safetensors',
            'stabilityai/StableWurst/resolve/main/previewer.safetensors': 'previewer.safetensors',
            'ByteDance/CascadeV/resolve/main/s1024.effn-f32.pth': 's1024.effn-f32.pth',
            'stabilityai/stable-video-diffusion-img2vid-xt/resolve/main/vae/config.json': 'svd_vae/config.json',
            'stabilityai/stable-video-diffusion-img2vid-xt/resolve/main/vae/diffusion_pytorch_model.safetensors':
                'svd_vae/diffusion_pytorch_model.safetensors'}
    for url, dst in plan.items():
        assert f'https://huggingface.co/{url} -> {tmp_path / dst}' in r.stdout
    assert list(tmp_path.iterdir()) == []                                  # a dry run writes nothing
    r = run_download('--dry-run', '--dir', str(tmp_path), '--only', 'vae', '--vae-fp16')
    assert 'diffusion_pytorch_model.fp16.safetensors' in r.stdout and 'effnet' not in r.stdout
    r = run_download('--only', 'unet')
    assert r.returncode == 2 and "unknown stage 'unet'" in r.stderr and r.stderr.count('\n') == 1
    r = run_download('--frobnicate')
    assert r.returncode == 2 and "'--frobnicate'" in r.stderr


class _HubHandler(BaseHTTPRequestHandler):
    """Serves FILES like huggingface.co/<repo>/resolve/main/<file>: Range requests and X-Linked-* headers."""
    FILES, SHA = {}, {}

    def log_message(self, *args):
        pass

    def _head(self):
        body = self.FILES.get(self.path)
        if body is None:
            self.send_error(404)
            return None, 0
        start = 0
        rng = self.headers.get('Range')
        if rng:
            start = int(rng.split('=')[1].split('-')[0])
        self.send_response(206 if rng else 200)
        self.send_header('Content-Length', str(len(body) - start))
        if rng:
            self.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
        self.send_header('Accept-Ranges', 'bytes')
        self.send_header('X-Linked-Size', str(len(body)))
        sha = self.SHA.get(self.path, hashlib.sha256(body).hexdigest())
        self.send_header('X-Linked-Etag', f'"{sha}"')
        self.send_header('ETag', f'"{sha}"')
        self.send_header('X-Repo-Commit', 'a' * 40)                          # huggingface_hub wants one
        self.end_headers()
        return body, start

    def do_HEAD(self):
        self._head()

    def do_GET(self):
        body, start = self._head()
        if body is not None:
            self.wfile.write(body[start:])


@pytest.fixture
def hub():
    """A local stand-in for huggingface.co serving two small files; yields (env, files)."""
    files = {'/stabilityai/StableWurst/resolve/main/effnet_encoder.safetensors': bytes(range(256)) * 400,
             '/stabilityai/StableWurst/resolve/main/previewer.safetensors': b'previewer-bytes' * 1000}
    _HubHandler.FILES, _HubHandler.SHA = files, {}
    server = ThreadingHTTPServer(('127.0.0.1', 0), _HubHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {'HF_ENDPOINT': f'http://127.0.0.1:{server.server_port}', 'HF_TOKEN': '', 'HF_HUB_OFFLINE': '0',
           'NO_PROXY': '127.0.0.1,localhost', 'no_proxy': '127.0.0.1,localhost'}
    yield env, files
    server.shutdown()


@pytest.mark.parametrize('method', ['curl', 'wget'])
def test_download_resumes_and_checks_sha(tmp_path, hub, method):
    if shutil.which(method) is None:
        pytest.skip(f'{method} not installed')
    env, files = hub
    effnet = files['/stabilityai/StableWurst/resolve/main/effnet_encoder.safetensors']
    previewer = files['/stabilityai/StableWurst/resolve/main/previewer.safetensors']
    (tmp_path / 'effnet_encoder.safetensors.part').write_bytes(effnet[:30000])   # an interrupted download
    r = run_download('--dir', str(tmp_path), '--method', method, '--only', 'compressor,previewer', env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / 'effnet_encoder.safetensors').read_bytes() == effnet
    assert (tmp_path / 'previewer.safetensors').read_bytes() == previewer
    assert 'sha256 checked' in r.stdout and not list(tmp_path.glob('*.part'))
    r = run_download('--dir', str(tmp_path), '--method', method, '--only', 'compressor', env=env)
    assert r.returncode == 0 and 'present' in r.stdout
    # a corrupted transfer never gets the final name
    (tmp_path / 'previewer.safetensors').unlink()
    _HubHandler.SHA = {'/stabilityai/StableWurst/resolve/main/previewer.safetensors': '0' * 64}
    r = run_download('--dir', str(tmp_path), '--method', method, '--only', 'previewer', env=env)
    assert r.returncode == 1 and 'sha256' in r.stderr and not (tmp_path / 'previewer.safetensors').exists()


def test_download_with_huggingface_hub(tmp_path, hub):
    pytest.importorskip('huggingface_hub')
    env, files = hub
    r = run_download('--dir', str(tmp_path), '--method', 'hf', '--only', 'previewer', env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / 'previewer.safetensors').read_bytes() == files[
        '/stabilityai/StableWurst/resolve/main/previewer.safetensors']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['previewer.safetensors']   # no cache left behind


def test_download_convert(tmp_path):
    state = {'x_embedder.proj.weight': torch.randn(4, 20, 2, 2)}
    torch.save({'state_dict': state}, tmp_path / 's1024.effn-f32.pth')
    r = run_download('--dir', str(tmp_path), '--only', 'dit', '--convert', '--method', 'curl')
    assert r.returncode == 0, r.stderr
    out = load_file(str(tmp_path / 's1024.effn-f32.safetensors'))
    assert torch.equal(out['x_embedder.proj.weight'], state['x_embedder.proj.weight'])


# ---- real clips ----------------------------------------------------------------------------------------

@pytest.mark.skipif(not (SHARED / 'videos' / 'carphone_pristine.mp4').is_file(), reason='../shared/videos absent')
def test_real_clip_not_multiple_of_32(compressor, previewer):
    import av
    with av.open(str(SHARED / 'videos' / 'carphone_pristine.mp4')) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(torch.from_numpy(frame.to_ndarray(format='rgb24')))
            if len(frames) == 3:
                break
    clip = torch.stack(frames).permute(3, 0, 1, 2).float() / 127.5 - 1      # (3, 3, 144, 176)
    frame_plan = plan(144, 176)
    latent = compressor.encode(frame_plan.to_model(clip))                   # padded to 160 x 192
    assert latent.shape == (16, 3, 5, 6) and torch.isfinite(latent).all()
    assert frame_plan.to_output(previewer.decode(latent, upsample=True)).shape == (3, 3, 144, 176)
