"""Reconstruct videos with CascadeV: read -> encode -> preview -> refine (DiT) -> SVD decode, one process.

    python recon.py --config configs/s1024.effn-f32.py --input VIDEOS --output OUT [options]
    python recon.py --config configs/s1024.effn-f32.py --decode-from OUT/NAME/latent.safetensors --output OUT2
    accelerate launch recon.py ...          # one process per GPU, the video list sharded across them

Writes OUT/NAME/{latent.safetensors, preview.mp4, rec.mp4, cmp.mp4, cmp.png, done.json} per video (NAME is
the file stem). Outputs keep the source's displayed size (or the plan's crop: --square, --preprocess cascadev),
its pixel aspect ratio (SAR) and its frame times; done.json records the frame plan (tools/frames.py) that
tools/eval.py reuses. Every file goes through a temp name and a rename; done.json is written last, so a video
with a done.json is complete and a rerun skips it (--overwrite redoes it). A bad file is reported as
"PATH: reason" and skipped; the run ends with "k/N failed" and exit code 1 if k > 0. Usage errors
(missing weights, bad flags, output inside the input folder) exit with code 2 before any heavy work.
"""
import argparse
import copy
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tools.config import ConfigError, add_cfg_options, load_config
from tools.files import atomic_write, write_text_atomic
from tools.frames import PREPROCESS, FramePlan
from tools.streaming import read_ahead

OUTPUT_FILES = ('latent.safetensors', 'preview.mp4', 'rec.mp4', 'cmp.mp4', 'cmp.png')
DONE = 'done.json'
LATENT_FORMAT = 'cascadev-latent-v2'            # v2: the frame plan, SAR and frame times in the metadata
FILE_OF = {'preview': 'preview.mp4', 'refined': 'rec.mp4'}
DEFAULT_CONFIG = 'configs/s1024.effn-f32.py'
REPO_ROOT = Path(__file__).resolve().parent


class UsageError(ValueError):
    """A flag or path the run cannot start with; the message is one line naming it and the fix."""


def build_parser():
    from diffusion.samplers import SAMPLERS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=str(REPO_ROOT / DEFAULT_CONFIG),
                   help=f'model config (default: {DEFAULT_CONFIG})')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--input', nargs='+', metavar='PATH', help='video files and/or folders of videos')
    src.add_argument('--decode-from', nargs='+', metavar='LATENT',
                     help='latent.safetensors files (or folders of them) saved by an earlier run: decode '
                          'without the source videos')
    p.add_argument('--output', required=True, help='output folder (one sub-folder per video)')
    g = p.add_argument_group('frames')
    g.add_argument('--num-frames', type=int, default=None, help='frames per video (default: all)')
    g.add_argument('--frame-stride', type=int, default=1, help='use every S-th frame (default 1)')
    g.add_argument('--start', type=int, default=0, help='first frame (default 0)')
    g.add_argument('--size', type=int, default=None,
                   help="resize the short side to SIZE before encoding, 0 = native size (default: the config's "
                        "data.sample_size, 1024 for s1024.effn-f32); outputs are resized back to the source size")
    g.add_argument('--square', action='store_true', help='center-crop a square first (as the original recon did)')
    g.add_argument('--preprocess', choices=PREPROCESS, default='default',
                   help="default: the full frame, padded to 32 and restored to the source size; cascadev: the "
                        "original's blur + OpenCV resize + crop to multiples of 32, outputs at that crop")
    g.add_argument('--fps', type=float, default=None,
                   help="write at this constant rate (default: each frame at its source time; constant-rate "
                        "sources play at source fps / frame stride)")
    g.add_argument('--lossless', action='store_true',
                   help='lossless video files (for exact metrics; larger, and fewer players handle them)')
    g = p.add_argument_group('sampling')
    g.add_argument('--preview-only', action='store_true', help='fast mode: previewer only, no DiT and no SVD decode')
    g.add_argument('--scheduler', choices=list(SAMPLERS), default=None,
                   help='sampler (default: sampling.scheduler of the config, EulerA)')
    g.add_argument('--steps', type=int, default=None, help='sampler steps (default: sampling.steps, 8)')
    g.add_argument('--seed', type=int, default=None,
                   help="seed (default: sampling.seed, 42); each video's noise comes from (seed, video name)")
    g = p.add_argument_group('hardware and run')
    g.add_argument('--device', default=None, help="cpu | cuda | cuda:N | auto (default: the config's device)")
    g.add_argument('--dtype', choices=('fp32', 'fp16', 'bf16'), default=None,
                   help="stage precision (default: the config's dtype, fp32); the DiT runs under autocast")
    g.add_argument('--compile', action='store_true', help='torch.compile the DiT (pays off on long runs on GPU)')
    g.add_argument('--chunk-frames', type=int, default=16,
                   help='frames read/decoded/written at a time (memory flat in clip length; default 16)')
    g.add_argument('--max-memory', default=None, metavar='SIZE',
                   help="peak memory budget, e.g. 24GB, 2.5GB: chunk frames, DiT tiles per call and the SVD "
                        "decode chunk/tiles are chosen to fit it and the plan is printed (default: none on CPU, "
                        "the free device memory on CUDA); CPU: process RSS, CUDA: max allocated + context")
    g.add_argument('--overwrite', action='store_true', help='redo videos whose outputs are already complete')
    g.add_argument('--eval', action='store_true', help='after the batch, run tools/eval.py on the outputs')
    g.add_argument('--dit-checkpoint', default=None, metavar='PATH',
                   help="DiT weights (a training checkpoint's model.safetensors, a .pth): weights.dit=PATH")
    add_cfg_options(g)
    return p


# ---- inputs, outputs and sharding (no torch needed) --------------------------------------------------

def shard(items, rank, world):
    """The items process `rank` of `world` handles: every world-th one of the sorted list (no overlap, none lost)."""
    return sorted(items)[rank::world]


def collect_videos(inputs):
    """--input paths -> {name: path}, name = file stem; one-line UsageError for missing paths or stem clashes."""
    from tools.video_io import VideoReadError, list_videos
    found = {}
    for item in inputs:
        try:
            paths = list_videos(item)
        except VideoReadError as e:
            raise UsageError(f'--input {e}') from None
        for path in paths:
            name = Path(path).stem
            other = found.get(name)
            if other is not None and os.path.realpath(other) != os.path.realpath(path):
                raise UsageError(f"--input: {other} and {path} are both named '{name}', so both would write "
                                 f"OUTPUT/{name}/; rename one or reconstruct them in separate runs")
            found[name] = str(path)
    return found


def collect_latents(items):
    """--decode-from files/folders -> {name: path} with the name stored in each latent's metadata."""
    files = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files += sorted(p.rglob('*.safetensors'))
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f'--decode-from {item}: no such file or folder; pass a latent.safetensors written '
                             f'by recon.py or a folder holding them')
    if not files:
        raise UsageError(f"--decode-from {' '.join(items)}: no .safetensors files found")
    found = {}
    for f in files:
        name = read_latent_meta(f)['name']
        if name in found:
            raise UsageError(f"--decode-from: {found[name]} and {f} both hold video '{name}'; decode them in "
                             f"separate runs")
        found[name] = str(f)
    return found


def check_output_dir(output, inputs):
    """Refuse an output folder equal to or inside an input folder (or equal to a file input's folder)."""
    out = Path(output).resolve()
    for item in inputs:
        src = Path(item).resolve()
        folder = src if src.is_dir() else src.parent
        if out == folder or (src.is_dir() and folder in out.parents):
            raise UsageError(f'--output {output}: is inside the input folder {item}; the input folder is never '
                             f'written to, so pick an output folder outside it (e.g. outputs/recon)')
    if out.exists() and not out.is_dir():
        raise UsageError(f'--output {output}: is a file; pass a folder')


def is_complete(out_dir):
    """A video is complete when its done.json exists and lists files that all exist."""
    done = Path(out_dir) / DONE
    if not done.is_file():
        return False
    try:
        files = json.loads(done.read_text())['files']
    except (ValueError, KeyError, TypeError):
        return False
    return all((Path(out_dir) / f).is_file() for f in files)


def validate_args(args):
    checks = [(args.num_frames is not None and args.num_frames < 1, '--num-frames', 'must be >= 1 (or omitted: all)'),
              (args.frame_stride < 1, '--frame-stride', 'must be >= 1'),
              (args.start < 0, '--start', 'must be >= 0'),
              (args.size is not None and args.size < 0, '--size', 'must be >= 0 (0 keeps the native size)'),
              (args.preprocess == 'cascadev' and args.size is not None and 0 < args.size < 32, '--size',
               'must be >= 32 with --preprocess cascadev (its crop is to multiples of 32), or 0 for the native size'),
              (args.steps is not None and args.steps < 1, '--steps', 'must be >= 1'),
              (args.fps is not None and not (args.fps > 0 and math.isfinite(args.fps)), '--fps', 'must be > 0'),
              (args.chunk_frames < 1, '--chunk-frames', 'must be >= 1')]
    for bad, flag, rule in checks:
        if bad:
            raise UsageError(f'{flag} {getattr(args, flag[2:].replace("-", "_"))}: {rule}')
    if args.max_memory is not None:
        from tools.memory import parse_size
        try:
            args.max_memory = parse_size(args.max_memory)
        except ValueError as e:
            raise UsageError(f'--max-memory {e}') from None


# ---- latent files -----------------------------------------------------------------------------------

def save_latent(path, latent, meta):
    """Compressor latent (16, T, h, w) fp32 + JSON metadata (key 'meta') as safetensors, via a temp file."""
    from safetensors.torch import save_file

    def write(tmp):
        save_file({'latent': latent.detach().float().cpu().contiguous()}, str(tmp), metadata={'meta': json.dumps(meta)})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)               # safetensors creates 0600; match the other outputs
    atomic_write(path, write)


def read_latent_meta(path):
    """The metadata of a latent file; UsageError if it is not a recon.py latent."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), 'pt') as f:
            meta = json.loads((f.metadata() or {}).get('meta', '{}'))
    except Exception as e:
        raise UsageError(f'--decode-from {path}: not a readable safetensors file ({e}); pass a '
                         f'latent.safetensors written by recon.py') from None
    if meta.get('format') == 'cascadev-latent-v1':
        raise UsageError(f'--decode-from {path}: was written by an older recon.py without the frame plan; '
                         f'reconstruct its source video again')
    if meta.get('format') != LATENT_FORMAT:
        raise UsageError(f'--decode-from {path}: has no CascadeV latent metadata (format {LATENT_FORMAT}); pass a '
                         f'latent.safetensors written by recon.py')
    return meta


def load_latent(path):
    """-> (latent (16, T, h, w) fp32, metadata dict)."""
    from safetensors.torch import load_file
    meta = read_latent_meta(path)
    latent = load_file(str(path))['latent'].float()
    h, w = meta['plan']['model']
    if latent.ndim != 4 or latent.shape[0] != 16 or tuple(latent.shape[2:]) != (h // 32, w // 32):
        raise ValueError(f'{path}: latent of shape {tuple(latent.shape)} does not match its metadata '
                         f'(16, T, {h // 32}, {w // 32}); the file was edited or is corrupt')
    return latent, meta


# ---- one video ----------------------------------------------------------------------------------------

def frame_range(info, args, path):
    """Source frame indices this run uses (VideoReadError if the clip is too short for the flags)."""
    from tools.video_io import frame_indices
    return frame_indices(info.num_frames, args.num_frames, args.frame_stride, args.start, path)


def read_chunk(path, meta, a, b):
    """Frames a..b-1 of the clip this latent was made from -> ((C, b-a, H, W) in [-1, 1], their source times
    in seconds or None)."""
    from tools.video_io import read_video
    stride = meta['frame_stride']
    video, info = read_video(path, num_frames=b - a, stride=stride, start=meta['start'] + a * stride)
    return video, (list(info.times) if info.times is not None else None)


def source_plan(path, args, cfg):
    """-> (VideoInfo, frames used, FramePlan) of one source video under the flags."""
    from tools.frames import plan
    from tools.video_io import probe_video
    info = probe_video(path)
    n = len(frame_range(info, args, path))
    size = cfg.data.sample_size if args.size is None else args.size
    return info, n, plan(info.height, info.width, size=size, square=args.square, preprocess=args.preprocess,
                         start=args.start, stride=args.frame_stride, num_frames=n)


def fit_memory(pipe, name, frame_plan, frames, args, cfg, metrics):
    """Chunk frames, DiT tiles per call, SVD decode chunk/tiles and encoder look-ahead for one video under
    --max-memory (CUDA: the free device memory by default), set on pipe and printed (tools/memory.py);
    -> (chunk frames, look-ahead or None). PlanError when nothing fits."""
    from tools.memory import Workload, bytes_in_use, default_budget, gb, plan_memory
    budget = args.max_memory if args.max_memory is not None else default_budget(pipe.device)
    w = Workload.from_plan(frame_plan, frames, cfg, refine=not args.preview_only, metrics=metrics,
                           device=pipe.device.type, dtype=args.dtype)
    plan = plan_memory(w, budget, base=bytes_in_use(pipe.device), chunk_frames=args.chunk_frames)
    s = plan.settings
    pipe.dit_tile_batch = s.dit_tile_batch
    if pipe.vae is not None:
        pipe.vae.decode_chunk, pipe.vae.tile_size = s.vae_chunk, s.vae_tile
    if budget is not None:
        print(f'{name}: {plan.line()} (budget {gb(budget)})', flush=True)
    return s.chunk_frames, s.lookahead


def encode_video(pipe, path, name, out_dir, args, cfg):
    """Read the clip in chunks, encode each, save latent.safetensors; -> (latent (16, T, h, w), metadata).

    The metadata holds the frame plan (tools/frames.py), the source's SAR ('N:D') and, for a variable
    frame rate source, each frame's time in seconds from the first one used.
    """
    import torch
    info, n, frame_plan = source_plan(path, args, cfg)
    sar = info.sar if info.sar != 1 else None
    meta = {'format': LATENT_FORMAT, 'name': name, 'source': str(Path(path).resolve()), 'source_fps': info.fps,
            'fps': info.fps / args.frame_stride, 'num_frames': n, 'start': args.start,
            'frame_stride': args.frame_stride, 'config': Path(cfg.config_path).name, 'plan': frame_plan.to_dict(),
            'sar': None if sar is None else f'{sar.numerator}:{sar.denominator}',
            'vfr': info.vfr, 'times': None}
    parts, times = [], []
    spans = [(a, min(a + args.chunk_frames, n)) for a in range(0, n, args.chunk_frames)]
    with ThreadPoolExecutor(max_workers=1) as reader:       # the next chunk decodes while this one encodes
        for frames, t in read_ahead(lambda a, b: read_chunk(path, meta, a, b), spans, reader):   # (C, k, H, W)
            parts.append(pipe.encode(frame_plan.to_model(frames)[None])[0].cpu())   # (16, k, h, w)
            times = None if t is None or times is None else times + t
    if meta['vfr'] and times:
        meta['times'] = [round(x - times[0], 6) for x in times]   # the output starts at its first frame
    latent = torch.cat(parts, dim=1)
    save_latent(out_dir / 'latent.safetensors', latent, meta)
    return latent, meta


def open_writer(path, fps, sar=None, lossless=False, lookahead=None):
    """A VideoWriter for one output: the frames' exact size, the source's SAR ('N:D' or None), lossless on
    request, x264 look-ahead in frames (None: the preset's); its write(frames, times=None) takes each frame's
    time in seconds (None: constant fps)."""
    from fractions import Fraction

    from tools.video_io import VideoWriter
    sar = Fraction(sar.replace(':', '/')) if sar else None
    return VideoWriter(path, fps, sar=sar, lossless=lossless, lookahead=lookahead)


def output_timing(meta, args):
    """-> (fps, per-frame times in s or None): source times for a variable frame rate source, unless --fps."""
    if meta.get('times') and args.fps:
        from tqdm.auto import tqdm
        tqdm.write(f"{meta['name']}: variable frame rate source written at a constant --fps {args.fps:g}; its "
                   f"frame times are not kept (leave out --fps to keep them)")
    return args.fps or meta['fps'], (None if args.fps else meta.get('times'))


def render(pipe, latent, meta, out_dir, args, source=None):
    """Preview and (unless --preview-only) refine + decode one latent; stream the mp4s; -> (info, metrics).

    Frames are processed `chunk` at a time (a multiple of the VAE's decode_chunk, so the temporal decoder
    sees the same groups as a whole-clip decode): the sampler state is the only whole-clip tensor. Outputs
    come back through the frame plan (FramePlan.to_output) and are compared with FramePlan.reference.
    """
    import hashlib
    from contextlib import ExitStack

    import numpy as np
    import torch
    from models.pipeline import noise_seed
    from tools.metrics import mean_psnr, psnr, ssim
    from tools.memory import CMP_LOOKAHEAD
    from tools.video_io import side_by_side, to_uint8, write_grid_png

    frame_plan, T = FramePlan.from_dict(meta['plan']), latent.shape[1]
    fps, times = output_timing(meta, args)
    refine = not args.preview_only
    scheduler, steps, seed = args.scheduler, args.steps, args.seed
    z = None
    if refine:
        z = pipe.refine(latent[None], steps=steps, scheduler=scheduler, seed=seed, name=meta['name'],
                        progress=args.progress)                                   # (1, 4, T, H_m/8, W_m/8)
    step = pipe.vae.decode_chunk if refine else 1
    chunk = step * max(1, round(args.chunk_frames / step))
    grid_idx = set(np.unique(np.linspace(0, T - 1, min(4, T)).round().astype(int)).tolist())
    panels = ([('original', source)] if source else []) + [('preview', None)] + ([('refined', None)] if refine else [])
    labels = {'original': 'original', 'preview': 'preview (no diffusion)',
              'refined': f'refined ({scheduler}, {steps} steps)'}
    grid = {k: [] for k, _ in panels}
    scores = {k: {'psnr': [], 'ssim': []} for k, _ in panels if k != 'original'}
    files = ['preview.mp4'] + (['rec.mp4'] if refine else []) + ['cmp.mp4', 'cmp.png']
    digests = {k: hashlib.sha256() for k in ('preview', 'refined') if k in grid}   # of the uint8 frames written
    def write(u8, clips, t):
        writers['preview.mp4'].write(u8['preview'], times=t)
        if refine:
            writers['rec.mp4'].write(u8['refined'], times=t)
        for i in range(u8['preview'].shape[0]):                               # a frame at a time: 3 panels wide
            writers['cmp.mp4'].write(side_by_side([clips[k][:, i:i + 1] for k, _ in panels],
                                                  [labels[k] for k, _ in panels]), times=t[i:i + 1] if t else None)

    spans = [(a, min(a + chunk, T)) for a in range(0, T, chunk)]
    with ExitStack() as stack:
        la = getattr(args, 'lookahead', None)                # x264 look-ahead of the plan (None: the preset's)
        cmp_la = CMP_LOOKAHEAD if la is None else min(la, CMP_LOOKAHEAD)
        writers = {f: stack.enter_context(open_writer(out_dir / f, fps, meta.get('sar'), args.lossless,
                                                      cmp_la if f == 'cmp.mp4' else la))
                   for f in files if f.endswith('.mp4')}
        # Write-behind and read-ahead threads (exited first, so the writers close after their last frame):
        # video encoding and decoding overlap the next chunk's model work; one chunk waits at most.
        writer, reader = (stack.enter_context(ThreadPoolExecutor(max_workers=1)) for _ in range(2))
        sources = read_ahead(lambda a, b: read_chunk(source, meta, a, b), spans, reader) if source else None
        pending = None
        for a, b in spans:
            clips = {'preview': frame_plan.to_output(pipe.preview(latent[None, :, a:b])[0].cpu())}
            if refine:
                rec = torch.cat(list(pipe.vae_decode_chunks(z[:, :, a:b])), dim=2)[0].cpu()
                clips['refined'] = frame_plan.to_output(rec)
            if source:
                clips['original'] = frame_plan.reference(next(sources)[0])
            u8 = {k: to_uint8(v) for k, v in clips.items()}                     # (k, H, W, 3)
            for k in digests:
                digests[k].update(u8[k].tobytes())
            if pending is not None:
                pending.result()
            pending = writer.submit(write, u8, clips, times[a:b] if times else None)
            if source:                                                            # per-frame, against the input
                for k in scores:
                    scores[k]['psnr'] += psnr(u8['original'], u8[k], device=pipe.device).tolist()
                    if min(u8[k].shape[1:3]) >= 11:                                # SSIM's 11x11 window
                        scores[k]['ssim'] += ssim(u8['original'], u8[k], device=pipe.device).tolist()
            keep = [i - a for i in range(a, b) if i in grid_idx]
            for k in grid:
                grid[k].append(clips[k][:, keep])
        pending.result()                                                          # its errors surface here
    write_grid_png(out_dir / 'cmp.png', [torch.cat(grid[k], dim=1) for k, _ in panels],
                   [labels[k] for k, _ in panels], num_frames=len(grid_idx))
    metrics = {k: {'psnr': mean_psnr(s['psnr']), 'ssim': sum(s['ssim']) / len(s['ssim']) if s['ssim'] else None}
               for k, s in scores.items()} if source else {}
    info = {'frames': T, 'height': int(clips['preview'].shape[-2]), 'width': int(clips['preview'].shape[-1]),
            'fps': float(fps), 'sar': meta.get('sar'), 'frame_times': 'source' if times else 'constant',
            'lossless': bool(args.lossless), 'files': files,
            'frames_sha256': {FILE_OF[k]: d.hexdigest() for k, d in digests.items()}}
    if refine:
        info.update(scheduler=scheduler, steps=steps, seed=seed, noise_seed=noise_seed(seed, meta['name']))
    return info, metrics


def process(pipe, name, src, out_dir, args, cfg, decode_from):
    """All outputs of one video (or one saved latent); done.json last. -> the done.json dict."""
    t0 = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DONE).unlink(missing_ok=True)              # incomplete until the very end
    args = copy.copy(args)                                # this video's chunk size and encoder look-ahead
    if decode_from:
        meta = read_latent_meta(src)
        args.chunk_frames, args.lookahead = fit_memory(pipe, name, FramePlan.from_dict(meta['plan']),
                                                       meta['num_frames'], args, cfg, metrics=False)
    else:
        _, n, frame_plan = source_plan(src, args, cfg)
        args.chunk_frames, args.lookahead = fit_memory(pipe, name, frame_plan, n, args, cfg, metrics=True)
    try:
        if decode_from:
            latent, meta = load_latent(src)
            source = None
            if meta['config'] != Path(cfg.config_path).name:
                print(f"warning: {src}: encoded with {meta['config']}, decoded with {Path(cfg.config_path).name}")
        else:
            latent, meta = encode_video(pipe, src, name, out_dir, args, cfg)
            source = src
        info, metrics = render(pipe, latent, meta, out_dir, args, source=source)
    except Exception:
        if not decode_from:                               # a failed video leaves no file that looks complete
            (out_dir / 'latent.safetensors').unlink(missing_ok=True)
        raise
    if not decode_from:
        info['files'] = ['latent.safetensors'] + info['files']
    latent_file = str(Path(src).resolve()) if decode_from else 'latent.safetensors'
    plan = meta['plan']
    done = {'name': name, 'source': meta['source'], 'latent': latent_file, **info,
            'start': meta['start'], 'frame_stride': meta['frame_stride'], 'size': plan['size'],
            'square': plan['square'], 'preprocess': plan['preprocess'], 'plan': plan,
            'config': Path(cfg.config_path).name, 'device': str(pipe.device),
            'dtype': args.dtype, 'metrics': metrics, 'seconds': round(time.time() - t0, 2)}
    write_text_atomic(out_dir / DONE, json.dumps(done, indent=1) + '\n')
    return done


def summary_line(done):
    parts = [f"{done['name']}: {done['frames']} frames {done['height']}x{done['width']} @ {done['fps']:.4g} fps"]
    for k, m in done['metrics'].items():
        ssim = f" SSIM {m['ssim']:.4f}" if m['ssim'] is not None else ''
        parts.append(f"{k} PSNR {m['psnr']:.2f} dB{ssim}")
    parts.append(f"{done['seconds']:.1f} s")
    return ' | '.join(parts)


def failure_line(src, e):
    """'PATH: reason' in one line (VideoReadError messages already start with the path)."""
    reason = str(e).strip().splitlines()[0] if str(e).strip() else ''
    if type(e).__name__ not in ('VideoReadError', 'ValueError', 'NonFiniteError'):
        reason = f'{type(e).__name__}: {reason}' if reason else type(e).__name__
    return reason if reason.startswith(str(src)) else f'{src}: {reason}'


def remove_if_empty(folder):
    try:
        folder.rmdir()
    except OSError:
        pass


# ---- main -----------------------------------------------------------------------------------------------

def distributed_state(device=None):
    """(rank, world, device or None) from accelerate's PartialState under a launcher, else (0, 1, None)."""
    if int(os.environ.get('WORLD_SIZE', '1')) > 1:
        import torch
        from accelerate import PartialState
        state = PartialState(cpu=str(device) == 'cpu' or not torch.cuda.is_available())
        return state.process_index, state.num_processes, state.device
    return 0, 1, None


def main(argv=None):
    """Run recon; -> exit code (0 ok, 1 some videos failed, 2 usage error or missing weights)."""
    args = build_parser().parse_args(argv)
    try:
        validate_args(args)
        cfg = load_config(args.config, args.cfg_options)
        cfg.weights.dit = args.dit_checkpoint or cfg.weights.dit
        args.scheduler = args.scheduler or cfg.sampling.scheduler
        args.steps = args.steps or cfg.sampling.steps
        args.seed = cfg.sampling.seed if args.seed is None else args.seed
        args.dtype = args.dtype or cfg.get('dtype', 'fp32')
        decode_from = args.decode_from is not None
        items = collect_latents(args.decode_from) if decode_from else collect_videos(args.input)
        if not decode_from:
            check_output_dir(args.output, args.input)
        stages = ('previewer',) if decode_from else ('compressor', 'previewer')
        stages += () if args.preview_only else ('dit', 'vae')
        from models.weights import MissingWeightsError, check_weights
        check_weights(cfg, stages)
    except (UsageError, ConfigError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except MissingWeightsError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2

    rank, world, dist_device = distributed_state(args.device or cfg.get('device', 'auto'))
    main_process = rank == 0
    output = Path(args.output)
    mine = shard(items, rank, world)
    todo = [n for n in mine if args.overwrite or not is_complete(output / n)]
    for n in sorted(set(mine) - set(todo)):
        print(f'{n}: complete in {output / n}, skipped (--overwrite redoes it)')
    failures = []
    if todo:
        import torch
        from tqdm.auto import tqdm

        from models.pipeline import CascadeV
        from tools.memory import PlanError, release_freed_memory_to_os
        device = args.device or cfg.get('device', 'auto')
        if dist_device is not None and device in ('auto', 'cuda'):
            device = dist_device
        args.progress = main_process and sys.stderr.isatty()
        with torch.no_grad():
            pipe = CascadeV.from_config(cfg, device=device, dtype=args.dtype, compile=args.compile, stages=stages)
            if pipe.device.type == 'cpu':
                release_freed_memory_to_os()      # the RSS follows the live buffers, flat in clip length
            bar = tqdm(todo, desc='videos', unit='video', disable=not main_process or None)
            for name in bar:
                try:
                    done = process(pipe, name, items[name], output / name, args, cfg, decode_from)
                    bar.write(summary_line(done))
                except PlanError as e:        # nothing fits the budget: a usage error, the batch stops
                    print(f'error: {e}', file=sys.stderr)
                    remove_if_empty(output / name)
                    return 2
                except Exception as e:        # a bad file must not stop the batch
                    failures.append(failure_line(items[name], e))
                    bar.write(f'failed: {failures[-1]}')
                    remove_if_empty(output / name)
    if world > 1:
        from accelerate import PartialState
        from accelerate.utils import gather_object
        failures = gather_object(failures)              # every rank learns the batch's failures
        PartialState().wait_for_everyone()
    code = 1 if failures else 0
    if main_process:
        if failures:
            print(f'{len(failures)}/{len(items)} failed:\n  ' + '\n  '.join(failures), file=sys.stderr)
        else:
            print(f'{len(items)}/{len(items)} done in {output}')
        if args.eval and not decode_from:
            code = max(code, run_eval(args, items, output))
    return code


def run_eval(args, items, output):
    """tools/eval.py on the outputs against the inputs, each through the frame plan in its done.json; -> 0 or 1."""
    from tools.eval import EvalError, evaluate
    try:
        result = evaluate(sorted(items.values()), str(output), out_dir=output / 'eval', device=args.device or 'auto')
    except EvalError as e:
        print(f'eval: error: {e}', file=sys.stderr)
        return 1
    return 1 if result['skipped'] else 0


if __name__ == '__main__':
    sys.exit(main())
