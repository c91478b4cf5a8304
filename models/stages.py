"""The frozen-stage interface shared by the compressor, the previewer and the SVD VAE.

Frozen stages stay in eval mode (BatchNorm uses its running statistics) and take no gradients; their
public methods accept a video (B, C, T, H, W) or a single clip (C, T, H, W) and never pad frames (the
frame plan, tools/video/frames.py, pads once and undoes it).
"""
from torch import nn

DOWNSCALE = 32      # frame pixels per compressor-latent pixel, each side (EfficientNetV2-S: five stride-2 stages)


def check_multiple(video, multiple, name):
    """Raise ValueError unless the frames' H and W are multiples of `multiple` (the stages never pad)."""
    h, w = video.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(f"{name}: frames are {h}x{w}; both sides must be multiples of {multiple}. Bring them "
                         f"there with the frame plan (tools.video.frames.plan(H, W).to_model(video) pads to 32)")


def as_video_batch(video, name):
    """Accept (C, T, H, W) or (B, C, T, H, W); return the 5-D tensor and whether a batch dim was added.

    ValueError (one line, starting with `name`) for any other number of dimensions.
    """
    if video.dim() == 4:
        return video.unsqueeze(0), True
    if video.dim() != 5:
        raise ValueError(f"{name}: expected a video (B, C, T, H, W) or (C, T, H, W), got shape {tuple(video.shape)}")
    return video, False


class FrozenStage(nn.Module):
    """Base for the frozen stages: eval mode always (BatchNorm uses its running statistics), no gradients."""

    def freeze(self):
        """No gradients, eval mode; returns self."""
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode=True):
        """Frozen stage: stays in eval mode whatever `mode` is."""
        return super().train(False)

    @property
    def device(self):
        """The device of the stage's parameters."""
        return next(self.parameters()).device

    @property
    def dtype(self):
        """The dtype of the stage's parameters."""
        return next(self.parameters()).dtype
