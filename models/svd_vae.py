"""Stable Video Diffusion VAE (diffusers `AutoencoderKLTemporalDecoder`): 2D encoder, temporal decoder.

Latents are 4 x H/8 x W/8 per frame and are returned already multiplied by `scale_factor` (0.13025, the
value CascadeV trained with; SVD's own config.json says 0.18215, which we ignore); `decode` divides by it.
The encoder runs frame by frame in chunks; the decoder sees `decode_chunk` consecutive frames at once
(its temporal layers mix them), 4 by default as SVD was used.

Temporal chunks: with `decode_overlap` = 0 the chunks do not overlap (frames [0, 4), [4, 8), ..., the last one
shorter), as the original did; each frame then sees only its own chunk, and the output jumps where one chunk
ends and the next begins. With `decode_overlap` = o > 0 consecutive chunks of `decode_chunk` frames share o
frames (stride decode_chunk − o, the last chunk flush with the end); a shared frame is decoded once in each
chunk and the two decodes are blended with raised-cosine weights that sum to one (models/tiling.py
blend_spans, the DiT's tile weights), so the output crosses from one chunk's context to the next smoothly.
Cost: about decode_chunk / (decode_chunk − o) times the decoder calls.

Spatial tiling: diffusers' `enable_tiling()` is not implemented for the temporal decoder (0.42:
`AutoencoderMixin.enable_tiling` raises NotImplementedError because the class has no `use_tiling`), so
`tile_size` > 0 enables our own overlapping-tile decode blended with linear ramps (models/tiling.py
tiled_apply). The decoder's mid-block attends over the whole frame, so tiled output is close to, not equal
to, the untiled one; use it only where the untiled decode does not fit in memory.
"""
from pathlib import Path

import torch
from diffusers import AutoencoderKLTemporalDecoder
from einops import rearrange

from models.stages import FrozenStage, as_video_batch, check_multiple
from models.tiling import blend_spans, chunk_spans, tiled_apply

VAE_DOWNSCALE = 8                   # frame pixels per SVD-latent pixel, each side
SCALE_FACTOR = 0.13025
# stabilityai/stable-video-diffusion-img2vid-xt, vae/config.json (architecture keys only).
SVD_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=768,
    block_out_channels=[128, 256, 512, 512], down_block_types=['DownEncoderBlock2D'] * 4,
)


def check_vae_config(config, where='cfg.vae.config'):
    """Reject configs diffusers would fail on deep inside: GroupNorm uses 32 groups on every block width."""
    widths = list(config.get('block_out_channels', (64,)))
    bad = [c for c in widths if c % 32]
    if bad:
        raise ValueError(f"{where}: block_out_channels {widths} must all be multiples of 32 (diffusers' "
                         f"AutoencoderKLTemporalDecoder uses GroupNorm with 32 groups); e.g. [32, 32, 32, 32]")
    n_down = len(config.get('down_block_types', ('DownEncoderBlock2D',)))
    if n_down != len(widths):
        raise ValueError(f"{where}: down_block_types has {n_down} entries but block_out_channels has "
                         f"{len(widths)}; give one block type per width")
    if len(widths) != 4:
        raise ValueError(f"{where}: {len(widths)} levels give {2 ** (len(widths) - 1)}x down-sampling; "
                         f"CascadeV needs 8x, i.e. 4 entries in block_out_channels")


def check_decode_overlap(decode_chunk, decode_overlap):
    """One-line ValueError unless decode_overlap is an integer in [0, decode_chunk) (frames)."""
    if not (isinstance(decode_overlap, int) and 0 <= decode_overlap < decode_chunk):
        raise ValueError(f"cfg.vae.decode_overlap = {decode_overlap!r} must be an integer in [0, decode_chunk = "
                         f"{decode_chunk}); e.g. decode_chunk=4, decode_overlap=1 (frames), 0 = no overlap")


class SVDVAE(FrozenStage):
    """Frozen SVD VAE behind encode / encode_moments / decode, on videos (B, 3, T, H, W) in [-1, 1]."""

    def __init__(self, vae, scale_factor=SCALE_FACTOR, encode_chunk=8, decode_chunk=4, decode_overlap=0,
                 tile_size=0, tile_overlap=16):
        super().__init__()
        if tile_size and not 0 <= tile_overlap < tile_size:
            raise ValueError(f"cfg.vae.tile_overlap = {tile_overlap} must be in [0, tile_size = {tile_size}); "
                             f"e.g. tile_size=64, tile_overlap=16 (latent pixels)")
        check_decode_overlap(decode_chunk, decode_overlap)
        self.vae = vae
        self.scale_factor = scale_factor
        self.encode_chunk = encode_chunk
        self.decode_chunk = decode_chunk
        self.decode_overlap = decode_overlap    # frames shared by consecutive temporal chunks; 0 = the original
        self.tile_size = tile_size              # latent pixels per decoder tile; 0 = no tiling
        self.tile_overlap = tile_overlap        # latent pixels shared by neighbouring tiles
        self.freeze()

    @classmethod
    def from_config(cls, config, **kw):
        """Build with fresh (random) weights from a dict of AutoencoderKLTemporalDecoder kwargs."""
        check_vae_config(config)
        return cls(AutoencoderKLTemporalDecoder(**config), **kw)

    @classmethod
    def from_pretrained(cls, folder, torch_dtype=None, **kw):
        """Load a diffusers folder (config.json + diffusion_pytorch_model[.fp16].safetensors)."""
        variant = None if (Path(folder) / 'diffusion_pytorch_model.safetensors').is_file() else 'fp16'
        vae = AutoencoderKLTemporalDecoder.from_pretrained(str(folder), variant=variant, torch_dtype=torch_dtype)
        return cls(vae, **kw)

    @torch.no_grad()
    def encode_moments(self, video):
        """Video (B, 3, T, H, W), H and W multiples of 8 -> posterior (mean, std), each (B, 4, T, H/8, W/8),
        times scale_factor. Frames are encoded `encode_chunk` at a time; other sizes raise ValueError.
        """
        video, added = as_video_batch(video, 'SVDVAE.encode')
        check_multiple(video, VAE_DOWNSCALE, 'SVDVAE.encode')
        frames = rearrange(video, 'b c t h w -> (b t) c h w')
        means, stds = [], []
        for i in range(0, frames.shape[0], self.encode_chunk):
            chunk = frames[i:i + self.encode_chunk].to(self.device, self.dtype)
            dist = self.vae.encode(chunk).latent_dist                       # diagonal Gaussian, logvar clamped
            means.append(dist.mean.float() * self.scale_factor)
            stds.append(dist.std.float() * self.scale_factor)
        mean, std = (rearrange(torch.cat(m), '(b t) c h w -> b c t h w', b=video.shape[0]) for m in (means, stds))
        mean, std = mean.to(self.dtype), std.to(self.dtype)
        return (mean[0], std[0]) if added else (mean, std)

    @torch.no_grad()
    def encode(self, video, sample=False, generator=None):
        """Video -> scaled latent: the posterior mode, or a sample drawn with `generator` when sample=True."""
        mean, std = self.encode_moments(video)
        if not sample:
            return mean
        noise_device = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=noise_device, dtype=torch.float32)
        return (mean.float() + std.float() * noise.to(mean.device)).to(mean.dtype)

    def _decode_frames(self, z, num_frames):
        """(b·k, 4, h, w) unscaled -> (b·k, 3, 8h, 8w); the temporal layers see k consecutive frames."""
        run = lambda part: self.vae.decode(part, num_frames=num_frames).sample
        if self.tile_size and max(z.shape[-2:]) > self.tile_size:
            return tiled_apply(run, z, self.tile_size, self.tile_overlap, VAE_DOWNSCALE).to(z.dtype)
        return run(z)

    @torch.no_grad()
    def decode_iter(self, latent, decode_chunk=None, decode_overlap=None, split=None):
        """Yield (B, 3, k, 8h, 8w) video chunks of k frames in order from a scaled latent (B, 4, T, h, w).

        Chunks of decode_chunk frames overlapping by decode_overlap (defaults: the instance's; see the module
        docstring). Without overlap each yield is one decoder chunk in the VAE's dtype; with overlap the yields
        hold the frames already final (blended in float32, then cast back). split: a models.parallel.WorkSplit
        decoding the chunks on the processes of a launch in turn, every chunk gathered by all (None: here).
        """
        latent, added = as_video_batch(latent, 'SVDVAE.decode')
        chunk = decode_chunk or self.decode_chunk
        overlap = self.decode_overlap if decode_overlap is None else decode_overlap
        check_decode_overlap(chunk, overlap)
        spans = chunk_spans(latent.shape[2], chunk, overlap)
        decode = lambda span: self._decode_span(latent, *span)
        parts = split.map(decode, spans) if split is not None else map(decode, spans)
        if overlap and len(spans) > 1:
            parts = blend_spans(parts, spans, chunk)
        for frames in parts:
            yield frames[0] if added else frames

    def _decode_span(self, latent, a, b):
        """Frames [a, b) of a scaled latent (B, 4, T, h, w) decoded as one chunk -> (B, 3, b − a, 8h, 8w)."""
        chunk = latent[:, :, a:b].to(self.device, torch.float32) / self.scale_factor
        k = chunk.shape[2]                                              # the last chunk may be shorter
        z = rearrange(chunk, 'b c t h w -> (b t) c h w').to(self.dtype)
        frames = self._decode_frames(z, num_frames=k)                   # (b·k, 3, 8h, 8w)
        return rearrange(frames, '(b t) c h w -> b c t h w', t=k)

    def decode(self, latent, decode_chunk=None, decode_overlap=None):
        """Scaled latent (B, 4, T, h, w) -> video (B, 3, T, 8h, 8w) in [-1, 1] (not clamped)."""
        dim = 1 if latent.dim() == 4 else 2
        parts = self.decode_iter(latent, decode_chunk=decode_chunk, decode_overlap=decode_overlap)
        return torch.cat(list(parts), dim=dim)

