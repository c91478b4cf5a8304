"""Render one latent to video files, streamed: preview | refine (DiT) -> one SVD decode stream -> writers.

    info = render(pipe, latent, meta, out_dir, settings, source=None)     # tools/recon/reconstruct.py calls it

The sampler state (the whole clip's SVD latent, small) is the only whole-clip tensor: preview, SVD decode,
the source's reference frames, metrics and writing go `chunk_frames` output frames at a time, the source
read ahead and the files written behind in threads. The SVD decoder runs as ONE decode stream over the
clip (CascadeV.vae_decode_chunks), consumed chunk by chunk, so its temporal overlap blend
(vae.decode_overlap) applies across the whole clip, with no edge where one output chunk ends.
"""
import hashlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, nullcontext

import numpy as np
import torch

from models.pipeline import interpolate_latent, noise_seed
from tools.video.frames import FramePlan, from_uint8, map_frames, unpad
from tools.video.write import to_uint8
from tools.video.streaming import read_ahead, rechunk

FILE_OF = {'preview': 'preview.mp4', 'refined': 'rec.mp4'}
LABELS = {'original': 'original', 'preview': 'preview (no diffusion)', 'refined': 'refined ({scheduler}, {steps} steps)'}


def no_timer(stage):
    """The default stage hook: times nothing. A hook is timer(stage) -> context manager around that stage."""
    return nullcontext()


def read_chunk(path, meta, a, b):
    """Latent frames a..b-1 of the clip `meta` describes, read from `path` -> (RGB uint8 (b-a, H, W, 3),
    their source times in seconds or None). tools/frames.map_frames shapes them a frame at a time."""
    from tools.video.read import read_frames
    stride = meta['frame_stride']
    frames, info = read_frames(path, num_frames=b - a, stride=stride, start=meta['start'] + a * stride)
    return frames, (list(info.times) if info.times is not None else None)


def open_writer(path, fps, sar=None, lossless=False, lookahead=None):
    """A VideoWriter for one output: the frames' exact size, the source's SAR ('N:D' or None), lossless on
    request, x264 look-ahead in frames (None: the preset's), tools/memory.writer_threads() encoder threads;
    its write(frames, times=None) takes each frame's time in seconds (None: constant fps)."""
    from fractions import Fraction

    from tools.recon.memory import writer_threads
    from tools.video.write import VideoWriter
    sar = Fraction(sar.replace(':', '/')) if sar else None
    return VideoWriter(path, fps, sar=sar, lossless=lossless, lookahead=lookahead, threads=writer_threads())


def output_timing(meta, fps=None, interp=1, warn=print):
    """-> (fps, per-frame times in s or None) of the output: the source's (x interp, times interpolated
    linearly for a variable frame rate source), or a constant `fps` when given."""
    times = meta.get('times')
    if times and fps:
        warn(f"{meta['name']}: variable frame rate source written at a constant --fps {fps:g}; its frame times "
             f"are not kept (leave out --fps to keep them)")
    if fps:
        return fps, None
    if times and interp > 1:
        t = torch.tensor(times, dtype=torch.float64)[None, :, None, None]
        times = [round(x, 6) for x in interpolate_latent(t, interp)[0, :, 0, 0].tolist()]
    return meta['fps'] * interp, times or None


def quick_scores(ref, rec):
    """Per-frame (PSNR dB, SSIM) of rec vs ref, (C, t, H, W) in [-1, 1], float32 on their device: the in-loop
    check (tools/eval.py scores the written files). SSIM as tools/metrics.ssim (11-tap Gaussian, σ 1.5,
    mean over channels), None for frames under 11 px. One frame at a time: the Gaussian blur's convolution
    unfolds its input 11×, about 1.4 GB for a 16-frame 256x480 chunk at once, 90 MB per frame.
    -> (list of t floats, list of t floats or None)."""
    from tools.evaluation.metrics import gaussian_window, ssim_planes
    win = gaussian_window(11, 1.5, dtype=torch.float32).to(ref.device)
    psnr, ssim = [], []
    for i in range(ref.shape[1]):
        x, y = (ref[:, i].float() + 1) / 2, (rec[:, i].float() + 1) / 2     # (C, H, W) in [0, 1]
        psnr.append(float(10 * torch.log10(1 / (x - y).pow(2).mean())))     # inf where identical
        if min(x.shape[-2:]) >= 11:
            ssim.append(float(ssim_planes(x, y, win).mean()))
    return psnr, ssim or None


class _Source:
    """The source frames for output frames [a, b): read, shaped a frame at a time for the side-by-side
    (the reference as uint8 (k, H, W, 3), frames repeated under interp) and for the metrics (float32 at the
    model's geometry, padding removed, one per source frame)."""

    def __init__(self, path, meta, plan, interp, metrics):
        self.path, self.meta, self.plan, self.k, self.metrics = path, meta, plan, interp, metrics

    def __call__(self, a, b):
        lo, hi = a // self.k, (b - 1) // self.k + 1
        frames, _ = read_chunk(self.path, self.meta, lo, hi)             # (hi - lo, H, W, 3) uint8
        plan = self.plan
        original = map_frames(plan.reference, frames, uint8=True)
        model = None
        if self.metrics:
            model = map_frames(plan.reference if plan.preprocess == 'cascadev'
                               else lambda x: unpad(plan.to_model(x), plan.pad), frames)
        if self.k > 1:
            original = original[[j // self.k - lo for j in range(a, b)]]
        return original, model


def output_uint8(plan, video):
    """Model frames (C, k, *model) on their device -> the output frames as RGB uint8 (k, *output, 3) on the
    host, a frame at a time (resized on the device, then copied)."""
    out = np.empty((video.shape[1], *plan.output, 3), np.uint8)
    for t in range(video.shape[1]):
        out[t] = to_uint8(plan.to_output(video[:, t:t + 1]))[0]
    return out


def render(pipe, latent, meta, out_dir, settings, source=None, chunk_frames=16, vae_chunk=None, tile_batch=None,
           metrics=True, progress=False, timer=no_timer, threads=True, warn=print, lookahead=None):
    """Preview and (unless settings.preview_only) refine + decode one latent (16, T, h, w); write
    preview.mp4, rec.mp4, cmp.mp4 (and the source beside them when `source` is its path) and cmp.png in
    out_dir. -> info dict for done.json: frames, height, width, fps, sar, frame_times, lossless, files,
    frames_sha256 (of the uint8 frames written), metrics ({} without a source or with metrics=False) and,
    when refined, scheduler/steps/seed/noise_seed.

    settings: tools.recon.reconstruct.ReconSettings. chunk_frames: output frames per chunk (memory flat in clip
    length); vae_chunk: frames per SVD decoder call (None: vae.decode_chunk); tile_batch: DiT tiles per call
    (None: all); lookahead: x264 look-ahead frames of the files (None: tools/recon/memory.py WRITER_LOOKAHEAD, 10;
    x264's own 40 hold 216 MB per 720p file). timer(stage) wraps each stage: previewer, dit, vae, read, write (frames back to the output
    geometry, uint8, digests, and waiting for the writer thread), metrics.
    """
    from tools.recon.memory import WRITER_LOOKAHEAD
    from tools.video.panels import side_by_side, write_grid_png
    plan, K = FramePlan.from_dict(meta['plan']), settings.interp
    lat = interpolate_latent(latent, K)                                   # (16, T', h, w), T' = K·(T−1)+1
    T = lat.shape[1]
    fps, times = output_timing(meta, settings.fps or meta.get('output_fps'), K, warn)   # the encoding run's --fps
    refine = not settings.preview_only
    decoded = None
    if refine:
        with timer('dit'):
            z = pipe.refine(lat[None], steps=settings.steps, scheduler=settings.scheduler, seed=settings.seed,
                            name=meta['name'], progress=progress, tile_batch=tile_batch)   # (1, 4, T', H/8, W/8)
        decoded = rechunk(pipe.vae_decode_chunks(z, chunk_size=vae_chunk), dim=2)
    panels = (['original'] if source else []) + ['preview'] + (['refined'] if refine else [])
    labels = [LABELS[k].format(scheduler=settings.scheduler, steps=settings.steps) for k in panels]
    grid_idx = set(np.unique(np.linspace(0, T - 1, min(4, T)).round().astype(int)).tolist())
    grid = {k: [] for k in panels}
    score = metrics and source is not None
    scores = {k: {'psnr': [], 'ssim': []} for k in panels if k != 'original'} if score else {}
    files = ['preview.mp4'] + (['rec.mp4'] if refine else []) + ['cmp.mp4', 'cmp.png']
    digests = {k: hashlib.sha256() for k in ('preview', 'refined') if k in panels}

    def write(u8, t):
        writers['preview.mp4'].write(u8['preview'], times=t)
        if refine:
            writers['rec.mp4'].write(u8['refined'], times=t)
        for i in range(u8['preview'].shape[0]):                  # a frame at a time: three panels wide
            writers['cmp.mp4'].write(side_by_side([from_uint8(u8[k][i:i + 1]) for k in panels], labels),
                                     times=t[i:i + 1] if t else None)

    spans = [(a, min(a + chunk_frames, T)) for a in range(0, T, chunk_frames)]
    with ExitStack() as stack:
        la = WRITER_LOOKAHEAD if lookahead is None else lookahead
        writers = {f: stack.enter_context(open_writer(out_dir / f, fps, meta.get('sar'), settings.lossless, la))
                   for f in files if f.endswith('.mp4')}
        # Write-behind and read-ahead threads (exited first, so the writers close after their last frame):
        # video encoding and decoding overlap the next chunk's model work; one chunk waits at most.
        writer, reader = (stack.enter_context(ThreadPoolExecutor(max_workers=1)) for _ in range(2))
        read = _Source(source, meta, plan, K, score)
        sources = (read_ahead(read, spans, reader) if threads else (read(a, b) for a, b in spans)) if source else None
        pending = None
        for a, b in spans:
            with timer('previewer'):
                model_out = {'preview': pipe.preview(lat[None, :, a:b])[0]}    # (3, k, *model)
            if refine:
                with timer('vae'):
                    model_out['refined'] = decoded.take(b - a)[0]
            if source:
                with timer('read'):
                    original, ref_model = next(sources)
            with timer('write'):                                                  # shaping + waiting for the writer
                u8 = {k: output_uint8(plan, v) for k, v in model_out.items()}  # (k, H, W, 3)
                if source:
                    u8['original'] = original
                    del original
                for k in digests:
                    digests[k].update(u8[k])                                    # C-contiguous: no copy
                keep = [j - a for j in range(a, b) if j in grid_idx]
                for k in grid:
                    grid[k].append(u8[k][keep])
                if pending is not None:
                    pending.result()
                t = times[a:b] if times else None
                pending = writer.submit(write, u8, t) if threads else write(u8, t)
            if score and any(j % K == 0 for j in range(a, b)):
                with timer('metrics'):
                    have = [j for j in range(a, b) if j % K == 0]                # frames that have a source
                    keep = [j - a for j in have]
                    ref = ref_model[:, [j // K - a // K for j in have]].to(pipe.device)
                    for k in scores:
                        p, s = quick_scores(ref, unpad(model_out[k][:, keep], plan.pad).to(pipe.device))
                        scores[k]['psnr'] += p
                        scores[k]['ssim'] += s or []
            # this chunk's buffers go now, not when the next chunk's replace them: the write-behind holds the
            # panels only until they are written
            u8 = model_out = ref_model = ref = None
        with timer('write'):
            if pending is not None and threads:
                pending.result()                                                  # its errors surface here
            stack.close()                                                         # threads, then the encoders' flush
            write_grid_png(out_dir / 'cmp.png', [np.concatenate(grid[k]) for k in panels], labels,
                           num_frames=len(grid_idx))
    return _info(plan.output, T, fps, times, meta, settings, files, digests, scores)


def _info(size, T, fps, times, meta, settings, files, digests, scores):
    from tools.evaluation.metrics import mean_psnr
    info = {'frames': T, 'height': int(size[0]), 'width': int(size[1]), 'fps': float(fps),
            'sar': meta.get('sar'), 'frame_times': 'source' if times else 'constant',
            'lossless': bool(settings.lossless), 'files': files,
            'frames_sha256': {FILE_OF[k]: d.hexdigest() for k, d in digests.items()},
            'metrics': {k: {'psnr': mean_psnr(s['psnr']), 'ssim': sum(s['ssim']) / len(s['ssim']) if s['ssim'] else None}
                        for k, s in scores.items()}}
    if not settings.preview_only:
        info.update(scheduler=settings.scheduler, steps=settings.steps, seed=settings.seed,
                    noise_seed=noise_seed(settings.seed, meta['name']))
    return info
