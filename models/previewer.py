"""Previewer: StableCascade's small decoder from the 16-channel compressor latent straight to RGB (x8 up).

Its raw output (`forward`) is an image in [0, 1], the range StableCascade's EfficientNet encoder reads
before ImageNet normalisation; `decode` maps it to [-1, 1] like every other video in this codebase.
"""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from models.stages import DOWNSCALE, FrozenStage, as_video_batch


def _stage(conv, channels):
    """conv -> GELU -> BatchNorm, the previewer's repeating unit."""
    return [conv, nn.GELU(), nn.BatchNorm2d(channels)]


class Previewer(FrozenStage):
    """16 -> 3 channels, x8 spatial (three 2x2/2 transposed convs); a flat `blocks` Sequential whose keys
    match `previewer.safetensors`."""

    def __init__(self, c_in=16, c_hidden=512, c_out=3, chunk_size=8):
        super().__init__()
        self.chunk_size = chunk_size
        c2, c4 = c_hidden // 2, c_hidden // 4
        self.blocks = nn.Sequential(
            *_stage(nn.Conv2d(c_in, c_hidden, 1), c_hidden),                   # blocks.0-2
            *_stage(nn.Conv2d(c_hidden, c_hidden, 3, padding=1), c_hidden),    # blocks.3-5
            *_stage(nn.ConvTranspose2d(c_hidden, c2, 2, stride=2), c2),        # blocks.6-8    x2
            *_stage(nn.Conv2d(c2, c2, 3, padding=1), c2),                      # blocks.9-11
            *_stage(nn.ConvTranspose2d(c2, c4, 2, stride=2), c4),              # blocks.12-14  x4
            *_stage(nn.Conv2d(c4, c4, 3, padding=1), c4),                      # blocks.15-17
            *_stage(nn.ConvTranspose2d(c4, c4, 2, stride=2), c4),              # blocks.18-20  x8
            *_stage(nn.Conv2d(c4, c4, 3, padding=1), c4),                      # blocks.21-23
            nn.Conv2d(c4, c_out, 1),                                           # blocks.24
        )
        self.freeze()

    def forward(self, latent):
        """(N, 16, h, w) -> (N, 3, 8h, 8w) RGB in [0, 1] (not clamped)."""
        return self.blocks(latent.to(self.dtype))

    @torch.no_grad()
    def decode_iter(self, latent, upsample=False, chunk_size=None, split=None):
        """Yield the preview of (B, 16, T, h, w) chunk by chunk as (B, 3, k, H', W'), k <= chunk_size frames.

        The frames are 8h x 8w (a quarter of the original resolution); upsample=True up-samples them
        bilinearly x4 to the compressor's input size, 32h x 32w. split: a models.parallel.WorkSplit running the
        chunks on the processes of a launch in turn (the 8h x 8w frames are gathered, then up-sampled by each).
        """
        latent, added = as_video_batch(latent, 'Previewer.decode')
        step = chunk_size or self.chunk_size

        def run(i):                                                             # (b·k, 3, 8h, 8w) in [-1, 1]
            return self(rearrange(latent[:, :, i:i + step], 'b c t h w -> (b t) c h w').to(self.device)) * 2 - 1
        starts = range(0, latent.shape[2], step)
        for frames in (split.map(run, starts) if split is not None else map(run, starts)):
            if upsample:
                full = (latent.shape[-2] * DOWNSCALE, latent.shape[-1] * DOWNSCALE)
                frames = F.interpolate(frames, size=full, mode='bilinear', align_corners=False)
            frames = rearrange(frames, '(b t) c h w -> b c t h w', b=latent.shape[0])
            yield frames[0] if added else frames

    def decode(self, latent, upsample=False, chunk_size=None):
        """(B, 16, T, h, w) -> preview video (B, 3, T, 8h, 8w) in [-1, 1] (not clamped); 32h x 32w with upsample."""
        dim = 1 if latent.dim() == 4 else 2
        return torch.cat(list(self.decode_iter(latent, upsample=upsample, chunk_size=chunk_size)), dim=dim)
