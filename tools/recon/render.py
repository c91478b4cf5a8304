"""Render one latent to video files, streamed: preview | refine (DiT) -> one SVD decode stream -> writers.

    info = render(pipe, latent, meta, out_dir, settings, source=None)     # tools/recon/reconstruct.py calls it

The sampler state (the whole clip's SVD latent, small) is the only whole-clip tensor: preview, SVD decode,
the source's reference frames, metrics and writing go `chunk_frames` output frames at a time, the source
read ahead and the files written behind in threads. The SVD decoder runs as ONE decode stream over the
clip (CascadeV.vae_decode_chunks), consumed chunk by chunk, so its temporal overlap blend
(vae.decode_overlap) applies across the whole clip, with no edge where one output chunk ends.

Each chunk's frames go to the outputs as spans: the files (_Files, written behind in a thread), the digests
of the frames written, the stills of cmp.png (_Stills) and the in-loop scores (_Scores).
"""
import hashlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from fractions import Fraction

import numpy as np
import torch

from models.pipeline import interpolate_latent, noise_seed
from models.tiling import chunk_spans
from tools.evaluation.metrics import gaussian_window, mean_psnr, ssim_planes
from tools.recon.memory import WRITER_LOOKAHEAD, writer_threads
from tools.recon.records import RenderInfo
from tools.video.frames import MULTIPLE, from_uint8, map_frames, unpad
from tools.video.panels import side_by_side, write_grid_png
from tools.video.read import read_frames
from tools.video.streaming import read_ahead, rechunk
from tools.video.write import VideoWriter, to_uint8

FILE_OF = {'preview': 'preview.mp4', 'refined': 'rec.mp4', 'reconstruction': 'rec.mp4'}
LABELS = {'original': 'original', 'preview': 'preview (no diffusion)', 'refined': 'refined ({scheduler}, {steps} steps)',
          'reconstruction': '{autoencoder}'}


def no_timer(stage):
    """The default stage hook: times nothing. A hook is timer(stage) -> context manager around that stage."""
    return nullcontext()


def read_chunk(path, plan, a, b, keep_hdr=False, keep_fields=False):
    """Latent frames a..b-1 of the clip the FramePlan `plan` selects, read from `path` -> (RGB uint8
    (b-a, H, W, 3), their source times in seconds or None). tools/video/frames.map_frames shapes them a frame
    at a time. keep_hdr / keep_fields: tools.video.read.read_frames' (HDR tone-mapped, interlaced video
    deinterlaced unless set)."""
    stride = plan.stride
    frames, info = read_frames(path, num_frames=b - a, stride=stride, start=plan.start + a * stride,
                               keep_hdr=keep_hdr, keep_fields=keep_fields)
    return frames, (list(info.times) if info.times is not None else None)


def open_writer(path, fps, sar=None, lossless=False, lookahead=None):
    """A VideoWriter for one output: the frames' exact size, the source's SAR ('N:D' or None), lossless on
    request, x264 look-ahead in frames (None: the preset's), tools.recon.memory.writer_threads() encoder
    threads; its write(frames, times=None) takes each frame's time in seconds (None: constant fps)."""
    sar = Fraction(sar.replace(':', '/')) if sar else None
    return VideoWriter(path, fps, sar=sar, lossless=lossless, lookahead=lookahead, threads=writer_threads())


def output_timing(meta, fps=None, interp=1, warn=print):
    """-> (fps, per-frame times in s or None) of the output for the clip of LatentMeta `meta`: the source's
    (x interp, times interpolated linearly for a variable frame rate source), or a constant `fps` when given."""
    times = meta.times
    if times and fps:
        warn(f"{meta.name}: variable frame rate source written at a constant --fps {fps:g}; its frame times "
             f"are not kept (leave out --fps to keep them)")
    if fps:
        return fps, None
    if times and interp > 1:
        t = torch.tensor(times, dtype=torch.float64)[None, :, None, None]
        times = [round(x, 6) for x in interpolate_latent(t, interp)[0, :, 0, 0].tolist()]
    return meta.fps * interp, times or None


def quick_scores(ref, rec):
    """Per-frame (PSNR dB, SSIM) of rec vs ref, (C, t, H, W) in [-1, 1], float32 on their device: the in-loop
    check (tools/eval.py scores the written files). SSIM as tools.evaluation.metrics (11-tap Gaussian, σ 1.5,
    mean over channels), None for frames under 11 px. One frame at a time: the Gaussian blur's convolution
    unfolds its input 11×, about 1.4 GB for a 16-frame 256x480 chunk at once, 90 MB per frame.
    -> (list of t floats, list of t floats or None)."""
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

    def __init__(self, path, plan, interp, metrics, keep=(False, False)):
        self.path, self.plan, self.k, self.metrics, self.keep = path, plan, interp, metrics, keep

    def __call__(self, a, b):
        lo, hi = a // self.k, (b - 1) // self.k + 1
        frames, _ = read_chunk(self.path, self.plan, lo, hi, *self.keep)  # (hi - lo, H, W, 3) uint8
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


class _Files:
    """The .mp4 outputs, one VideoWriter each (closed by `stack`), fed a span of uint8 panels
    {panel: (k, H, W, 3)} at a time: preview.mp4, rec.mp4 when refined, cmp.mp4 with the panels side by side."""

    def __init__(self, stack, out_dir, files, fps, sar, lossless, lookahead, panels, labels):
        la = WRITER_LOOKAHEAD if lookahead is None else lookahead
        self.writers = {f: stack.enter_context(open_writer(out_dir / f, fps, sar, lossless, la))
                        for f in files if f.endswith('.mp4')}
        self.panels, self.labels = panels, labels

    def write(self, u8, times):
        for k, f in FILE_OF.items():
            if k in u8 and f in self.writers:
                self.writers[f].write(u8[k], times=times)
        for i in range(u8[self.panels[-1]].shape[0]):            # a frame at a time: the panels side by side
            self.writers['cmp.mp4'].write(side_by_side([from_uint8(u8[k][i:i + 1]) for k in self.panels],
                                                       self.labels), times=times[i:i + 1] if times else None)


class _Stills:
    """cmp.png: up to 4 evenly spaced frames of each panel (of T), kept as their spans pass."""

    def __init__(self, panels, T):
        self.index = set(np.unique(np.linspace(0, T - 1, min(4, T)).round().astype(int)).tolist())
        self.frames = {k: [] for k in panels}

    def add(self, u8, a, b):
        keep = [j - a for j in range(a, b) if j in self.index]
        for k, kept in self.frames.items():
            kept.append(u8[k][keep])

    def write(self, path, labels):
        write_grid_png(path, [np.concatenate(kept) for kept in self.frames.values()], labels,
                       num_frames=len(self.index))


class _Scores:
    """In-loop PSNR/SSIM (quick_scores) of the model outputs named in `outputs` against the source frames,
    which exist for the output frames at multiples of K; computed on `device` with the padding removed."""

    def __init__(self, outputs, K, pad, device):
        self.scores = {k: {'psnr': [], 'ssim': []} for k in outputs}
        self.K, self.pad, self.device = K, pad, device

    def wants(self, a, b):
        return bool(self.scores) and any(j % self.K == 0 for j in range(a, b))

    def add(self, model_out, ref_model, a, b):
        have = [j for j in range(a, b) if j % self.K == 0]                # frames that have a source
        keep = [j - a for j in have]
        ref = ref_model[:, [j // self.K - a // self.K for j in have]].to(self.device)
        for k, s in self.scores.items():
            p, q = quick_scores(ref, unpad(model_out[k][:, keep], self.pad).to(self.device))
            s['psnr'] += p
            s['ssim'] += q or []

    def means(self):
        """{output: {'psnr': mean dB (tools.evaluation.metrics.mean_psnr), 'ssim': mean or None}}."""
        return {k: {'psnr': mean_psnr(s['psnr']), 'ssim': sum(s['ssim']) / len(s['ssim']) if s['ssim'] else None}
                for k, s in self.scores.items()}


def _model_frames(pipe, lat, decoded, a, b, timer):
    """The model's output frames [a, b): {'preview': (3, k, *model), 'refined': the decode stream's next k};
    for another autoencoder {'reconstruction': its decode stream's next k}."""
    if is_autoencoder(pipe):
        with timer('decoder'):
            return {'reconstruction': decoded.take(b - a)[0]}
    with timer('previewer'):
        out = {'preview': pipe.preview(lat[None, :, a:b])[0]}
    if decoded is not None:
        with timer('vae'):
            out['refined'] = decoded.take(b - a)[0]
    return out


def _refined(pipe, lat, name, settings, tile_batch, vae_chunk, progress, timer):
    """The DiT's SVD latent of the whole clip (1, 4, T', H/8, W/8), then ONE decode stream over it, taken
    span by span (tools.video.streaming.rechunk)."""
    with timer('dit'):
        z = pipe.refine(lat[None], steps=settings.steps, scheduler=settings.scheduler, seed=settings.seed,
                        name=name, progress=progress, tile_batch=tile_batch)
    return rechunk(pipe.vae_decode_chunks(z, chunk_size=vae_chunk), dim=2)


def is_autoencoder(pipe):
    """True for another video autoencoder (models.autoencoders: encode, decode; no preview, no sampler)."""
    return hasattr(pipe, 'spec')


def spatial_multiple(pipe):
    """What the frame plan pads model frames to for `pipe`: another autoencoder's spatial factor, else 32
    (CascadeV's compressor, tools/video/frames.py MULTIPLE)."""
    return pipe.spatial_factor if is_autoencoder(pipe) else MULTIPLE


def _outputs(pipe, latent, meta, settings, tile_batch, vae_chunk, progress, timer):
    """-> (latent frames for the previewer, output frames T, decode stream or None, output panels)."""
    if is_autoencoder(pipe):
        T = meta.plan.num_frames
        decoded = pipe.decode_chunks(latent[None], T, vae_chunk, windows=meta.windows)
        return latent, T, rechunk(decoded, dim=2), ['reconstruction']
    lat = interpolate_latent(latent, settings.interp)                  # (16, T', h, w), T' = K·(T−1)+1
    refine = not settings.preview_only
    decoded = _refined(pipe, lat, meta.name, settings, tile_batch, vae_chunk, progress, timer) if refine else None
    return lat, lat.shape[1], decoded, ['preview'] + (['refined'] if refine else [])


def render(pipe, latent, meta, out_dir, settings, source=None, chunk_frames=16, vae_chunk=None, tile_batch=None,
           metrics=True, progress=False, timer=no_timer, threads=True, warn=print, lookahead=None):
    """Preview and (unless settings.preview_only) refine + decode one latent (16, T, h, w) described by the
    LatentMeta `meta`; write preview.mp4, rec.mp4, cmp.mp4 (and the source beside them when `source` is its
    path) and cmp.png in out_dir. -> tools.recon.records.RenderInfo (frames_sha256 of the uint8 frames
    written; metrics {} without a source or with metrics=False; the sampler when refined).

    settings: tools.recon.reconstruct.ReconSettings. chunk_frames: output frames per chunk (memory flat in clip
    length); vae_chunk: frames per SVD decoder call (None: vae.decode_chunk); tile_batch: DiT tiles per call
    (None: all); lookahead: x264 look-ahead frames of the files (None: tools.recon.memory.WRITER_LOOKAHEAD,
    10; x264's own 40 hold 216 MB per 720p file). timer(stage) wraps each stage: previewer, dit, vae, read,
    write (frames back to the output geometry, uint8, digests, and waiting for the writer thread), metrics.
    With another video autoencoder as `pipe` (models/autoencoders.py, recon.py --autoencoder) the latent is
    its own (C, T', h, w): its decode stream (stage 'decoder') gives rec.mp4, beside the original in cmp.mp4;
    no preview, no sampler.
    """
    plan, K = meta.plan, settings.interp
    fps, times = output_timing(meta, settings.fps or meta.output_fps, K, warn)   # the encoding run's --fps
    lat, T, decoded, outputs = _outputs(pipe, latent, meta, settings, tile_batch, vae_chunk, progress, timer)
    panels = (['original'] if source else []) + outputs
    name = f'{pipe.spec.name} ({pipe.compression})' if is_autoencoder(pipe) else None
    labels = [LABELS[k].format(scheduler=settings.scheduler, steps=settings.steps, autoencoder=name) for k in panels]
    files = [FILE_OF[k] for k in outputs] + ['cmp.mp4', 'cmp.png']
    score = metrics and source is not None
    scores = _Scores(panels[1:] if score else [], K, plan.pad, pipe.device)       # not the original
    digests = {k: hashlib.sha256() for k in outputs}
    stills = _Stills(panels, T)
    spans = chunk_spans(T, chunk_frames)
    with ExitStack() as stack:
        out = _Files(stack, out_dir, files, fps, meta.sar, settings.lossless, lookahead, panels, labels)
        # Write-behind and read-ahead threads (exited first, so the writers close after their last frame):
        # video encoding and decoding overlap the next chunk's model work; one chunk waits at most.
        writer, reader = (stack.enter_context(ThreadPoolExecutor(max_workers=1)) for _ in range(2))
        read = _Source(source, plan, K, score, (settings.keep_hdr, settings.keep_fields))
        sources = (read_ahead(read, spans, reader) if threads else (read(a, b) for a, b in spans)) if source else None
        pending = None
        for a, b in spans:
            model_out = _model_frames(pipe, lat, decoded, a, b, timer)
            u8, ref_model = {}, None
            if source:
                with timer('read'):
                    u8['original'], ref_model = next(sources)
            with timer('write'):                                                  # shaping + waiting for the writer
                u8.update((k, output_uint8(plan, v)) for k, v in model_out.items())   # (k, H, W, 3)
                for k in digests:
                    digests[k].update(u8[k])                                    # C-contiguous: no copy
                stills.add(u8, a, b)
                if pending is not None:
                    pending.result()
                t = times[a:b] if times else None
                pending = writer.submit(out.write, u8, t) if threads else out.write(u8, t)
            if scores.wants(a, b):
                with timer('metrics'):
                    scores.add(model_out, ref_model, a, b)
            # this chunk's buffers go now, not when the next chunk's replace them: the write-behind holds the
            # panels only until they are written
            u8 = model_out = ref_model = None
        with timer('write'):
            if pending is not None and threads:
                pending.result()                                                  # its errors surface here
            stack.close()                                                         # threads, then the encoders' flush
            stills.write(out_dir / 'cmp.png', labels)
    sampled = 'refined' in outputs
    return _info(plan.output, T, fps, times, meta, settings, files, digests, scores.means(), sampled)


def follow(pipe, latent, meta, settings, chunk_frames=16, vae_chunk=None, tile_batch=None):
    """This process's share of render() on a video split across the processes of a launch (pipe.split, not
    the main one): the same stage calls in the same order (preview, refine, the SVD decode stream, span by
    span), so every exchange meets the main process's; no files, no source, no scores."""
    lat, T, decoded, _ = _outputs(pipe, latent, meta, settings, tile_batch, vae_chunk, False, no_timer)
    for a, b in chunk_spans(T, chunk_frames):                      # render()'s spans
        _model_frames(pipe, lat, decoded, a, b, no_timer)


def _info(size, T, fps, times, meta, settings, files, digests, metrics, sampled):
    sampler = {} if not sampled else dict(
        scheduler=settings.scheduler, steps=settings.steps, seed=settings.seed,
        noise_seed=noise_seed(settings.seed, meta.name))
    return RenderInfo(frames=T, height=int(size[0]), width=int(size[1]), fps=float(fps), sar=meta.sar,
                      frame_times='source' if times else 'constant', lossless=bool(settings.lossless), files=files,
                      frames_sha256={FILE_OF[k]: d.hexdigest() for k, d in digests.items()}, metrics=metrics,
                      source_notes=meta.source_notes, **sampler)
