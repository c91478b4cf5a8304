"""Reconstruct one video (or one saved latent) with CascadeV, streamed: the per-video loop of recon.py.

    from models.pipeline import CascadeV
    from tools.config import load_config
    from tools.recon.reconstruct import ReconSettings, reconstruct
    pipe = CascadeV.from_config(load_config('configs/tiny.py'), device='cpu')
    info = reconstruct(pipe, 'out/clip', video='clip.mp4', settings=ReconSettings(size=256, num_frames=16))
    info = reconstruct(pipe, 'out2/clip', latent_file='out/clip/latent.safetensors')   # no source needed

Stages, each wrapped in timer(stage) when a timer is given (tools/bench/recon.py passes its StageTimer):
read (time spent waiting for frames; reading runs ahead in a thread), compressor, previewer, dit (the whole
sampler), vae (the SVD decode stream), write (waiting for the write-behind thread), metrics (in-loop
PSNR/SSIM in float32 at the model's resolution, on the pipeline's device; metrics=False skips them).

Memory is flat in clip length: frames go `chunk_frames` at a time; the SVD decoder runs `vae_chunk` frames
per call in one stream over the clip; the DiT runs `tile_batch` tiles per call. A planner can set all three.
"""
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from models.autoencoders import window_frames
from models.tiling import chunk_spans
from models.weights import dtype_name
from tools.recon.latents import load_latent, safe_name, save_latent
from tools.recon.records import RECORDED_WHEN_SET, LatentMeta
from tools.recon.render import follow, is_autoencoder, no_timer, read_chunk, render, spatial_multiple
from tools.video.convert import notes as source_notes
from tools.video.frames import MULTIPLE, map_frames
from tools.video.frames import plan as make_plan
from tools.video.read import frame_indices, probe_video
from tools.video.streaming import read_ahead, rechunk


@dataclass(frozen=True)
class ReconSettings:
    """The settings that shape a reconstruction's output files (done.json records them with the pipeline's
    dtype, config and VAE decode chunks: output_settings).

    num_frames (None: all), start, stride: which source frames; size: short side the model sees (0: the
    source's); square: centre square first; preprocess: 'default' or 'cascadev' (tools/video/frames.py);
    upscale: outputs at the model's resolution instead of the source's; interp: K ≥ 1, the latent
    interpolated K× in time (K·(T−1)+1 frames at K× the rate); scheduler/steps/seed: the sampler;
    preview_only: previewer only; fps: a constant output rate (None: the source's times); lossless: files;
    keep_hdr / keep_fields: read HDR code values / woven fields as stored instead of tone-mapping to SDR BT.709
    / deinterlacing (tools/video/convert.py); autoencoder: 'cascadev' or another video autoencoder
    (models/autoencoders.py AUTOENCODERS) with its diffusers folder autoencoder_weights (absolute path).
    """
    num_frames: int = None
    start: int = 0
    stride: int = 1
    size: int = 0
    square: bool = False
    preprocess: str = 'default'
    scheduler: str = 'EulerA'
    steps: int = 8
    seed: int = 42
    preview_only: bool = False
    upscale: bool = False
    interp: int = 1
    fps: float = None
    lossless: bool = False
    keep_hdr: bool = False
    keep_fields: bool = False
    autoencoder: str = 'cascadev'
    autoencoder_weights: str = None

    def __post_init__(self):
        if not (isinstance(self.interp, int) and self.interp >= 1):
            raise ValueError(f'ReconSettings: interp={self.interp!r}; use an integer >= 1 (1: the source rate)')


def config_digest(cfg):
    """sha256 (hex, 16 chars) of the resolved config (overrides applied), without the keys that do not shape
    outputs (device, dtype: recorded resolved; the config's path)."""
    values = {k: v for k, v in cfg.to_dict().items() if k not in ('device', 'dtype', 'config_path')}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_stamp(path):
    """'SIZE:MTIME_NS' of a weights file (a retrained checkpoint at the same path changes it), or None."""
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return None
    return f'{st.st_size}:{st.st_mtime_ns}'


def output_settings(settings, cfg, dtype):
    """Everything that shapes the files, as done.json records it (a rerun compares it): the settings, the
    stage dtype ('fp32' | 'fp16' | 'bf16', resolved), the config's file name and digest (config_digest), the
    DiT weights' path and stamp, tile blend and the config's SVD decode chunk and overlap (recon.py adds its
    --max-memory, whose plan may shorten or tile the SVD decode, and records that plan beside). The reader's
    keep_hdr / keep_fields and another autoencoder appear only when set (RECORDED_WHEN_SET)."""
    vae = cfg.get('vae', {})
    values = {k: v for k, v in asdict(settings).items() if k not in RECORDED_WHEN_SET or v != RECORDED_WHEN_SET[k]}
    return {**values, 'dtype': dtype_name(dtype), 'config': Path(cfg.config_path).name,
            'config_sha256': config_digest(cfg), 'dit_weights': str(cfg.weights.dit),
            'dit_weights_stamp': weights_stamp(cfg.weights.dit), 'tile_blend': cfg.sampling.get('tile_blend', 'smooth'),
            'decode_chunk': vae.get('decode_chunk', 4), 'decode_overlap': vae.get('decode_overlap', 0)}


def source_plan(path, settings, multiple=MULTIPLE):
    """The frame plan (tools/video/frames.py) the settings give for the video at `path`, model frames padded to
    multiples of `multiple` (render.spatial_multiple of the pipeline) -> (FramePlan, VideoInfo);
    VideoReadError (one line) when the clip is unreadable or too short for the frame settings. info.notes say
    what reading does to the frames (tone mapping, deinterlacing, alpha dropped, a rate assumed)."""
    info = probe_video(path)
    info = info._replace(notes=source_notes(info, settings.keep_hdr, settings.keep_fields))
    n = len(frame_indices(info.num_frames, settings.num_frames, settings.stride, settings.start, path))
    return make_plan(info.height, info.width, size=settings.size, square=settings.square,
                     preprocess=settings.preprocess, start=settings.start, stride=settings.stride,
                     num_frames=n, upscale=settings.upscale, multiple=multiple), info


def encode_video(pipe, path, settings, name=None, chunk_frames=16, timer=no_timer, threads=True, warn=print,
                 window=None):
    """Read the clip in chunks and encode each -> (latent (16, T, h, w) fp32 on the CPU, LatentMeta); another
    video autoencoder as `pipe` (models/autoencoders.py) -> its (C, T', h, w): a causal one encodes `window`
    frames at a time (None: the whole clip at once), each window a clip of its own, recorded in meta.windows.

    The metadata holds the frame plan (tools/video/frames.py), the source's SAR ('N:D'), what reading did to
    the frames (source_notes: tone mapping, deinterlacing, alpha dropped, a rate assumed; warn() gets them as
    one line 'NAME: ...') and, for a variable frame rate source, each frame's time in seconds from the first
    one used. VideoReadError (one line) for a file that cannot be read or is too short for the settings.
    """
    frame_plan, info = source_plan(path, settings, spatial_multiple(pipe))
    n = frame_plan.num_frames
    sar = info.sar if info.sar != 1 else None
    causal = is_autoencoder(pipe) and pipe.time_factor > 1
    windows = window_frames(n, window) if causal else None
    meta = LatentMeta(name=name or Path(path).stem, plan=frame_plan, source=str(Path(path).resolve()),
                      source_fps=info.fps, sar=None if sar is None else f'{sar.numerator}:{sar.denominator}',
                      vfr=info.vfr, source_notes=list(info.notes) or None,
                      windows=windows if causal and len(windows) > 1 else None)
    if info.notes:
        warn(f"{meta.name}: {'; '.join(info.notes)}")

    def read(a, b):                                        # in the reader thread: decode and shape
        frames, t = read_chunk(path, frame_plan, a, b, settings.keep_hdr, settings.keep_fields)
        return map_frames(frame_plan.to_model, frames), t
    times = []
    spans = chunk_spans(n, chunk_frames)

    def chunks(reader):                                    # the next chunk decodes while this one encodes
        nonlocal times
        pieces = read_ahead(read, spans, reader) if threads else (read(a, b) for a, b in spans)
        for _ in spans:
            with timer('read'):
                frames, t = next(pieces)                                                 # (C, k, *model)
            times = None if t is None or times is None else times + t
            yield frames
    with ThreadPoolExecutor(max_workers=1) as reader:
        parts = []
        if causal:                                         # window by window, each a clip of its own
            stream = rechunk(chunks(reader), dim=1)
            for k in windows:
                frames = stream.take(k)
                with timer('encoder'):
                    parts.append(pipe.encode(frames[None])[0].cpu())                   # (C, T'_w, h, w)
                frames = None
        else:
            for frames in chunks(reader):
                with timer('compressor'):
                    parts.append(pipe.encode(frames[None])[0].cpu())                   # (16, k, h, w)
    if meta.vfr and times:
        meta = replace(meta, times=[round(x - times[0], 6) for x in times])   # the output starts at its first frame
    return torch.cat(parts, dim=1), meta


def reconstruct(pipe, out_dir, video=None, latent_file=None, name=None, settings=None, chunk_frames=16,
                vae_chunk=None, tile_batch=None, metrics=True, timer=None, threads=True, progress=False,
                warn=print, meta_extra=None, lookahead=None, window=None):
    """All output files of one video (video=PATH: encodes it and saves out_dir/latent.safetensors) or of a
    saved latent (latent_file=PATH: its frame plan, frame times and fps; frame settings are ignored).
    -> info dict (tools.recon.records.RenderInfo.to_dict(), plus 'latent': the latent file, 'meta': its
    LatentMeta.to_dict() and 'timings': seconds per stage). Files go through temp names; a failure leaves no
    latent behind for a video (the caller decides about the folder).

    name: the folder's video name (default: the file stem, or the latent's checked metadata name).
    timer(stage) -> context manager, around each stage (see the module docstring); None: timed here with
    perf_counter into info['timings']. meta_extra: LatentMeta fields to store in the latent file (config,
    output_fps).
    lookahead: x264 look-ahead frames of the files (None: tools/recon/memory.py WRITER_LOOKAHEAD; its planner sets it).
    window: frames per window of another, causal video autoencoder (None: the whole clip; encode_video).
    """
    if (video is None) == (latent_file is None):
        raise ValueError('reconstruct: pass exactly one of video=PATH or latent_file=PATH')
    settings = settings or ReconSettings()
    out_dir = Path(out_dir)
    timings = {}
    timer = timer or _perf_timer(timings, pipe.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        if latent_file is not None:
            latent, meta = load_latent(latent_file)
            if name is not None:
                safe_name(name, latent_file)
            source = None
        else:
            latent, meta = encode_video(pipe, video, settings, name, chunk_frames, timer, threads, warn, window)
            meta = replace(meta, **(meta_extra or {}))
            save_latent(out_dir / 'latent.safetensors', latent, meta)
            source = video
        info = render(pipe, latent, meta, out_dir, settings, source=source, chunk_frames=chunk_frames,
                      vae_chunk=vae_chunk, tile_batch=tile_batch, metrics=metrics, progress=progress, timer=timer,
                      threads=threads, warn=warn, lookahead=lookahead)
    except BaseException:
        if video is not None:                             # a failed video leaves no file that looks complete
            (out_dir / 'latent.safetensors').unlink(missing_ok=True)
        raise
    info = info.to_dict()
    if video is not None:
        info['files'] = ['latent.safetensors'] + info['files']
    info['latent'] = str(Path(latent_file).resolve()) if latent_file is not None else 'latent.safetensors'
    info['meta'] = meta.to_dict()
    info['timings'] = {k: round(v, 4) for k, v in timings.items()}
    return info


def reconstruct_share(pipe, video=None, latent_file=None, name=None, settings=None, chunk_frames=16,
                      vae_chunk=None, tile_batch=None, **_):
    """The share of a process other than the main one in reconstruct() of one video split across the processes
    of a launch (pipe.split; models/parallel.py): it reads the clip (or loads the latent) and makes the same
    stage calls with the same plan, every result gathered by all; the main process writes every file. Takes
    reconstruct()'s arguments and ignores those about files and printing. -> None."""
    settings = settings or ReconSettings()
    if latent_file is not None:
        latent, meta = load_latent(latent_file)
    else:
        latent, meta = encode_video(pipe, video, settings, name, chunk_frames, warn=lambda line: None)
    follow(pipe, latent, meta, settings, chunk_frames=chunk_frames, vae_chunk=vae_chunk, tile_batch=tile_batch)


def _perf_timer(into, device):
    """A timer hook summing wall seconds per stage into the dict `into`; on CUDA it waits for the device at
    both ends, so a stage's queued kernels count for that stage, not the next one to sync."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == 'cuda' else (lambda: None)

    @contextmanager
    def timer(stage):
        sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync()
            into[stage] = into.get(stage, 0.0) + time.perf_counter() - t0
    return timer
