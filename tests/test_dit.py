"""Unit tests of models/dit.py on a tiny model: shapes, attention windows, modes, tiling, checkpoints, configs."""
import math
from pathlib import Path

import pytest
import torch
from einops import rearrange

import models.dit as dit
from models.attention import Attention, grid_attention
from models.dit import VideoDiT, init_random_weights_, timestep_frequencies, video_pos_embed
from models.tiling import frame_window_starts, tile_starts, tile_weights_1d
from models.weights import load_dit_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = dict(input_size=8, hidden_size=64, depth=4, num_heads=4, lats_per_vid=4,
            attn_strides=[[1, 2], [2, 1], None, None])


def tiny(seed=0, **kw):
    """Tiny model with seeded random weights (the training init zeroes the output layer)."""
    torch.manual_seed(seed)
    return init_random_weights_(VideoDiT(**{**TINY, **kw}).eval(), seed)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- shapes, names, configs ------------------------------------------------------------------------
@pytest.mark.parametrize('as_images', [False, True])
@pytest.mark.parametrize('shape', [(2, 20, 4, 8, 8), (1, 20, 3, 8, 12), (1, 20, 1, 6, 4), (1, 20, 6, 10, 8)])
def test_forward_shapes(shape, as_images):
    model = tiny()
    with torch.no_grad():
        y = model(rand(*shape), torch.tensor([10, 900][:shape[0]]), as_images=as_images)
    assert y.shape == (shape[0], 8) + shape[2:] and torch.isfinite(y).all()


def test_learn_sigma_false_has_eps_only():
    model = tiny(learn_sigma=False)
    assert model(rand(1, 20, 4, 8, 8), 5).shape == (1, 4, 4, 8, 8)


def test_pixart_parameter_names_and_no_buffers():
    model = VideoDiT(**TINY)
    per_block = ['attn.proj.bias', 'attn.proj.weight', 'attn.qkv.bias', 'attn.qkv.weight', 'mlp.fc1.bias',
                 'mlp.fc1.weight', 'mlp.fc2.bias', 'mlp.fc2.weight', 'scale_shift_table']
    expected = {f'blocks.{i}.{n}' for i in range(4) for n in per_block} | {
        'x_embedder.proj.weight', 'x_embedder.proj.bias', 't_embedder.mlp.0.weight', 't_embedder.mlp.0.bias',
        't_embedder.mlp.2.weight', 't_embedder.mlp.2.bias', 't_block.1.weight', 't_block.1.bias',
        'final_layer.scale_shift_table', 'final_layer.linear.weight', 'final_layer.linear.bias'}
    assert set(model.state_dict()) == expected
    assert list(model.buffers()) == []
    assert model.final_layer.linear.weight.shape == (2 * 2 * 8, 64)


def test_training_init_zeroes_output():
    model = VideoDiT(**TINY)
    assert torch.count_nonzero(model(rand(1, 20, 4, 8, 8), 3)) == 0


def test_dit_from_tiny_config():
    from tools.config import load_config
    cfg = load_config(str(REPO / 'configs' / 'tiny.py'))
    model = VideoDiT.from_config(cfg.model)
    assert (model.input_size, model.lats_per_vid, len(model.blocks)) == (cfg.model.input_size,
                                                                         cfg.model.lats_per_vid, cfg.model.depth)
    assert model(rand(1, 20, 4, 8, 8), 3).shape == (1, 8, 4, 8, 8)
    with pytest.raises(ValueError, match="'dropout'"):
        VideoDiT.from_config({**cfg.model, 'dropout': 0.1})


@pytest.mark.parametrize('kw,match', [
    (dict(attn_strides=[[3, 2], None, None, None]), r'attn_strides\[0\]=\[3, 2\]'),
    (dict(attn_strides=[[1, 3], None, None, None]), 'dividing the token grid 4'),
    (dict(attn_strides=[None, None]), 'has 2 entries but depth is 4'),
    (dict(num_heads=5), 'multiple of num_heads=5'),
    (dict(input_size=9), 'multiple of patch_size'),
    (dict(attn_backend='flash3'), 'attn_backend'),
])
def test_bad_config_one_line_error(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        VideoDiT(**{**TINY, **kw})
    assert '\n' not in str(e.value) and 'models/dit.py' in str(e.value)


def test_bad_input_one_line_errors():
    model = tiny()
    for x, t, match in [(rand(1, 16, 4, 8, 8), 1, r'\(B, 20, T, H, W\)'), (rand(1, 20, 8, 8), 1, 'T, H, W'),
                        (rand(1, 20, 4, 7, 8), 1, 'multiples of patch_size'),
                        (rand(2, 20, 4, 8, 8), torch.ones(8), 'one timestep per clip')]:
        with pytest.raises(ValueError, match=match) as e:
            model(x, t)
        assert '\n' not in str(e.value)
    with pytest.raises(ValueError, match='tile_blend'):
        model.forward_windowed(rand(1, 20, 4, 8, 8), 1, tile_blend='average')


def test_timestep_forms_are_equivalent():
    model = tiny()
    x = rand(2, 20, 4, 8, 8)
    with torch.no_grad():
        ref = model(x, torch.tensor([250.0, 250.0]))
        for t in (250, 250.0, torch.tensor(250), torch.tensor([250]), torch.tensor([250, 250])):
            assert torch.equal(model(x, t), ref)


# ---- embeddings -------------------------------------------------------------------------------------
def test_timestep_frequencies_cos_first():
    t = torch.tensor([0.0, 37.0, 999.0])
    emb = timestep_frequencies(t, 256)
    k = 5
    f = math.exp(-math.log(10000) * k / 128)
    assert torch.allclose(emb[:, k], torch.cos(t * f)) and torch.allclose(emb[:, 128 + k], torch.sin(t * f))
    assert torch.equal(emb[0, :128], torch.ones(128)) and torch.equal(emb[0, 128:], torch.zeros(128))


def test_pos_embed_layout_and_crop_rule():
    d = 1152
    pe = video_pos_embed(3, 4, 5, d, 2.0)                               # (T·h·w, D), frame-major

    def sc(p, dim):
        w = 10000 ** (-torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
        return torch.cat([torch.sin(p * w), torch.cos(p * w)])
    f, i, j = 2, 3, 1
    ref = torch.cat([sc(f, 384), sc(j / 2.0, 384), sc(i / 2.0, 384)]).float()
    assert torch.allclose(pe[f * 20 + i * 5 + j], ref, atol=1e-6)
    # smaller grids are crops of larger ones (positions are absolute token indices)
    big = rearrange(video_pos_embed(4, 6, 6, 64, 1.0), '(t h w) d -> t h w d', t=4, h=6)
    small = rearrange(video_pos_embed(2, 3, 5, 64, 1.0), '(t h w) d -> t h w d', t=2, h=3)
    assert torch.equal(small, big[:2, :3, :5])
    assert dit.pos_embed_split(1152) == (384, 384, 384) and sum(dit.pos_embed_split(64)) == 64


# ---- attention windows ------------------------------------------------------------------------------
def masked_reference(qkv, grid, window, heads):
    """Full attention with a mask allowing only pairs in the same contiguous window (plain math)."""
    t, h, w = torch.meshgrid(*(torch.arange(n) for n in grid), indexing='ij')
    ids = [(c // (n if s is None else s)).flatten() for c, n, s in zip((t, h, w), grid, window)]
    same = (ids[0][:, None] == ids[0][None]) & (ids[1][:, None] == ids[1][None]) & (ids[2][:, None] == ids[2][None])
    q, k, v = rearrange(qkv, 'b n (three h d) -> three b h n d', three=3, h=heads)
    logits = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    out = logits.masked_fill(~same, float('-inf')).softmax(-1) @ v
    return rearrange(out, 'b h n d -> b n (h d)')


@pytest.mark.parametrize('grid,window', [((4, 4, 4), (2, 2, 2)), ((4, 4, 4), (None, None, None)),
                                         ((4, 6, 4), (1, 3, None)), ((3, 5, 6), (2, 2, 4)), ((1, 3, 3), (4, 2, 2))])
def test_grid_attention_matches_masked_reference(grid, window):
    attn = Attention(32, 4)
    qkv = rand(2, math.prod(grid), 96)
    out = grid_attention(qkv, grid, window, attn._attend)
    assert torch.allclose(out, masked_reference(qkv, grid, window, 4), atol=1e-5)


def test_grid_layer_is_contiguous_and_local():
    """One [2, 2] layer: a change in token (0, 0, 0) moves only its window (frames 0-1, tokens 0-1 × 0-1)."""
    model = tiny(depth=1, attn_strides=[[2, 2]])
    x = rand(1, 20, 4, 8, 8)
    x2 = x.clone()
    x2[:, :, 0, 0, 0] += 1.0
    with torch.no_grad():
        diff = (model(x2, 100) - model(x, 100)).abs().amax(dim=(0, 1))   # (T, H, W)
    inside = torch.zeros_like(diff, dtype=torch.bool)
    inside[:2, :4, :4] = True
    assert diff[~inside].max() == 0 and diff[inside].min() > 0


def test_image_mode_keeps_frames_apart_video_mode_does_not():
    model = tiny()
    x = rand(1, 20, 4, 8, 8)
    x2 = x.clone()
    x2[:, :, 1] += 0.5
    with torch.no_grad():
        img = (model(x2, 100, as_images=True) - model(x, 100, as_images=True)).abs().amax(dim=(0, 1, 3, 4))
        vid = (model(x2, 100) - model(x, 100)).abs().amax(dim=(0, 1, 3, 4))
    assert img[[0, 2, 3]].max() == 0 and img[1] > 1e-3
    assert vid[[0, 2, 3]].min() > 1e-6                                   # small: recipe weights are ·0.02


@pytest.mark.parametrize('backend', ['math', 'xformers'])
def test_attention_backends_match_sdpa(backend):
    if backend == 'xformers':
        pytest.importorskip('xformers')
    x, t = rand(2, 20, 4, 8, 8), torch.tensor([3, 700])
    model = tiny()
    with torch.no_grad():
        a = model(x, t)
        b = model.set_attn_backend(backend)(x, t)
    assert (a - b).abs().max() < 1e-5


# ---- training paths ---------------------------------------------------------------------------------
def test_grad_checkpointing_gives_same_gradients():
    x, t = rand(2, 20, 4, 8, 8), torch.tensor([3, 700])
    grads = []
    for ckpt in (False, True):
        model = tiny(grad_checkpointing=ckpt).train()
        model(x, t).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize('fp32_attention', [False, True])
def test_autocast_bf16_with_checkpointing(fp32_attention):
    x, t = rand(1, 20, 4, 8, 8), torch.tensor([300])
    model = tiny(fp32_attention=fp32_attention, grad_checkpointing=True)
    with torch.no_grad():
        ref = model(x, t)
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = model(x, t)
    y.float().square().mean().backward()
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() < 0.05 * ref.abs().max()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# ---- windowed inference -----------------------------------------------------------------------------
def test_window_plans():
    assert frame_window_starts(12, 8) == [0, 4] and frame_window_starts(13, 4) == [0, 2, 4, 6, 8, 9]
    assert frame_window_starts(3, 8) == [0] and frame_window_starts(8, 8) == [0]
    assert tile_starts(24, 16) == [0, 8] and tile_starts(30, 16) == [0, 12, 14] and tile_starts(16, 16) == [0]
    assert tile_starts(35, 8) == [0, 6, 12, 18, 24, 27] and tile_starts(5, 8) == [0]


@pytest.mark.parametrize('starts,tile,size', [((0, 6, 12, 18, 24, 27), 8, 35), ((0, 12, 14), 16, 30),
                                              ((0, 8), 16, 24), ((0, 1), 8, 9), ((0,), 8, 8)])
def test_smooth_tile_weights(starts, tile, size):
    w = tile_weights_1d(starts, tile, size, None, torch.float64)
    total = torch.zeros(size, dtype=torch.float64)
    count = torch.zeros(size)
    for k, s in enumerate(starts):
        total[s:s + tile] += w[k]
        count[s:s + tile] += 1
    assert torch.allclose(total, torch.ones(size, dtype=torch.float64), atol=1e-12) and (w > 0).all()
    assert w[0, 0] == 1 and w[-1, -1] == 1                              # frame borders: full weight
    for k, s in enumerate(starts):                                       # positions with one tile: full weight
        assert torch.all(w[k][count[s:s + tile] == 1] == 1)


class Identity(VideoDiT):
    """Returns its noisy-latent channels: tiling must reconstruct the input."""

    def forward_conditioned(self, x, temb, c6, as_images=False):
        return torch.cat([x[:, :4], x[:, :4]], dim=1)


@pytest.mark.parametrize('blend', ['smooth', 'overwrite'])
@pytest.mark.parametrize('shape', [(2, 20, 13, 21, 35), (1, 20, 1, 8, 8), (1, 20, 3, 5, 7), (1, 20, 9, 8, 30),
                                   (1, 20, 4, 17, 9), (1, 20, 6, 9, 3)])
def test_identity_model_tiling_reconstructs_input(shape, blend):
    model = Identity(**TINY)
    x = rand(*shape)
    y = model.forward_windowed(x, 500.0, tile_blend=blend)
    assert y.shape == (shape[0], 4) + shape[2:]
    assert (y - x[:, :4]).abs().max() < 1e-6


@pytest.mark.parametrize('blend', ['smooth', 'overwrite'])
@pytest.mark.parametrize('shape', [(2, 20, 4, 8, 8), (1, 20, 3, 8, 8), (1, 20, 1, 6, 4), (1, 20, 2, 8, 6)])
def test_tiled_equals_direct_for_one_tile(shape, blend):
    model = tiny()
    x, t = rand(*shape), torch.tensor([20, 600][:shape[0]])
    with torch.no_grad():
        assert torch.equal(model.forward_windowed(x, t, tile_blend=blend), model(x, t)[:, :4])


def reference_overwrite(model, x, t):
    """RECIPE §5 written out plainly: one model call per (window, tile), last tile wins, linear time blend."""
    n, H, W = x.shape[2:]
    L, S = model.lats_per_vid, model.input_size
    z = torch.zeros(x.shape[0], 4, n, H, W)
    prev_end = 0
    for s in frame_window_starts(n, L):
        e = min(s + L, n)
        buf = torch.zeros(x.shape[0], 4, e - s, H, W)
        for r in tile_starts(H, S):
            for c in tile_starts(W, S):
                h, w = min(S, H), min(S, W)
                buf[..., r:r + h, c:c + w] = model(x[:, :, s:e, r:r + h, c:c + w], t)[:, :4]
        ov = prev_end - s
        wts = torch.ones(e - s)
        if ov >= 2:
            wts[:ov] = torch.linspace(0, 1, ov)
        else:
            wts[:] = 1
        wts = wts[:, None, None]
        z[:, :, s:e] = z[:, :, s:e] * (1 - wts) + buf * wts
        prev_end = e
    return z


@pytest.mark.parametrize('n', [1, 3, 13])
def test_windowed_overwrite_matches_plain_reference(n):
    model = tiny()
    x, t = rand(2, 20, n, 10, 12), torch.tensor([40, 800])           # 2×2 tiles
    with torch.no_grad():
        y = model.forward_windowed(x, t, tile_blend='overwrite')
        assert (y - reference_overwrite(model, x, t)).abs().max() < 1e-5
        single = model.forward_windowed(x[1:], t[1:], tile_blend='overwrite')   # batch = clips one by one
        assert (y[1:] - single).abs().max() < 1e-5
        one_at_a_time = model.forward_windowed(x, t, tile_blend='overwrite', tile_batch=1)
        assert (y - one_at_a_time).abs().max() < 1e-5


def test_smooth_differs_from_overwrite_only_in_overlaps():
    model = tiny()
    x = rand(1, 20, 4, 8, 14)                                            # column tiles [0, 6]: overlap 6..7
    with torch.no_grad():
        a = model.forward_windowed(x, 300, tile_blend='smooth')
        b = model.forward_windowed(x, 300, tile_blend='overwrite')
    d = (a - b).abs().amax(dim=(0, 1, 2, 3))                             # (W,)
    assert d[:6].max() < 1e-6 and d[8:].max() < 1e-6 and d[6:8].min() > 1e-4


@pytest.mark.parametrize('n', [1, 3, 13])
def test_windowed_any_length_and_odd_size(n):
    model = tiny()
    with torch.no_grad():
        y = model.forward_windowed(rand(1, 20, n, 11, 5), 123.0)
    assert y.shape == (1, 4, n, 11, 5) and torch.isfinite(y).all()


# ---- weights ----------------------------------------------------------------------------------------
def test_init_random_weights_is_seeded_and_sorted():
    a, b, c = (init_random_weights_(VideoDiT(**TINY), s) for s in (0, 0, 1))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.blocks[0].attn.qkv.weight, c.blocks[0].attn.qkv.weight)
    g = torch.Generator().manual_seed(0)
    first = sorted(a.state_dict())[0]                                    # 'blocks.0.attn.proj.bias'
    assert torch.equal(a.state_dict()[first], torch.randn(a.state_dict()[first].shape, generator=g) * 0.02)


def test_load_checkpoint_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file
    src = tiny(seed=3)
    state = {k: v.clone() for k, v in src.state_dict().items()}
    torch.save({'state_dict': {**state, 'pos_embed': torch.zeros(1, 64, 64)}, 'step': 5}, tmp_path / 'a.pth')
    torch.save(state, tmp_path / 'bare.pth')
    save_file(state, str(tmp_path / 'a.safetensors'))
    for name in ('a.pth', 'bare.pth', 'a.safetensors'):
        dst = load_dit_checkpoint(VideoDiT(**TINY), tmp_path / name)
        assert all(torch.equal(dst.state_dict()[k], v) for k, v in state.items())


def test_load_checkpoint_mismatch_and_missing_file(tmp_path):
    state = tiny().state_dict()
    del state['blocks.3.mlp.fc2.bias']
    state['blocks.0.extra'] = torch.zeros(1)
    state['t_block.1.bias'] = torch.zeros(7)
    torch.save({'state_dict': state}, tmp_path / 'bad.pth')
    with pytest.raises(ValueError) as e:
        load_dit_checkpoint(VideoDiT(**TINY), tmp_path / 'bad.pth')
    msg = str(e.value)
    assert '\n' not in msg and 'bad.pth' in msg
    assert 'missing 1 (blocks.3.mlp.fc2.bias)' in msg and 'unexpected 1 (blocks.0.extra)' in msg
    assert 'shape mismatch 1 (t_block.1.bias)' in msg
    with pytest.raises(FileNotFoundError, match='bash pretrained/download.sh'):
        load_dit_checkpoint(VideoDiT(**TINY), tmp_path / 'absent.pth')


# ---- tools/benchmark.py dit (a smoke test of the tool, not a timing) -------------------------------------
def test_benchmark_dit_writes_rows(tmp_path, monkeypatch):
    import json
    from tools import benchmark
    from tools.bench import measure
    monkeypatch.setattr(measure, 'release_freed_memory_to_os', lambda: False)     # keep pytest's malloc as is
    out = tmp_path / 'dit.json'
    benchmark.main(['dit', '--repeats', '1', '--warmup', '0', '--json', str(out)])
    record = json.loads(out.read_text())
    assert record['params'] == sum(p.numel() for p in tiny().parameters())
    assert [(r['dtype'], r['backend']) for r in record['rows']] == [('fp32', 'sdpa'), ('fp32', 'math'),
                                                                    ('bf16', 'sdpa'), ('bf16', 'math')]
    assert all(r['min_ms'] > 0 for r in record['rows']) and record['rows'][1]['max_abs_diff'] < 1e-5
