"""Parity of models/dit.py with the original CascadeV DiT (../shared/golden, RECIPE.md §1–5) and the released keys.

The model, weights and inputs are rebuilt from the golden file's `meta` alone, so any golden file made by
the same recipe (set GOLDEN_FILE) is checked the same way. Golden tensors fold frames into the batch,
(B·L, C, H, W) video-major; they are rearranged to our (B, C, T, H, W) layout.
"""
import inspect
import json
import os
import re
from pathlib import Path

import pytest
import torch
from einops import rearrange

from models.dit import VideoDiT, VideoDiT_XL_2, init_random_weights_, video_pos_embed
from models.tiling import frame_window_starts, tile_starts

SHARED = Path(__file__).resolve().parents[2] / 'shared'
GOLDEN_FILE = Path(os.environ.get('GOLDEN_FILE', SHARED / 'golden' / 'golden_a.safetensors'))
XL_KEYS = SHARED / 'golden' / 'xl_keys.txt'
TOL = 1e-4                   # acceptance; measured ~2e-6, the platform's float noise (README)
VIDEO_DIT_ARGS = set(inspect.signature(VideoDiT).parameters)


@pytest.fixture(scope='module')
def golden():
    if not GOLDEN_FILE.is_file():
        pytest.skip(f'{GOLDEN_FILE} not found (../shared absent)')
    from safetensors import safe_open
    with safe_open(str(GOLDEN_FILE), 'pt') as f:
        meta = json.loads(f.metadata()['meta'])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, tensors


def model_kwargs(meta):
    """VideoDiT kwargs from the original's build call: pred_sigma is learn_sigma, drop_path must be 0."""
    kw = dict(meta['model_kwargs'])
    assert kw.pop('pred_sigma', kw.get('learn_sigma')) == kw.get('learn_sigma', True)
    assert kw.pop('drop_path', 0.0) == 0.0, 'drop_path is not supported (inference parity only)'
    unknown = set(kw) - VIDEO_DIT_ARGS
    assert not unknown, f'golden model_kwargs {unknown} have no VideoDiT equivalent'
    call = meta.get('build_call', '')
    kw['fp32_attention'] = 'use_fp32_attention=True' in call
    kw['grad_checkpointing'] = 'use_grad_checkpoint=True' in call
    return kw


@pytest.fixture(scope='module')
def model(golden):
    meta, _ = golden
    torch.manual_seed(1234)              # the recipe overwrites every entry; construction RNG must not matter
    return init_random_weights_(VideoDiT(**model_kwargs(meta)).float().eval(), meta['seed'])


def to_ours(y, frames):
    """(B·L, C, H, W) video-major -> (B, C, L, H, W)."""
    return rearrange(y, '(b l) c h w -> b c l h w', l=frames)


def clip_timesteps(t, frames):
    """Per-frame golden t (B·L,) -> (B,) one per clip; every frame of a clip must share it."""
    t = t.reshape(-1, frames)
    assert (t == t[:, :1]).all(), 'golden t differs within a clip; VideoDiT takes one t per clip'
    return t[:, 0]


def report(name, err):
    print(f'[dit parity] {GOLDEN_FILE.name} {name}: max abs err {err:.3g}')


def test_weight_recipe_keys_and_count(golden, model):
    meta, _ = golden
    sd = model.state_dict()
    assert [[k, list(sd[k].shape)] for k in sorted(sd)] == meta['randomised_keys_in_draw_order']
    assert sum(p.numel() for p in model.parameters()) == meta['n_params']
    assert list(model.buffers()) == [] and meta['buffers'] == []


def test_pos_embed(golden, model):
    meta, g = golden
    if 'dbg_pos_embed' not in g:
        pytest.skip('golden file has no dbg_pos_embed')
    L, grid = meta['sizes']['L'], meta['sizes']['S'] // model.patch_size
    pe = video_pos_embed(L, grid, grid, model.hidden_size, model.pe_interpolation)
    err = (pe - g['dbg_pos_embed'][0]).abs().max().item()
    report('pos_embed', err)
    assert err <= 1e-6


@pytest.mark.parametrize('name,as_images', [('y3d', False), ('yimg', True)])
def test_forward(golden, model, name, as_images):
    meta, g = golden
    L = meta['sizes']['L']
    with torch.no_grad():
        y = model(to_ours(g['x'], L), clip_timesteps(g['t'], L), as_images=as_images)
    assert y.shape == to_ours(g[name], L).shape
    err = (y - to_ours(g[name], L)).abs().max().item()
    report(name, err)
    assert err <= TOL


def test_window_plan_matches_meta(golden, model):
    meta, _ = golden
    sizes, plan = meta['sizes'], meta['slide_windows']
    assert frame_window_starts(sizes['n_sl'], sizes['L']) == plan['frame_starts']
    assert tile_starts(sizes['S_sl'], sizes['S']) == plan['spatial_starts']
    assert round(0.75 * sizes['S']) == plan['spatial_step']


def test_forward_windowed_overwrite(golden, model):
    _, g = golden
    t = g['t_slide']
    assert (t == t[0]).all(), 'golden t_slide differs between frames; forward_windowed takes one t per clip'
    x = rearrange(g['x_slide'], 'n c h w -> 1 c n h w')               # ONE video of n frames
    with torch.no_grad():
        y = model.forward_windowed(x, float(t[0]), tile_blend='overwrite')
    ref = rearrange(g['y_slide'], 'n c h w -> 1 c n h w')
    assert y.shape == ref.shape
    err = (y - ref).abs().max().item()
    report('y_slide', err)
    assert err <= TOL


# ---- the released model: names, shapes and parameter count of xl_keys.txt ----------------------------
def read_xl_keys():
    if not XL_KEYS.is_file():
        pytest.skip(f'{XL_KEYS} not found (../shared absent)')
    shapes, total = {}, None
    for line in XL_KEYS.read_text().splitlines():
        name, rest = line.split('\t', 1)
        if name == 'TOTAL_PARAMS':
            total = int(rest)
        else:
            shape, dtype = rest.split('\t')
            assert dtype == 'torch.float32'
            shapes[name] = tuple(int(v) for v in re.findall(r'\d+', shape))
    return shapes, total


def test_xl_strict_load_and_param_count():
    shapes, total = read_xl_keys()
    with torch.device('meta'):
        model = VideoDiT_XL_2(in_channels=20, input_size=128)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert sum(p.numel() for p in model.parameters()) == total
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    model.load_state_dict(state, strict=True, assign=True)              # really loaded: runs on CPU below
    assert all(p.device.type == 'cpu' for p in model.parameters())
    assert torch.equal(model.blocks[27].mlp.fc2.weight, state['blocks.27.mlp.fc2.weight'])
    with torch.no_grad():
        y = model.eval()(torch.randn(1, 20, 1, 4, 4), torch.tensor([500]))
    assert y.shape == (1, 8, 1, 4, 4) and torch.isfinite(y).all()


def test_released_config_builds_xl_keys():
    shapes, _ = read_xl_keys()
    from tools.config import load_config
    cfg = load_config(str(Path(__file__).resolve().parents[1] / 'configs' / 's1024.effn-f32.py'))
    with torch.device('meta'):
        model = VideoDiT.from_config(cfg.model)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert model.windows[0] == (8, 16, 16) and model.windows[1] == (2, 64, 64) and model.windows[8] == (None,) * 3
