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

from tools.bench.measure import REPO, add_config_args, add_run_args, environment, load_cfg, print_table, \
    setup_device, write_json
from tools.bench.recon import build_pipeline

SHARED_VIDEOS = REPO.parent / 'shared' / 'videos'


def edge_mask(n, cuts):
    """(n,) bool: the two positions either side of each cut (cut − 1 and cut) along an axis of n."""
    mask = torch.zeros(n, dtype=torch.bool)
    for c in cuts:
        mask[max(c - 1, 0):c + 1] = True
    return mask


def seam_errors(y, ref, mask, axes):
    """Errors of y against ref (same shape): max |y − ref| at the seams (mask, broadcast to y) and elsewhere;
    jump_err = max |Δy − Δref| over neighbours along `axes` (a step between neighbours that ref does not have)."""
    y, ref = y.float(), ref.float()
    d = (y - ref).abs()
    mask = mask.expand_as(d)
    jump = max((torch.diff(y, dim=a) - torch.diff(ref, dim=a)).abs().max().item() for a in axes)
    return dict(boundary_err=d[mask].max().item(), interior_err=d[~mask].max().item() if (~mask).any() else None,
                jump_err=jump, ref_std=ref.std().item())


def vae_seams(vae, video, overlaps):
    """Rows of seam errors of the chunked SVD decode of video (1, 3, T, H, W) per overlap, vs the whole-clip decode."""
    from models.svd_vae import chunk_spans
    z = vae.encode(video)                                            # (1, 4, T, H/8, W/8), scaled
    T, chunk = z.shape[2], vae.decode_chunk
    whole = vae.decode(z, decode_chunk=T, decode_overlap=0)
    cuts = [a for a, _ in chunk_spans(T, chunk)[1:]]                 # where the original's chunks meet
    mask = edge_mask(T, cuts).view(1, 1, -1, 1, 1)
    rows = []
    for o in overlaps:
        y = vae.decode(z, decode_overlap=o)
        rows.append(dict(part='vae_temporal', setting=f'overlap={o}', overlap=o, frames=T,
                         decoder_calls=len(chunk_spans(T, chunk, o)), **seam_errors(y, whole, mask, axes=(2,))))
    return rows


def dit_seams(pipe, video, t=500.0, seed=0):
    """Rows of seam errors of the DiT's tiled forward (overwrite, smooth) vs its untiled forward on one window."""
    from diffusion import create_diffusion
    from models.dit import tile_starts
    from models.pipeline import upsample_latent
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
    mask = (edge_mask(H, rows_[1:])[:, None] | edge_mask(W, cols[1:])[None, :]).view(1, 1, 1, H, W)
    out = []
    for blend in ('overwrite', 'smooth'):
        y = dit.forward_windowed(x, t, tile_blend=blend)
        out.append(dict(part='dit_tiles', setting=blend, latent=[x.shape[2], H, W], tiles=len(rows_) * len(cols),
                        **seam_errors(y, ref, mask, axes=(3, 4))))
    return out


def _clips(args):
    paths = args.inputs or sorted(str(p) for p in SHARED_VIDEOS.glob('*.mp4'))
    if not paths:
        raise ValueError(f'seams: no clips in {SHARED_VIDEOS}; pass video files with --inputs')
    return paths


def _worst(rows, key, setting):
    return max(r[key] for r in rows if r['setting'] == setting)


def bench_seams(args):
    """Max error at SVD-decoder chunk boundaries (overlap 0 vs o) and DiT tile seams (overwrite vs smooth)."""
    from models.pipeline import plan_geometry, prepare_frames
    from tools.video_io import probe_video, read_video
    cfg = load_cfg(args, random_init=True)
    device = setup_device(args)
    pipe = build_pipeline(cfg, device, 'fp32', stages=('compressor', 'vae', 'dit'))
    chunk = pipe.vae.decode_chunk
    overlap = args.overlap or pipe.vae.decode_overlap or 1
    overlaps = sorted({0, overlap, *range(1, chunk)})
    rows = []
    with torch.inference_mode():
        for path in _clips(args):
            n = min(args.frames, probe_video(path).num_frames)
            frames = read_video(path, num_frames=n)[0]                     # (3, n, H, W) in [-1, 1]
            video = prepare_frames(frames, plan_geometry(*frames.shape[-2:], size=args.size))[None].to(device)
            clip = dict(clip=Path(path).name, model_size=list(video.shape[-2:]))
            rows += [dict(clip, **r) for r in vae_seams(pipe.vae, video, overlaps) + dit_seams(pipe, video)]
    vae_rows = [r for r in rows if r['part'] == 'vae_temporal']
    dit_rows = [r for r in rows if r['part'] == 'dit_tiles']
    none, ovl = 'overlap=0', f'overlap={overlap}'
    vae = dict(decode_chunk=chunk, decode_overlap=overlap, decoder_calls_ratio=(
        sum(r['decoder_calls'] for r in vae_rows if r['setting'] == ovl)
        / sum(r['decoder_calls'] for r in vae_rows if r['setting'] == none)))
    for key in ('boundary_err', 'interior_err', 'jump_err'):
        vae[f'{key}_no_overlap'], vae[f'{key}_overlap'] = _worst(vae_rows, key, none), _worst(vae_rows, key, ovl)
    dit = dict(tile=cfg.model.input_size)
    for key in ('boundary_err', 'interior_err', 'jump_err'):
        dit[f'{key}_overwrite'], dit[f'{key}_smooth'] = _worst(dit_rows, key, 'overwrite'), _worst(dit_rows, key, 'smooth')
    print(f"seams: {cfg.config_path} (random init), {len(rows) // (len(overlaps) + 2)} clips, {args.frames} frames, "
          f"short side {args.size}; errors vs one whole-clip decode / untiled forward (max abs, model units)")
    print_table(rows, ['clip', 'part', 'setting', 'decoder_calls', 'tiles', 'boundary_err', 'interior_err',
                       'jump_err', 'ref_std'])
    print(f"worst over clips: SVD decode boundary {vae['boundary_err_no_overlap']:.4g} -> {vae['boundary_err_overlap']:.4g} "
          f"with overlap {overlap} ({vae['decoder_calls_ratio']:.3g}x decoder calls); DiT tile seams "
          f"{dit['boundary_err_overwrite']:.4g} (overwrite) -> {dit['boundary_err_smooth']:.4g} (smooth)")
    record = dict(benchmark='seams', config=cfg.config_path, cfg_options=args.cfg_options, random_init=True,
                  frames=args.frames, size=args.size, env=environment(device), vae_temporal=vae, dit_tiles=dit,
                  rows=rows)
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
    add_run_args(p)
    p.set_defaults(func=bench_seams)
