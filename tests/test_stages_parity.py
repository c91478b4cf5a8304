"""Parity of the compressor (with its input normalisation) and the previewer with the original modules.

The golden file (GOLDEN_STAGES_FILE, default ../shared/golden/golden_stages_a.safetensors) stores inputs and
outputs of StableCascade's modules as CascadeV uses them; weights and inputs are rebuilt here from its
`meta` JSON alone (seed, key lists, draw order), so any file made by the same recipe checks the same way.
"""
import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from models.compressor import SemanticCompressor
from models.previewer import Previewer

SHARED = Path(__file__).resolve().parents[2] / 'shared'
GOLDEN = Path(os.environ.get('GOLDEN_STAGES_FILE', SHARED / 'golden' / 'golden_stages_a.safetensors'))
TOL = 1e-4                                  # max |ours - golden| / max |golden|, fp32 CPU

pytestmark = pytest.mark.skipif(not GOLDEN.is_file(), reason=f'{GOLDEN} absent')


def rel_err(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope='module')
def golden():
    with safe_open(str(GOLDEN), 'pt') as f:
        meta = json.loads(f.metadata()['meta'])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, tensors


def draw_state(keys, generator):
    """The recipe: keys in sorted order from one generator; float entries randn * 0.02, except BatchNorm
    running_var = |randn| + 0.5 and running_mean = randn * 0.1; num_batches_tracked left 0."""
    state = {}
    for name, shape in keys:
        if name.endswith('num_batches_tracked'):
            state[name] = torch.zeros(shape, dtype=torch.long)
        elif name.endswith('running_var'):
            state[name] = torch.randn(shape, generator=generator).abs() + 0.5
        elif name.endswith('running_mean'):
            state[name] = torch.randn(shape, generator=generator) * 0.1
        else:
            state[name] = torch.randn(shape, generator=generator) * 0.02
    return state


@pytest.fixture(scope='module')
def modules(golden):
    meta, _ = golden
    compressor, previewer = SemanticCompressor(), Previewer()
    keys = {'effnet': meta['keys']['effnet'], 'previewer': meta['keys']['previewer']}
    for module, name in ((compressor, 'effnet'), (previewer, 'previewer')):
        ours = module.state_dict()
        assert [[k, list(ours[k].shape)] for k in sorted(ours)] == keys[name], f'{name}: key list differs'
        assert [k for k, _ in keys[name]] == sorted(k for k, _ in keys[name])
    g = torch.Generator().manual_seed(meta['seed'])                       # effnet keys first, then previewer
    states = {name: draw_state(keys[name], g) for name in ('effnet', 'previewer')}
    compressor.load_state_dict(states['effnet'], strict=True)
    previewer.load_state_dict(states['previewer'], strict=True)
    return compressor, previewer, states


def test_inputs_regenerate_from_meta(golden):
    meta, t = golden
    dims = dict(re.findall(r'(\w)=(\d+)', meta['layouts']['video']))
    shape = tuple(int(dims[k]) for k in 'BCTHW')
    torch.manual_seed(meta['seed'] + 100)
    video = torch.rand(shape) * 2 - 1
    previewer_in = torch.randn(t['previewer_in'].shape)
    assert torch.equal(video, t['video']) and torch.equal(previewer_in, t['previewer_in'])


@pytest.mark.parametrize('chunk_size', [1, 8])
def test_compressor_matches_golden(golden, modules, chunk_size):
    _, t = golden
    compressor = modules[0]
    latent = compressor.encode(t['video'], chunk_size=chunk_size)        # includes [-1,1] -> ImageNet norm
    assert latent.shape == t['effnet_latent'].shape
    err = rel_err(latent, t['effnet_latent'])
    print(f'effnet_latent rel err (chunk {chunk_size}): {err:.2e}')
    assert err <= TOL


def test_previewer_matches_golden(golden, modules):
    _, t = golden
    previewer = modules[1]
    with torch.no_grad():
        out = previewer(t['previewer_in'])
    assert out.shape == t['previewer_out'].shape
    err = rel_err(out, t['previewer_out'])
    print(f'previewer_out rel err: {err:.2e}')
    assert err <= TOL
    # decode() is the same network on (B, 16, T, h, w), mapped from [0, 1] to [-1, 1]
    latent = t['previewer_in'].transpose(0, 1)[None]
    decoded = previewer.decode(latent, chunk_size=2)[0].transpose(0, 1)
    assert rel_err((decoded + 1) / 2, t['previewer_out']) <= TOL


def test_golden_weights_load_through_build(golden, modules, tmp_path):
    """The same weights saved as released files load strict through models.weights and give the golden output."""
    from models.weights import build_compressor, build_previewer
    from tools.config import load_config
    _, t = golden
    _, _, states = modules
    save_file(states['effnet'], str(tmp_path / 'effnet.safetensors'))
    save_file(states['previewer'], str(tmp_path / 'previewer.safetensors'))
    cfg = load_config(str(Path(__file__).resolve().parents[1] / 'configs' / 'tiny.py'),
                      {'random_init': False, 'weights.compressor': str(tmp_path / 'effnet.safetensors'),
                       'weights.previewer': str(tmp_path / 'previewer.safetensors')})
    assert rel_err(build_compressor(cfg).encode(t['video']), t['effnet_latent']) <= TOL
    with torch.no_grad():
        assert rel_err(build_previewer(cfg)(t['previewer_in']), t['previewer_out']) <= TOL
