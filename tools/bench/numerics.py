"""`numerics`: bf16 / fp16 autocast against fp32, on the golden inputs and on a released-size random-init forward."""
import json
from pathlib import Path

import torch
from einops import rearrange
from safetensors import safe_open

from models.dit import VideoDiT, init_random_weights_
from tools.bench.measure import (GOLDEN_FILE, RELEASED, add_config_args, add_run_args, autocast_for, diff_stats,
                                 environment, load_cfg, print_table, setup_device, write_json)


def _golden_case(path):
    """(model kwargs, seed, x (B, C, T, H, W), t (B,), y3d) rebuilt from a golden file as the parity tests do."""
    with safe_open(str(path), 'pt') as f:
        meta = json.loads(f.metadata()['meta'])
        x, t, y = (f.get_tensor(k) for k in ('x', 't', 'y3d'))
    kw = dict(meta['model_kwargs'])
    kw.pop('pred_sigma', None)
    kw.pop('drop_path', None)
    kw['fp32_attention'] = 'use_fp32_attention=True' in meta.get('build_call', '')
    L = meta['sizes']['L']
    return kw, meta['seed'], rearrange(x, '(b l) c h w -> b c l h w', l=L), t.reshape(-1, L)[:, 0], \
        rearrange(y, '(b l) c h w -> b c l h w', l=L)


def bench_numerics(args):
    """bf16/fp16 autocast vs fp32: the golden inputs (vs the original's fp32 output) and an XL random-init forward."""
    device = setup_device(args)
    cases = []
    golden = Path(args.golden)
    if golden.is_file():
        kw, seed, x, t, y = _golden_case(golden)
        model = init_random_weights_(VideoDiT(**kw).eval(), seed).to(device)
        cases.append((f'golden {golden.name} y3d', model, x.to(device), t.to(device), y.to(device)))
    else:
        print(f'{golden}: not found, golden case skipped')
    cfg = load_cfg(args)
    model = init_random_weights_(VideoDiT.from_config(cfg.model), cfg.init_seed).to(device).eval()
    frames = args.frames or cfg.model.lats_per_vid
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.model.in_channels, frames, args.grid, args.grid, generator=g).to(device)
    cases.append((f'{Path(cfg.config_path).name} random init {frames}x{args.grid}²', model, x,
                  torch.tensor([500.0], device=device), None))
    rows = []
    for name, model, x, t, golden_y in cases:
        cfg_fp32_attn = model.blocks[0].attn.fp32_attention
        with torch.inference_mode():
            ref = model(x, t)
            if golden_y is not None:
                rows.append(dict(case=name, path='fp32', fp32_attention=cfg_fp32_attn, vs='original fp32',
                                 **diff_stats(ref, golden_y)))
            for dtype in args.dtypes:
                for fp32_attn in sorted({cfg_fp32_attn, False}, reverse=True):
                    for block in model.blocks:
                        block.attn.fp32_attention = fp32_attn
                    with autocast_for(device, dtype):
                        y = model(x, t)
                    rows.append(dict(case=name, path=dtype, fp32_attention=fp32_attn, vs='our fp32',
                                     **diff_stats(y, ref)))
            for block in model.blocks:
                block.attn.fp32_attention = cfg_fp32_attn
    print(f'numerics: output of one DiT forward, {device}; max/mean |diff| and relative to the reference std')
    print_table(rows, ['case', 'path', 'fp32_attention', 'vs', 'max_abs', 'mean_abs', 'max_rel_std', 'mean_rel_std'])
    write_json(args.json, dict(benchmark='numerics', config=cfg.config_path, env=environment(device), rows=rows))
    return rows


def add_numerics_parser(subparsers):
    p = subparsers.add_parser('numerics', help='bf16 vs fp32 differences (golden inputs, XL random init)',
                              description=bench_numerics.__doc__)
    add_config_args(p, default_config=RELEASED)
    p.add_argument('--golden', default=str(GOLDEN_FILE), help='golden file (skipped when absent)')
    p.add_argument('--grid', type=int, default=16, help='latent size of the random-init forward (default 16)')
    p.add_argument('--frames', type=int, default=None, help='frames (default: model.lats_per_vid)')
    p.add_argument('--dtypes', nargs='+', default=['bf16'], choices=['bf16', 'fp16'])
    add_run_args(p)
    p.set_defaults(func=bench_numerics)

