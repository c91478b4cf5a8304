"""Semantic compressor: StableCascade's frozen EfficientNetV2-S encoder, 16 x H/32 x W/32 per frame."""
import torch
from einops import rearrange
from torch import nn
from torchvision.models import efficientnet_v2_s

from models.stages import DOWNSCALE, FrozenStage, as_video_batch, check_multiple

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SemanticCompressor(FrozenStage):
    """EfficientNetV2-S `features` -> 1x1 conv 1280->16 (no bias) -> BatchNorm(16, affine=False).

    State-dict keys are `backbone.*` and `mapper.*`, as in the released `effnet_encoder.safetensors`.
    """

    def __init__(self, chunk_size=8, c_latent=16):
        super().__init__()
        self.chunk_size = chunk_size
        self.backbone = efficientnet_v2_s(weights=None).features
        self.mapper = nn.Sequential(
            nn.Conv2d(1280, c_latent, kernel_size=1, bias=False),
            nn.BatchNorm2d(c_latent, affine=False),
        )
        # Not in the state dict: the released file has only backbone/mapper keys.
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def normalize(self, frames):
        """[-1, 1] frames -> [0, 1] -> ImageNet mean/std, computed in fp32 then cast to the module dtype."""
        x = (frames.float() + 1) / 2
        x = (x - self.mean.float()) / self.std.float()
        return x.to(self.dtype)

    def forward(self, frames):
        """(N, 3, H, W) in [-1, 1], H and W multiples of 32 -> (N, 16, H/32, W/32)."""
        return self.mapper(self.backbone(self.normalize(frames)))

    @torch.no_grad()
    def encode(self, video, chunk_size=None, split=None):
        """Video (B, 3, T, H, W) or (3, T, H, W) in [-1, 1], H and W multiples of 32 -> raw latent
        (B, 16, T, H/32, W/32) on the module's device, in its dtype.

        Frames go through the network `chunk_size` at a time (memory flat in clip length). Other sizes raise
        ValueError: padding is the frame plan's job (tools/video/frames.py), done once, where it is undone.
        split: a models.parallel.WorkSplit running the chunks on the processes of a launch in turn, every
        chunk's latent gathered by all (None: here).
        """
        video, added = as_video_batch(video, 'SemanticCompressor.encode')
        check_multiple(video, DOWNSCALE, 'SemanticCompressor.encode')
        b = video.shape[0]
        frames = rearrange(video, 'b c t h w -> (b t) c h w')
        step = chunk_size or self.chunk_size
        run = lambda i: self(frames[i:i + step].to(self.device))                                    # (n, 16, h, w)
        starts = range(0, frames.shape[0], step)
        out = list(split.map(run, starts) if split is not None else map(run, starts))
        latent = rearrange(torch.cat(out), '(b t) c h w -> b c t h w', b=b)
        return latent[0] if added else latent
