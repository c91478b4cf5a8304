"""CascadeV end to end: encode (compressor) -> preview (previewer) | refine (DiT sampler) -> decode (SVD VAE).

    pipe = CascadeV.from_config(load_config('configs/s1024.effn-f32.py'), device='cuda', dtype='bf16')
    latent = pipe.encode(video)            # (B, 3, T, H, W) in [-1, 1] -> (B, 16, T, H/32, W/32), raw
    fast = pipe.preview(latent)            # "without diffusion": previewer x8, bilinear x4 -> (B, 3, T, H, W)
    video = pipe.decode(latent, steps=8, scheduler='EulerA', seed=42)   # refine + SVD decode

Refinement (the cascade's second stage): the compressor latent is up-sampled x`sr_scale` bilinearly per frame
and multiplied by `scale_factor` (the DiT's conditioning x_ref); seeded Gaussian noise in the 4-channel SVD
latent space (B, 4, T, H/8, W/8) is denoised by the sampler, the DiT running over temporal windows of
`lats_per_vid` frames and spatial tiles of `input_size` latent pixels (models/dit.py forward_windowed);
the SVD VAE divides by `scale_factor` and decodes in temporal chunks.

Frames go in with H and W multiples of 32 (tools/video/frames.py plans the crop, resize and pad of files and
undoes them). Every stage's output is checked: NaN/inf raise NonFiniteError naming the stage, the dtype and
the fix, so an overflow never becomes a black video.
"""
import hashlib
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from einops import rearrange

from diffusion.samplers import NoiseSchedule, get_sampler
from models.parallel import WorkSplit
from models.weights import (STAGES, build_compressor, build_dit, build_previewer, build_vae, check_weights,
                            random_stages, resolve_device, resolve_dtype)

RANDOM_INIT_WARNING = 'random_init: these stages have random weights, outputs are meaningless (tests/benchmarks only)'


class NonFiniteError(RuntimeError):
    """A stage's output holds NaN/inf; the message is one line naming the stage, the dtype and the fix."""


def check_finite(x, stage, dtype):
    """Raise NonFiniteError if `x` (a stage's output) holds NaN or inf; -> x. One device sync."""
    if bool(torch.isfinite(x).all()):
        return x
    name = {torch.float16: 'fp16', torch.bfloat16: 'bf16', torch.float32: 'fp32'}.get(dtype, str(dtype))
    fix = {'fp16': 'fp16 overflowed its range (max 65504); rerun with --dtype bf16 or fp32',
           'bf16': 'rerun with --dtype fp32'}.get(name, 'check the input frames and the weights file of this stage')
    raise NonFiniteError(f'the {stage} output holds NaN/inf values under {name}: {fix}')


def noise_seed(seed, name):
    """Stable 63-bit seed for one video from (seed, video name): sha256, never Python's salted hash()."""
    digest = hashlib.sha256(f'{seed}:{name}'.encode('utf-8')).digest()
    return int.from_bytes(digest[:8], 'big') & (2 ** 63 - 1)


def upsample_latent(latent, sr_scale, scale_factor):
    """Compressor latent (B, 16, T, h, w) -> DiT conditioning x_ref (B, 16, T, sr·h, sr·w), bilinear per frame."""
    B = latent.shape[0]
    frames = rearrange(latent.float(), 'b c t h w -> (b t) c h w')
    frames = F.interpolate(frames, scale_factor=sr_scale, mode='bilinear', align_corners=False)
    return rearrange(frames, '(b t) c h w -> b c t h w', b=B) * scale_factor


def interpolate_latent(latent, k):
    """Compressor latent (..., T, h, w) -> (..., k·(T−1)+1, h, w): k× the frames, linear in time between
    consecutive latent frames, the originals kept at multiples of k (frame j = mix of frames j//k and j//k+1
    with weight (j mod k)/k). k=1 returns `latent` itself. The cascade's frame-rate mode: refinement then
    fills in the in-between frames (CascadeV paper, arXiv 2501.16612, "4× ... frames per second")."""
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f'interpolate_latent: k={k!r}; use an integer >= 1 (1: no interpolation)')
    T = latent.shape[-3]
    if k == 1 or T < 2:
        return latent
    a, b = latent[..., :-1, :, :], latent[..., 1:, :, :]                  # (..., T-1, h, w)
    w = (torch.arange(k, dtype=torch.float32, device=latent.device) / k).view(k, 1, 1)
    mixed = a.unsqueeze(-3) * (1 - w) + b.unsqueeze(-3) * w                # (..., T-1, k, h, w)
    mixed = mixed.flatten(-4, -3)                                          # (..., (T-1)·k, h, w)
    return torch.cat([mixed, latent[..., -1:, :, :]], dim=-3).to(latent.dtype)


def to_channels_last(module):
    """2D convolution weights in channels-last (NHWC) memory, so activations follow: the layout tensor-core
    convolutions (cuDNN) run natively. 3D convolutions (the SVD decoder's temporal ones) stay as they are.
    Results are equal up to float rounding (different kernels)."""
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    return module


def _batched(x):
    """(C, T, h, w) -> (1, C, T, h, w), True; a batch (B, C, T, h, w) passes through with False."""
    if x.dim() not in (4, 5):
        raise ValueError(f'CascadeV: expected (B, C, T, H, W) or (C, T, H, W), got shape {tuple(x.shape)}')
    return (x[None], True) if x.dim() == 4 else (x, False)


class CascadeV:
    """The three frozen/learned stages behind encode / preview / refine / decode; any stage may be absent.
    split (models.parallel.WorkSplit; default: this process alone): the processes of a launch that share each
    call's work (frame chunks, DiT forwards, SVD decode chunks); every process calls the same methods with the
    same inputs and gets the same results."""

    def __init__(self, cfg, compressor=None, previewer=None, dit=None, vae=None, device='cpu', dtype=torch.float32,
                 split=None):
        self.cfg = cfg
        self.split = split or WorkSplit()     # the processes sharing each video's work (models/parallel.py)
        self.compressor, self.previewer, self.dit, self.vae = compressor, previewer, dit, vae
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.sr_scale, self.scale_factor = int(cfg.sr_scale), float(cfg.scale_factor)
        self.tile_blend = cfg.sampling.get('tile_blend', 'smooth')
        self.schedule = NoiseSchedule.from_config(cfg.diffusion)       # the samplers' β schedule, built once

    @classmethod
    def from_config(cls, cfg, device='cpu', dtype='auto', compile=False, stages=STAGES, channels_last=None):
        """Check the weights of `stages` (MissingWeightsError before any heavy work), then build them.

        The compressor, previewer and VAE run in `dtype`; the DiT keeps fp32 weights and runs under
        autocast when dtype is fp16/bf16 (the sampler state stays fp32). compile=True (or a torch.compile
        mode such as 'max-autotune') wraps the DiT's per-tile forward in torch.compile. channels_last puts
        the 2D convolutions of the frozen stages in channels-last memory (None: on CUDA only; see
        to_channels_last).
        """
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise ValueError(f'CascadeV.from_config: unknown stages {sorted(unknown)}; use a subset of {STAGES}')
        check_weights(cfg, stages)
        random = sorted(random_stages(cfg) & set(stages))
        if random:
            print(f"warning: {RANDOM_INIT_WARNING} ({', '.join(random)})")
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        if channels_last is None:
            channels_last = device.type == 'cuda'
        layout = to_channels_last if channels_last else (lambda module: module)
        parts = {}
        if 'compressor' in stages:
            parts['compressor'] = layout(build_compressor(cfg, device, dtype))
        if 'previewer' in stages:
            parts['previewer'] = layout(build_previewer(cfg, device, dtype))
        if 'dit' in stages:
            dit = build_dit(cfg, device, torch.float32).eval().requires_grad_(False)
            if compile:
                dit.forward_conditioned = torch.compile(dit.forward_conditioned,
                                                        mode=None if compile is True else compile)
            parts['dit'] = dit
        if 'vae' in stages:
            parts['vae'] = layout(build_vae(cfg, device, dtype))
        return cls(cfg, device=device, dtype=dtype, **parts)

    def _need(self, stage):
        module = getattr(self, stage)
        if module is None:
            raise RuntimeError(f'CascadeV: the {stage} stage was not built; pass it in '
                               f'CascadeV.from_config(..., stages=...)')
        return module

    # ---- stage 1: semantic compression and the fast preview ---------------------------------------
    @torch.no_grad()
    def encode(self, video):
        """Video (B, 3, T, H, W) in [-1, 1], H and W multiples of 32 -> raw compressor latent (B, 16, T, H/32, W/32),
        fp32. A single clip (3, T, H, W) gives (16, T, h, w), here and in preview / refine / decode.
        """
        latent = self._need('compressor').encode(video.to(self.device), split=self.split)
        return check_finite(latent, 'compressor', self.dtype).float()

    def preview_chunks(self, latent, chunk_size=None):
        """Yield the preview of (B, 16, T, h, w) in frame chunks: (B, 3, k, 32h, 32w) in [-1, 1], fp32."""
        for frames in self._need('previewer').decode_iter(latent, upsample=True, chunk_size=chunk_size,
                                                              split=self.split):
            yield check_finite(frames, 'previewer', self.dtype).float().clamp(-1, 1)   # x8, then bilinear x4

    @torch.no_grad()
    def preview(self, latent):
        """Compressor latent (B, 16, T, h, w) -> preview video (B, 3, T, 32h, 32w): the "without diffusion" output."""
        latent, single = _batched(latent)
        video = torch.cat(list(self.preview_chunks(latent)), dim=2)
        return video[0] if single else video

    # ---- stage 2: refinement in the SVD latent space ------------------------------------------------
    def eps_fn(self, tile_batch=None):
        """The ε function the samplers call (diffusion/samplers.py): eps_fn(x_in (B, 20, T, h, w), t (B,) float on
        the 1000-step scale) -> ε (B, 4, T, h, w) fp32, the DiT over its temporal windows and spatial tiles; under
        fp16/bf16 the DiT runs in autocast. tile_batch: spatial tiles per DiT call (None: all of a window's tiles
        at once; fewer: less memory)."""
        dit = self._need('dit')
        amp = (torch.autocast(device_type=self.device.type, dtype=self.dtype) if self.dtype != torch.float32
               else nullcontext())

        def eps_fn(x, t):
            with amp:
                return dit.forward_windowed(x, t, tile_blend=self.tile_blend, tile_batch=tile_batch,
                                            split=self.split).float()
        return eps_fn

    @torch.no_grad()
    def refine(self, latent, steps=8, scheduler='EulerA', seed=42, name=None, generator=None, progress=False,
               tile_batch=None, callback=None):
        """Compressor latent (B, 16, T, h, w) -> SVD latent (B, 4, T, sr·h, sr·w) (scaled by scale_factor).

        The noise comes from `generator` if given, else from a CPU generator seeded with `seed`, or with
        noise_seed(seed, name) when a video name is given (what recon.py does, so a video's output does not
        depend on the rest of the batch). The same generator drives Euler-ancestral's per-step noise.
        callback: called once per sampler step with a dict {'i', 't', 'x', 'eps', 'denoised'} (the sampler's
        state in the SVD latent space, (B, 4, T, sr·h, sr·w); diffusion/samplers.py describes each key).
        """
        sampler = get_sampler(scheduler)
        latent, single = _batched(latent)
        if generator is None:
            generator = torch.Generator().manual_seed(noise_seed(seed, name) if name is not None else int(seed))
        cond = upsample_latent(latent.to(self.device), self.sr_scale, self.scale_factor)   # (B, 16, T, H/8, W/8)
        shape = (cond.shape[0], 4, *cond.shape[2:])
        noise = torch.randn(shape, generator=generator, device=generator.device).to(self.device)
        z = sampler(self.eps_fn(tile_batch), noise, cond, steps, generator, progress, self.schedule,
                    callback=callback)
        check_finite(z, f'DiT sampler ({scheduler})', self.dtype)
        return z[0] if single else z

    def vae_decode_chunks(self, z, chunk_size=None):
        """Yield the SVD decode of (B, 4, T, H/8, W/8) in temporal chunks: (B, 3, k, H, W) in [-1, 1], fp32."""
        for frames in self._need('vae').decode_iter(z, decode_chunk=chunk_size, split=self.split):
            yield check_finite(frames, 'SVD VAE decoder', self.dtype).float().clamp(-1, 1)

    @torch.no_grad()
    def decode(self, latent, steps=8, scheduler='EulerA', seed=42, name=None, generator=None, progress=False,
               interp=1, callback=None):
        """Compressor latent (B, 16, T, h, w) -> refined video (B, 3, T', 32h, 32w): refine, then SVD decode.
        interp=K > 1 first interpolates the latent K× in time (interpolate_latent): T' = K·(T−1)+1.
        callback: per sampler step, as in refine."""
        latent, single = _batched(latent)
        latent = interpolate_latent(latent, interp)
        z = self.refine(latent, steps=steps, scheduler=scheduler, seed=seed, name=name, generator=generator,
                        progress=progress, callback=callback)
        video = torch.cat(list(self.vae_decode_chunks(z)), dim=2)
        return video[0] if single else video

