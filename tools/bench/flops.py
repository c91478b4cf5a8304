"""Analytic FLOPs of the refiner DiT (one forward, one windowed sampler step, a reconstruction) and `flops`."""
import inspect

from models.attention import attention_windows
from models.dit import VideoDiT
from models.tiling import frame_window_starts, tile_starts
from tools.bench.measure import RELEASED, add_config_args, load_cfg, print_table, write_json
from tools.video.frames import MULTIPLE

FLOP_PARTS = ('linear', 'attention_full', 'attention_grid', 'embed_final', 'timestep')


def _model_args(model_cfg):
    """VideoDiT's keyword arguments: its defaults updated by the config's `model` dict."""
    args = {k: p.default for k, p in inspect.signature(VideoDiT).parameters.items()
            if p.default is not inspect.Parameter.empty}
    args.update(dict(model_cfg))
    return args


def _sum_window_squares(grid, window):
    """Σ over the attention windows of (tokens per window)²: a product over the axes (windows are boxes).

    Along an axis of n tokens grid attention uses n // w windows of w tokens and one of n mod w (None: w = n;
    models/attention.py grid_attention).
    """
    total = 1
    for n, w in zip(grid, window):
        w = n if w is None else min(w, n)
        total *= n // w * w * w + (n % w) ** 2
    return total


def dit_flops(model_cfg, frames, height, width, batch=1):
    """FLOPs of one DiT forward on a (frames, height, width) latent, by part (a multiply-add is 2 FLOPs).

    Per layer: linear 2·N·(D·3D + D·D + 2·D·D_mlp) (qkv, proj, fc1, fc2); attention 4·D·Σ_w n_w² over its
    windows of n_w tokens (q·kᵀ and weights·v, 2·n_w²·D each). Patch embedding, final layer and timestep MLP
    are counted; softmax, norms, modulation and other element-wise work (O(N·D), O(n²·heads)) are not.
    """
    m = _model_args(model_cfg)
    D, p, C_in = m['hidden_size'], m['patch_size'], m['in_channels']
    C_out = 8 if m['learn_sigma'] else 4
    D_mlp = int(D * m['mlp_ratio'])
    strides = m['attn_strides'] or [None] * m['depth']
    grid = (frames, height // p, width // p)
    N = grid[0] * grid[1] * grid[2]
    windows = attention_windows(strides, m['lats_per_vid'], m['input_size'] // p)
    linear = 2 * N * (D * 3 * D + D * D + 2 * D * D_mlp) * len(strides)
    full = grid_ = 0
    for s, window in zip(strides, windows):
        flops = 4 * D * _sum_window_squares(grid, window)
        if s is None:
            full += flops
        else:
            grid_ += flops
    embed = 2 * N * (C_in * p * p) * D + 2 * N * D * (p * p * C_out)
    timestep = 2 * (256 * D + D * D + D * 6 * D)
    parts = dict(linear=linear, attention_full=full, attention_grid=grid_, embed_final=embed, timestep=timestep)
    out = {k: parts[k] * batch for k in FLOP_PARTS}
    out['total'] = sum(out.values())
    out['tokens'] = N * batch
    return out


def windowed_flops(model_cfg, frames, height, width):
    """FLOPs of one forward_windowed call (temporal windows × spatial tiles) on a (frames, H, W) latent."""
    m = _model_args(model_cfg)
    p, S, L = m['patch_size'], m['input_size'], m['lats_per_vid']
    Hp = height + ((-height) % p if height < S else 0)
    Wp = width + ((-width) % p if width < S else 0)
    tiles = len(tile_starts(Hp, S)) * len(tile_starts(Wp, S))
    th, tw = min(S, Hp), min(S, Wp)
    total = dict(linear=0, attention_full=0, attention_grid=0, embed_final=0, tokens=0)
    starts = frame_window_starts(frames, L)
    for s in starts:
        one = dit_flops(model_cfg, min(s + L, frames) - s, th, tw, batch=tiles)
        for k in total:
            total[k] += one[k]
    total['timestep'] = dit_flops(model_cfg, 1, p, p)['timestep']      # the conditioning runs once per call
    total['total'] = sum(total[k] for k in FLOP_PARTS)
    total['forward_calls'] = len(starts) * tiles          # tile forwards (one batched call per window)
    return total


def recon_flops(cfg, frames, height, width, steps):
    """DiT FLOPs of reconstructing `frames` of height×width video: per sampler step and for all steps."""
    sr = int(cfg.sr_scale)
    h, w = -(-height // MULTIPLE) * sr, -(-width // MULTIPLE) * sr        # the DiT's latent (padded to 32)
    step = windowed_flops(cfg.model, frames, h, w)
    return dict(latent=[frames, h, w], per_step=step, steps=steps, total=step['total'] * steps)


# ---- flops --------------------------------------------------------------------------------------------
def bench_flops(args):
    """Analytic FLOPs of the DiT for a config and video size: one tile forward, one sampler step, all steps."""
    cfg = load_cfg(args)
    width = args.width or args.size
    frames = args.frames or cfg.data.num_frames_per_video
    steps = args.steps or cfg.sampling.steps
    r = recon_flops(cfg, frames, args.size, width, steps)
    rows = []
    for k in FLOP_PARTS + ('total',):
        rows.append(dict(part=k, tflop_per_step=r['per_step'][k] / 1e12, tflop_all_steps=r['per_step'][k] * steps / 1e12,
                         share=r['per_step'][k] / r['per_step']['total']))
    print(f"{cfg.config_path}: {frames}x{args.size}x{width} video -> DiT latent {r['latent']}, "
          f"{r['per_step']['forward_calls']} tile forwards per step, {steps} steps")
    print_table(rows, ['part', 'tflop_per_step', 'tflop_all_steps', 'share'])
    if args.tflops:
        print(f"at {args.tflops} TFLOP/s: {r['total'] / args.tflops / 1e12:.3g} s of DiT for all steps")
    record = dict(benchmark='flops', config=cfg.config_path, cfg_options=args.cfg_options, frames=frames,
                  height=args.size, width=width, **r)
    write_json(args.json, record)
    return record


def add_flops_parser(subparsers):
    p = subparsers.add_parser('flops', help='analytic DiT FLOPs for a config and size', description=bench_flops.__doc__)
    add_config_args(p, default_config=RELEASED)
    p.add_argument('--frames', type=int, default=None, help='video frames (default: data.num_frames_per_video)')
    p.add_argument('--size', type=int, default=1024, help='video height (and width unless --width) in pixels')
    p.add_argument('--width', type=int, default=None)
    p.add_argument('--steps', type=int, default=None, help='sampler steps (default: sampling.steps)')
    p.add_argument('--tflops', type=float, default=None, help='also print the DiT time at this rate')
    p.add_argument('--json', default=None, metavar='OUT')
    p.set_defaults(func=bench_flops)

