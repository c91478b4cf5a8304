"""`dit`: one DiT forward across attention backends, precisions, torch.compile and fp32 attention;
`gemm-floor`: the CPU forward against its bare block GEMMs and a plain implementation of the same maths."""
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from einops import rearrange

from models.attention import ATTN_BACKENDS, grid_attention
from models.dit import VideoDiT, init_random_weights_, video_pos_embed
from tools.bench.flops import dit_flops, windowed_flops
from tools.bench.measure import (DTYPES, RELEASED, add_config_args, add_run_args, autocast_for, bf16_peak_tflops,
                                 environment, load_cfg, memory_kind, peak_memory_mib, print_table, setup_device,
                                 time_interleaved, write_json)


@contextmanager
def forward_conditioned_as(model, fn):
    """Inside: the model's per-tile forward is `fn` (e.g. its torch.compile'd version); None = the eager one."""
    if fn is None:
        yield
        return
    model.forward_conditioned = fn
    try:
        yield
    finally:
        del model.forward_conditioned


def compile_dit(model, mode=None, backend='inductor'):
    """torch.compile of the DiT's per-tile forward (what CascadeV.from_config(compile=True) wraps)."""
    return torch.compile(model.forward_conditioned, mode=mode, backend=backend)


def bench_dit(args):
    """Forward time and peak memory of the refiner DiT: attention backends × precisions × compile × fp32_attention."""
    cfg = load_cfg(args)
    device = setup_device(args, exact_cpu_peaks=args.exact_cpu_peak)
    model = init_random_weights_(VideoDiT.from_config(cfg.model), cfg.init_seed).to(device).eval()   # non-zero outputs
    n_params = sum(p.numel() for p in model.parameters())
    frames = args.frames or cfg.model.lats_per_vid
    size = args.grid or [cfg.model.input_size]
    if len(size) > 2:
        raise ValueError(f'--grid {size}: give the latent size as H or H W')
    height, width = size[0], size[-1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, cfg.model.in_channels, frames, height, width, generator=g).to(device)
    t = torch.full((args.batch,), 500.0, device=device)
    what = 'forward_windowed' if args.windowed else 'forward'
    flops = (windowed_flops(cfg.model, frames, height, width)['total'] * args.batch if args.windowed
             else dit_flops(cfg.model, frames, height, width, batch=args.batch)['total'])
    peak_tflops = bf16_peak_tflops(device, args.peak_tflops)
    print(f'{what}: {cfg.config_path} ({n_params / 1e6:.1f}M params), input {tuple(x.shape)}, '
          f'{frames * (height // model.patch_size) * (width // model.patch_size)} tokens per clip, '
          f'{flops / 1e9:.4g} GFLOP per call, device {device}, {torch.get_num_threads()} threads')
    rows, fns = dit_variants(args, cfg, model, x, t, device)
    times = time_interleaved({i: f for i, (f, _) in fns.items()}, device, args.repeats, args.warmup)
    for run, row in fns.values():                       # CPU: only exact when freed memory leaves the RSS
        row['peak_mib'] = peak_memory_mib(run, device) if device.type == 'cuda' or args.exact_cpu_peak else None
    best0 = None
    for i, (_, row) in fns.items():
        median, best = times[i]
        best0 = best0 or best
        row.update(median_ms=round(median, 2), min_ms=round(best, 2), ratio=round(best / best0, 3),
                   tflops=flops / best / 1e9)
        if peak_tflops:
            row['peak_fraction'] = row['tflops'] / peak_tflops
        if row.get('peak_mib') is not None:
            row['peak_mib'] = round(row['peak_mib'], 1)
    print_table(rows, ['dtype', 'backend', 'compile', 'fp32_attention', 'median_ms', 'min_ms', 'ratio', 'tflops',
                       'peak_fraction', 'peak_mib', 'max_abs_diff', 'error'])
    print('ratio (of min_ms: the least disturbed run) and max_abs_diff are relative to the first row; '
          'tflops = analytic FLOPs / min_ms')
    write_json(args.json, dict(benchmark='dit', call=what, config=cfg.config_path, cfg_options=args.cfg_options,
                               params=n_params, input_shape=list(x.shape), flops_per_call=flops,
                               repeats=args.repeats, warmup=args.warmup, env=environment(device),
                               memory_kind=memory_kind(device), rows=rows))
    return rows


def dit_variants(args, cfg, model, x, t, device):
    """One run per --dtypes × --fp32-attention × compile × --backends variant, each called once (which compiles
    the compiled ones); -> (rows, {index: (run, row)} of those that ran). A variant that fails (out of memory,
    xformers missing) keeps a row with its error; max_abs_diff is against the first variant that ran."""
    fp32_attn = {'config': [bool(cfg.model.get('fp32_attention', False))], 'on': [True], 'off': [False],
                 'both': [True, False]}[args.fp32_attention]
    compiled = [False, True] if args.compile else [False]
    compiled_fn = compile_dit(model, args.compile_mode, args.compile_backend) if args.compile else None
    variants = [dict(dtype=d, backend=b, compile=c, fp32_attention=f)
                for d in args.dtypes for f in fp32_attn for c in compiled for b in args.backends]
    rows, fns = [], {}
    for i, v in enumerate(variants):
        def run(v=v):
            model.set_attn_backend(v['backend'])
            for block in model.blocks:
                block.attn.fp32_attention = v['fp32_attention']
            with torch.inference_mode(), autocast_for(device, v['dtype']), \
                    forward_conditioned_as(model, compiled_fn if v['compile'] else None):
                return (model.forward_windowed if args.windowed else model.forward)(x, t)
        row = {k: v[k] for k in v if k in ('dtype', 'backend') or len({w[k] for w in variants}) > 1}
        try:
            out = run().float()                                  # also compiles the compiled variants
        except (RuntimeError, ImportError) as e:                 # e.g. out of memory, xformers missing
            row['error'] = str(e).strip().splitlines()[0][:120]
            rows.append(row)
            continue
        if not fns:
            reference = out
        row['max_abs_diff'] = float(f'{(out - reference).abs().max().item():.3g}')
        rows.append(row)
        fns[i] = (run, row)
    return rows, fns


def add_dit_parser(subparsers):
    p = subparsers.add_parser('dit', help='refiner DiT forward: SDPA vs math, fp32 vs bf16, compile on/off',
                              description=bench_dit.__doc__)
    add_config_args(p)
    p.add_argument('--grid', type=int, nargs='+', default=None, metavar='SIZE',
                   help='latent height [width] in latent pixels (default: model.input_size)')
    p.add_argument('--frames', type=int, default=None, help='frames per clip (default: model.lats_per_vid)')
    p.add_argument('--batch', type=int, default=1, help='clips per call')
    p.add_argument('--windowed', action='store_true', help='time forward_windowed (tiles × windows) instead')
    p.add_argument('--backends', nargs='+', default=['sdpa', 'math'], choices=list(ATTN_BACKENDS))
    p.add_argument('--dtypes', nargs='+', default=['fp32', 'bf16'], choices=list(DTYPES),
                   help='fp32, or autocast to bf16/fp16')
    p.add_argument('--fp32-attention', choices=['config', 'on', 'off', 'both'], default='config',
                   help="attention in fp32 under autocast: as the config says, on, off, or both side by side")
    p.add_argument('--compile', action='store_true', help='add torch.compile rows beside the eager ones')
    p.add_argument('--compile-mode', default=None, help="torch.compile mode, e.g. max-autotune, reduce-overhead")
    p.add_argument('--compile-backend', default='inductor', help="torch.compile backend (inductor, aot_eager)")
    p.add_argument('--peak-tflops', type=float, default=None, help='hardware peak for peak_fraction (default: '
                   'the bf16 dense peak of a known GPU)')
    p.add_argument('--exact-cpu-peak', action='store_true', help='CPU: report peak RSS growth; freed memory then '
                   'goes back to the OS at once, which slows allocation, so the times include that')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--warmup', type=int, default=1)
    add_run_args(p)
    p.set_defaults(func=bench_dit)


# ---- gemm-floor ---------------------------------------------------------------------------------------
def plain_forward(model, x, t):
    """The DiT's maths written plainly (separate ops, softmax attention): the baseline an optimisation must beat."""
    B, _, T, H, W = x.shape
    p = model.patch_size
    grid = (T, H // p, W // p)
    temb = model.t_embedder(torch.full((B,), float(t), device=x.device))
    c6 = model.t_block(temb)
    h = model.x_embedder(x) + video_pos_embed(*grid, model.hidden_size, model.pe_interpolation, x.device)
    for block, window in zip(model.blocks, model.windows):
        m = block.scale_shift_table[None] + c6.reshape(B, 6, -1)
        sh1, sc1, g1, sh2, sc2, g2 = m.chunk(6, dim=1)
        heads = block.attn.num_heads

        def attend(qkv):
            q, k, v = rearrange(qkv, 'b n (three h d) -> three b h n d', three=3, h=heads)
            w = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)
            return rearrange(w @ v, 'b h n d -> b n (h d)')
        a = F.layer_norm(h, (h.shape[-1],), eps=1e-6) * (1 + sc1) + sh1
        a = F.linear(grid_attention(F.linear(a, block.attn.qkv.weight, block.attn.qkv.bias), grid, window, attend),
                     block.attn.proj.weight, block.attn.proj.bias)
        h = h + g1 * a
        a = F.layer_norm(h, (h.shape[-1],), eps=1e-6) * (1 + sc2) + sh2
        a = F.gelu(F.linear(a, block.mlp.fc1.weight, block.mlp.fc1.bias), approximate='tanh')
        h = h + g2 * F.linear(a, block.mlp.fc2.weight, block.mlp.fc2.bias)
    out = model.final_layer(h, temb)
    return rearrange(out, 'b (t h w) (p q c) -> b c t (h p) (w q)', t=T, h=H // p, w=W // p, p=p, q=p)


def block_gemms(model, tokens, batch=1):
    """A function running only the block matmuls (qkv, proj, fc1, fc2 with bias) of the DiT at `tokens` tokens."""
    D = model.hidden_size
    a = torch.randn(batch, tokens, D, device=model.x_embedder.proj.weight.device)
    hidden = torch.randn(batch, tokens, model.blocks[0].mlp.fc1.out_features, device=a.device)

    def run():
        for block in model.blocks:
            F.linear(a, block.attn.qkv.weight, block.attn.qkv.bias)
            F.linear(a, block.attn.proj.weight, block.attn.proj.bias)
            F.linear(a, block.mlp.fc1.weight, block.mlp.fc1.bias)
            F.linear(hidden, block.mlp.fc2.weight, block.mlp.fc2.bias)
    return run


def bench_gemm_floor(args):
    """CPU: DiT forward vs the bare block GEMMs of the same shapes (floor) and vs a plain implementation."""
    cfg = load_cfg(args)
    device = setup_device(args)
    model = init_random_weights_(VideoDiT.from_config(cfg.model), cfg.init_seed).to(device).eval()
    frames = args.frames or cfg.model.lats_per_vid
    lat = args.grid or cfg.model.input_size
    x = torch.randn(1, cfg.model.in_channels, frames, lat, lat, generator=torch.Generator().manual_seed(0)).to(device)
    fl = dit_flops(cfg.model, frames, lat, lat)
    tokens = fl['tokens']
    gemm_flops = fl['linear']
    fns = {'block_gemms': block_gemms(model, tokens)}
    with torch.inference_mode():
        ref = model(x, 500.0)
        diff = (plain_forward(model, x, 500.0) - ref).abs().max().item()
    for backend in ('sdpa', 'math'):
        def fwd(backend=backend):
            model.set_attn_backend(backend)
            return model(x, 500.0)
        fns[f'forward_{backend}'] = fwd
    fns['plain'] = lambda: plain_forward(model, x, 500.0)
    with torch.inference_mode(), autocast_for(device, args.dtype):
        times = time_interleaved(fns, device, args.repeats, args.warmup)
    model.set_attn_backend('sdpa')
    fwd_best = times['forward_sdpa'][1]
    rows = []
    for k, (median, best) in times.items():
        flops = gemm_flops if k == 'block_gemms' else fl['total']
        rows.append(dict(run=k, median_ms=median, min_ms=best, vs_forward=best / fwd_best, gflops=flops / best / 1e6))
    floor_ratio = times['block_gemms'][1] / fwd_best
    print(f"gemm-floor: {cfg.config_path}, latent {frames}x{lat}x{lat} = {tokens} tokens, {args.dtype}, {device}, "
          f"{torch.get_num_threads()} threads; linear {gemm_flops / 1e9:.4g} of {fl['total'] / 1e9:.4g} GFLOP")
    print_table(rows, ['run', 'median_ms', 'min_ms', 'vs_forward', 'gflops'])
    print(f"GEMM floor / forward = {floor_ratio:.3f} (the goal: ≥ 0.8); plain / forward = "
          f"{times['plain'][1] / fwd_best:.3f} (≥ 1: not slower than the plain maths); |plain - forward| = {diff:.2g}")
    record = dict(benchmark='gemm-floor', config=cfg.config_path, cfg_options=args.cfg_options, dtype=args.dtype,
                  latent=[frames, lat, lat], tokens=tokens, flops=fl, env=environment(device), rows=rows,
                  floor_ratio=floor_ratio, plain_ratio=times['plain'][1] / fwd_best, plain_max_abs_diff=diff,
                  repeats=args.repeats)
    write_json(args.json, record)
    return record


def add_gemm_floor_parser(subparsers):
    p = subparsers.add_parser('gemm-floor', help='CPU: DiT forward vs its bare block GEMMs and a plain version',
                              description=bench_gemm_floor.__doc__)
    add_config_args(p, default_config=RELEASED)
    p.add_argument('--grid', type=int, default=16, help='latent height = width (default 16: 8x8 tokens a frame)')
    p.add_argument('--frames', type=int, default=None, help='frames (default: model.lats_per_vid)')
    p.add_argument('--dtype', choices=list(DTYPES), default='fp32')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--warmup', type=int, default=1)
    add_run_args(p)
    p.set_defaults(device='cpu', func=bench_gemm_floor)

