"""Parity of diffusion/ with the original implementation (../shared/golden, RECIPE.md §6, §7, §11).

Everything is rebuilt from the golden files' `meta`; GOLDEN_FILE / GOLDEN_SAMPLERS_FILE name other files
made by the same recipe. The golden layout folds frames into the batch, video-major ((B·L), C, H, W);
ours is (B, C, T, H, W).
"""
import json
import os
import re
from pathlib import Path

import pytest
import torch
from einops import rearrange
from safetensors import safe_open

from diffusion import create_diffusion
from diffusion.samplers import dpms, get_sampler

SHARED = Path(__file__).resolve().parents[2] / 'shared'
GOLDEN_FILE = Path(os.environ.get('GOLDEN_FILE', SHARED / 'golden' / 'golden_a.safetensors'))
GOLDEN_SAMPLERS_FILE = Path(os.environ.get('GOLDEN_SAMPLERS_FILE', SHARED / 'golden' / 'golden_samplers_a.safetensors'))


def load_golden(path):
    if not path.is_file():
        pytest.skip(f'{path} not found (golden vectors live in ../shared/golden beside the repository)')
    with safe_open(str(path), 'pt') as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()['meta'])


def build_golden_model(meta):
    """The golden DiT: VideoDiT from meta['model_kwargs'] (pred_sigma → learn_sigma, no drop_path), seeded weights."""
    dit = pytest.importorskip('models.dit', reason='models/dit.py (VideoDiT) is not available yet')
    kw = dict(meta['model_kwargs'])
    kw['learn_sigma'] = kw.pop('pred_sigma', kw.get('learn_sigma', True))
    kw.pop('drop_path', None)
    model = dit.VideoDiT(**kw).eval()
    dit.init_random_weights_(model, meta['seed'])
    return model


def unfold(x, frames):
    """((B·L), C, H, W) video-major -> (B, C, L, H, W)."""
    return rearrange(x, '(b t) c h w -> b c t h w', t=frames)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope='module')
def golden():
    return load_golden(GOLDEN_FILE)


@pytest.fixture(scope='module')
def golden_model(golden):
    return build_golden_model(golden[1])


@pytest.fixture(scope='module')
def golden_samplers():
    return load_golden(GOLDEN_SAMPLERS_FILE)


@pytest.fixture(scope='module')
def samplers_model(golden_samplers, golden, golden_model):
    """The samplers file uses the golden_a model recipe; reuse the built model when the recipes agree."""
    meta = golden_samplers[1]
    same = meta['model_kwargs'] == golden[1]['model_kwargs'] and meta['seed'] == golden[1]['seed']
    return golden_model if same else build_golden_model(meta)


# ---- training loss (RECIPE §6), no DiT needed -----------------------------------------------------
def test_loss_terms_match_golden_model_output(golden):
    """Video-mode loss terms from the stored model output: isolates the loss maths from the DiT."""
    g, meta = golden
    L = meta['sizes']['L']
    d = create_diffusion()
    t = g['loss_t'][::L]                                              # one timestep per clip
    assert torch.equal(g['loss_t'], t.repeat_interleave(L))
    x0, x_ref, noise = (unfold(g[k], L) for k in ('loss_x0', 'loss_xref', 'loss_noise'))
    x_t = d.q_sample(x0, t, noise)
    assert (x_t - unfold(g['loss_xt'], L)).abs().max() <= 1e-5

    def replay(x_in, t_model):
        assert torch.equal(t_model, t) and torch.equal(x_in, torch.cat([x_t, x_ref], dim=1))
        return unfold(g['loss_model_out'], L)
    terms = d.training_losses(replay, x0, x_ref, t, noise=noise, reduce='frame')
    for k in ('mse', 'vb', 'loss'):
        assert (terms[k].flatten() - g[f'loss_{k}']).abs().max() <= 1e-4, k


# ---- training loss through the DiT ----------------------------------------------------------------
@pytest.mark.parametrize('mode', ['video', 'image'])
def test_loss_terms_match_golden(golden, golden_model, mode):
    g, meta = golden
    L = meta['sizes']['L']
    prefix = 'loss_' if mode == 'video' else 'loss_img_'
    d = create_diffusion()
    t = g['loss_t'][::L]
    x0, x_ref, noise = (unfold(g[k], L) for k in ('loss_x0', 'loss_xref', 'loss_noise'))
    outs = []

    def model(x_in, t_model, **kw):
        outs.append(golden_model(x_in, t_model, **kw))
        return outs[-1]
    with torch.no_grad():
        terms = d.training_losses(model, x0, x_ref, t, noise=noise, reduce='frame',
                                  model_kwargs=dict(as_images=mode == 'image'))
        per_sample = d.training_losses(lambda x, tt, **kw: outs[0], x0, x_ref, t, noise=noise)
    if mode == 'video':
        assert (outs[0] - unfold(g['loss_model_out'], L)).abs().max() <= 1e-5
    for k in ('mse', 'vb', 'loss'):
        want = g[prefix + k]
        assert (terms[k].flatten() - want).abs().max() <= 1e-4, k             # per frame, as the original
        assert (per_sample[k] - want.view(-1, L).mean(1)).abs().max() <= 1e-4, k   # our default: per clip


# ---- DPM-Solver++ (RECIPE §7) ---------------------------------------------------------------------
@pytest.mark.parametrize('name', ['dpm', 'dpm_slide'])
def test_dpm_solver_matches_golden(golden, golden_model, name):
    g, meta = golden
    args = meta['dpm_args']
    assert (args['skip_type'], args['method']) == ('time_uniform', 'multistep')
    noise, cond = g[f'{name}_noise'], g[f'{name}_cond']
    frames = noise.shape[0]                                           # ONE video of n frames
    seen = []
    eps_model = lambda x_in, t: golden_model.forward_windowed(x_in, t, tile_blend='overwrite')

    def eps_fn(x_in, t):
        seen.append(t)
        return eps_model(x_in, t)
    out = dpms(eps_fn, unfold(noise, frames), unfold(cond, frames), steps=args['steps'], progress=False,
               order=args['order'])
    torch.testing.assert_close(torch.stack(seen)[:, 0], g[f'{name}_model_t'], rtol=0, atol=1e-4)
    err = rel_err(out, unfold(g[f'{name}_out'], frames))
    assert err <= 1e-5, f'{name}_out: max abs error / max = {err:.2e}'


# ---- Euler-ancestral and DDIM through diffusers (RECIPE §11) --------------------------------------
@pytest.mark.parametrize('name', ['eulera', 'ddim'])
def test_diffusers_samplers_match_golden(golden_samplers, samplers_model, name):
    g, meta = golden_samplers
    frames = g['sampler_noise'].shape[0]                              # ONE video of n frames
    offset = int(re.search(r'manual_seed\(SEED\s*\+\s*(\d+)\)', meta['eulera']).group(1))
    seen = []
    eps_model = lambda x_in, t: samplers_model.forward_windowed(x_in, t, tile_blend='overwrite')

    def eps_fn(x_in, t):
        seen.append(t)
        return eps_model(x_in, t)
    sampler = get_sampler({'eulera': 'EulerA', 'ddim': 'DDIM'}[name])
    out = sampler(eps_fn, unfold(g['sampler_noise'], frames), unfold(g['sampler_cond'], frames),
                  len(g[f'{name}_model_t']), torch.Generator().manual_seed(meta['seed'] + offset), False)
    torch.testing.assert_close(torch.stack(seen)[:, 0], g[f'{name}_model_t'], rtol=0, atol=0)
    want = unfold(g[f'{name}_out'], frames)
    if name == 'eulera':
        assert rel_err(out, want) <= 1e-5, f'eulera_out: max abs error / max = {rel_err(out, want):.2e}'
    else:
        assert (out - want).abs().max() <= 1e-4, f'ddim_out: max abs error = {(out - want).abs().max():.2e}'
