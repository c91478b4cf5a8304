"""`seams`: errors where chunked or tiled inference stitches its pieces, against one whole run on real clips.

vae_temporal: the SVD temporal decoder in chunks of vae.decode_chunk frames (overlap 0 = the original's
non-overlapping chunks; overlap o = chunks sharing o blended frames) against one decode of the whole clip.
dit_tiles: the DiT's spatial tiles (tile_blend overwrite = the original's last-tile-wins, smooth = blended)
against one untiled forward over the whole frame, on one temporal window (so only the tiles differ).
Inputs are real: the clip's frames through the VAE encoder (and the compressor for the DiT's conditioning),
the DiT's noisy latent at t = 500. With random_init every weight is random: see README (seams) for what the
numbers do and do not say.
"""
from pathlib import Path

import torch

from diffusion import create_diffusion
from models.pipeline import upsample_latent
from models.tiling import chunk_spans, tile_starts
from tools.bench.fit import fit_decoder, fit_dit
from tools.bench.measure import (REPO, add_config_args, add_run_args, environment, fmt, load_cfg, print_table,
                                 setup_device, write_json)
from tools.bench.recon import build_pipeline
from tools.video.frames import plan
from tools.video.read import probe_video, read_video

SHARED_VIDEOS = REPO.parent / 'shared' / 'videos'
KEYS = ('boundary_err', 'interior_err', 'jump_err', 'jump_interior')


def _at(n, positions):
    """(n,) bool mask of `positions` (those inside [0, n))."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[[i for i in positions if 0 <= i < n]] = True
    return mask


def _max(d, mask):
    return d[mask.expand_as(d)].max().item() if mask.any() else None


def seam_errors(y, ref, cuts):
    """Errors of y against ref (same shape) where pieces meet: cuts = {axis: [index where a new piece starts]}.

    boundary_err / interior_err: max |y − ref| on the positions either side of a cut (cut − 1, cut) / elsewhere;
    jump_err / jump_interior: max |Δy − Δref| between neighbours across a cut / elsewhere, i.e. a step between
    neighbours that the whole run does not have (what a viewer sees as a seam). Model units; ref_std for scale.
    Without cuts (one piece) the boundary values are None.
    """
    y, ref = y.float(), ref.float()
    d = (y - ref).abs()
    view = lambda axis, m: m.view([-1 if i == axis else 1 for i in range(y.dim())])
    edge = torch.zeros([1] * y.dim(), dtype=torch.bool)
    jump, jump_in = [], []
    for axis, at in cuts.items():
        edge = edge | view(axis, _at(y.shape[axis], [i for c in at for i in (c - 1, c)]))
        dd = (torch.diff(y, dim=axis) - torch.diff(ref, dim=axis)).abs()
        seam = view(axis, _at(dd.shape[axis], [c - 1 for c in at]))
        jump.append(_max(dd, seam))
        jump_in.append(_max(dd, ~seam))
    jump, jump_in = [v for v in jump if v is not None], [v for v in jump_in if v is not None]
    return dict(boundary_err=_max(d, edge), interior_err=_max(d, ~edge), jump_err=max(jump) if jump else None,
                jump_interior=max(jump_in) if jump_in else None, ref_std=ref.std().item())


def vae_seams(vae, video, overlaps):
    """Rows of seam errors of the chunked SVD decode of video (1, 3, T, H, W) per overlap, vs the whole-clip decode."""
    z = vae.encode(video)                                            # (1, 4, T, H/8, W/8), scaled
    T, chunk = z.shape[2], vae.decode_chunk
    whole = vae.decode(z, decode_chunk=T, decode_overlap=0)
    cuts = {2: [a for a, _ in chunk_spans(T, chunk)[1:]]}            # where the original's chunks meet
    rows = []
    for o in overlaps:
        y = vae.decode(z, decode_overlap=o)
        rows.append(dict(part='vae_temporal', setting=f'overlap={o}', overlap=o, frames=T,
                         decoder_calls=len(chunk_spans(T, chunk, o)), **seam_errors(y, whole, cuts)))
    return rows


def dit_seams(pipe, video, t=500.0, seed=0):
    """Rows of seam errors of the DiT's tiled forward (overwrite, smooth) vs its untiled forward on one window."""
    dit = pipe.dit
    video = video[:, :, :dit.lats_per_vid]                           # one temporal window: only tiles differ
    cond = upsample_latent(pipe.encode(video), pipe.sr_scale, pipe.scale_factor)     # (1, 16, L, H/8, W/8)
    z0 = pipe.vae.encode(video.to(pipe.device)).float()
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed)).to(z0.device)
    x_t = create_diffusion().q_sample(z0, torch.tensor([int(t)]), noise)
    x = torch.cat([x_t, cond], dim=1)
    H, W, S = x.shape[-2], x.shape[-1], dit.input_size
    if max(H, W) <= S:
        raise ValueError(f'seams: a {H}x{W} latent fits in one DiT tile of {S}; raise --size above {8 * S} pixels')
    ref = dit.forward(x, t)[:, :4]
    rows_, cols = tile_starts(H, S), tile_starts(W, S)
    cuts = {3: rows_[1:], 4: cols[1:]}                                   # where overwrite switches tiles
    out = []
    for blend in ('overwrite', 'smooth'):
        y = dit.forward_windowed(x, t, tile_blend=blend)
        out.append(dict(part='dit_tiles', setting=blend, latent=[x.shape[2], H, W], tiles=len(rows_) * len(cols),
                        **seam_errors(y, ref, cuts)))
    return out


def _clips(args):
    paths = args.inputs or sorted(str(p) for p in SHARED_VIDEOS.glob('*.mp4'))
    if not paths:
        raise ValueError(f'seams: no clips in {SHARED_VIDEOS}; pass video files with --inputs')
    return paths


def _worst(rows, key, setting):
    values = [r[key] for r in rows if r['setting'] == setting and r[key] is not None]
    return max(values) if values else None


def bench_seams(args):
    """Max error at SVD-decoder chunk boundaries (overlap 0 vs o) and DiT tile seams (overwrite vs smooth)."""
    cfg = load_cfg(args, random_init=True)
    device = setup_device(args)
    pipe = build_pipeline(cfg, device, 'fp32', stages=('compressor', 'vae', 'dit'))
    chunk = pipe.vae.decode_chunk
    overlap = args.overlap or pipe.vae.decode_overlap or 1
    overlaps = sorted({0, overlap, *range(1, chunk)})
    videos = {}
    for path in _clips(args):
        n = min(args.frames, probe_video(path).num_frames)
        frames = read_video(path, num_frames=n)[0]                         # (3, n, H, W) in [-1, 1]
        geom = plan(*frames.shape[-2:], size=args.size)
        videos[Path(path).name] = geom.to_model(frames)[None].to(device)       # (1, 3, n, H_m, W_m)
    fit = None
    if args.fit_steps:                                                     # trained-like weights (tools/bench/fit.py)
        dec = fit_decoder(pipe.vae, list(videos.values()), args.fit_steps)
        dit = fit_dit(pipe, list(videos.values()), args.fit_steps)
        fit = dict(steps=args.fit_steps, decoder_loss_first_last=[dec[0], dec[-1]],
                   dit_loss_first_last=[dit[0], dit[-1]])
    rows = []
    with torch.inference_mode():
        for name, video in videos.items():
            clip = dict(clip=name, model_size=list(video.shape[-2:]))
            rows += [dict(clip, **r) for r in vae_seams(pipe.vae, video, overlaps) + dit_seams(pipe, video)]
    vae_rows = [r for r in rows if r['part'] == 'vae_temporal']
    dit_rows = [r for r in rows if r['part'] == 'dit_tiles']
    none, ovl = 'overlap=0', f'overlap={overlap}'
    vae = dict(decode_chunk=chunk, decode_overlap=overlap, decoder_calls_ratio=(
        sum(r['decoder_calls'] for r in vae_rows if r['setting'] == ovl)
        / sum(r['decoder_calls'] for r in vae_rows if r['setting'] == none)))
    for key in KEYS:
        vae[f'{key}_no_overlap'], vae[f'{key}_overlap'] = _worst(vae_rows, key, none), _worst(vae_rows, key, ovl)
    dit = dict(tile=cfg.model.input_size)
    for key in KEYS:
        dit[f'{key}_overwrite'] = _worst(dit_rows, key, 'overwrite')
        dit[f'{key}_smooth'] = _worst(dit_rows, key, 'smooth')
    weights = f'fitted {args.fit_steps} steps' if args.fit_steps else 'random init'
    print(f"seams: {cfg.config_path} ({weights}), {len(videos)} clips, {args.frames} frames, short side {args.size}; "
          f"errors vs one whole-clip decode / untiled forward (max abs, model units)")
    print_table(rows, ['clip', 'part', 'setting', 'decoder_calls', 'tiles', 'boundary_err', 'interior_err',
                       'jump_err', 'jump_interior', 'ref_std'])
    print(f"worst over clips: SVD decode boundary {fmt(vae['boundary_err_no_overlap'])} -> "
          f"{fmt(vae['boundary_err_overlap'])}, jump {fmt(vae['jump_err_no_overlap'])} -> "
          f"{fmt(vae['jump_err_overlap'])} "
          f"with overlap {overlap} ({vae['decoder_calls_ratio']:.3g}x decoder calls); DiT tile seams "
          f"{fmt(dit['boundary_err_overwrite'])} -> {fmt(dit['boundary_err_smooth'])}, jump "
          f"{fmt(dit['jump_err_overwrite'])} -> {fmt(dit['jump_err_smooth'])} (overwrite -> smooth)")
    record = dict(benchmark='seams', config=cfg.config_path, cfg_options=args.cfg_options, random_init=True,
                  fit=fit, frames=args.frames, size=args.size, env=environment(device), vae_temporal=vae,
                  dit_tiles=dit, rows=rows)
    write_json(args.json, record)
    return record


def add_seams_parser(subparsers):
    p = subparsers.add_parser('seams', help='errors at SVD chunk boundaries and DiT tile seams vs whole runs',
                              description=bench_seams.__doc__)
    add_config_args(p)
    p.add_argument('--inputs', nargs='+', default=None, metavar='VIDEO',
                   help=f'real clips (default: every mp4 in {SHARED_VIDEOS})')
    p.add_argument('--frames', type=int, default=16, help='frames per clip for the SVD decode (default 16)')
    p.add_argument('--size', type=int, default=128, help='short side in pixels (default 128: DiT tiles of the '
                   'tiny config are 64 pixels, so frames span several)')
    p.add_argument('--overlap', type=int, default=None, help='decode_overlap compared with 0 in the summary '
                   '(default: vae.decode_overlap of the config, else 1); the table has every overlap')
    p.add_argument('--fit-steps', type=int, default=0, help='first fit the random decoder and DiT to the clips for '
                   'this many Adam steps each (tools/bench/fit.py; README: 300), so the weights are trained-like')
    add_run_args(p)
    p.set_defaults(func=bench_seams)
