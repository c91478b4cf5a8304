"""Side-by-side comparison videos and PNG grids of (C, T, H, W) clips in [-1, 1], labelled."""
import os

import numpy as np
import torch
import torch.nn.functional as F

from tools.files import atomic_write
from tools.frames import resize as _resize
from tools.video_write import to_uint8



def _label_overlay(text, frame_h):
    """Label as (rgb (3, h, w) in [-1, 1], alpha (1, h, w)): white text on a dark box, sized to the frame."""
    from PIL import Image, ImageDraw, ImageFont  # noqa: PLC0415
    size = max(11, round(frame_h / 24))
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: fixed bitmap font
        font = ImageFont.load_default()
    margin = max(2, size // 4)
    x0, y0, x1, y1 = ImageDraw.Draw(Image.new('L', (1, 1))).textbbox((0, 0), text, font=font)
    w, h = x1 - x0 + 2 * margin, y1 - y0 + 2 * margin
    text_mask = Image.new('L', (w, h), 0)
    ImageDraw.Draw(text_mask).text((margin - x0, margin - y0), text, fill=255, font=font)
    t = torch.from_numpy(np.asarray(text_mask, dtype=np.float32) / 255.0)[None]  # (1, h, w) text coverage
    box = 0.65                                                                    # opacity of the dark box
    alpha = box + (1 - box) * t
    rgb = (2 * t / alpha - 1).expand(3, -1, -1)  # over black: white where text, black elsewhere
    return rgb, alpha


def draw_label(video, text):
    """Draw `text` at the top-left of every frame of a (C, T, H, W) video (returns a new tensor)."""
    if not text:
        return video
    video = video.clone()
    rgb, alpha = _label_overlay(text, video.shape[-2])
    m = max(2, round(video.shape[-2] / 100))  # offset from the corner
    h, w = min(rgb.shape[1], video.shape[-2] - m), min(rgb.shape[2], video.shape[-1] - m)
    if h <= 0 or w <= 0:
        return video
    rgb, alpha = rgb[:, None, :h, :w].to(video), alpha[:, None, :h, :w].to(video)
    region = video[:, :, m:m + h, m:m + w]
    video[:, :, m:m + h, m:m + w] = region * (1 - alpha) + rgb * alpha
    return video


def side_by_side(videos, labels=None):
    """Panels left to right -> (C, T, H, W1 + W2 + ...): each resized to the first one's height, labelled."""
    if not videos:
        raise ValueError("side_by_side needs at least one video")
    labels = list(labels) if labels is not None else [''] * len(videos)
    if len(labels) != len(videos):
        raise ValueError(f"side_by_side got {len(videos)} videos but {len(labels)} labels")
    T, H = videos[0].shape[1], videos[0].shape[-2]
    panels = []
    for v, label in zip(videos, labels):
        if v.shape[1] != T:
            raise ValueError(f"side_by_side: all videos need the same frame count, got {v.shape[1]} and {T}")
        v = _resize(v.float(), H, max(1, round(v.shape[-1] * H / v.shape[-2])))
        panels.append(draw_label(v, label))
    return torch.cat(panels, dim=-1)


def write_grid_png(path, videos, labels=None, num_frames=4):
    """PNG grid: one labelled row per clip, `num_frames` evenly spaced frames as columns."""
    from PIL import Image  # noqa: PLC0415
    labels = list(labels) if labels is not None else [''] * len(videos)
    if not videos or len(labels) != len(videos):
        raise ValueError(f"write_grid_png got {len(videos)} videos and {len(labels)} labels; give one label each")
    H = videos[0].shape[-2]
    rows = []
    for v, label in zip(videos, labels):
        T = v.shape[1]
        idx = np.unique(np.linspace(0, T - 1, min(num_frames, T)).round().astype(int))
        v = _resize(v[:, idx].float(), H, max(1, round(v.shape[-1] * H / v.shape[-2])))  # (C, n, H, W')
        v = torch.cat([draw_label(v[:, :1], label), v[:, 1:]], dim=1)   # label on the first column
        rows.append(torch.cat(list(v.unbind(1)), dim=-1))  # (C, H, n·W')
    width = max(r.shape[-1] for r in rows)
    rows = [F.pad(r, (0, width - r.shape[-1]), value=-1.0) for r in rows]  # black to the right of short rows
    grid = to_uint8(torch.cat(rows, dim=-2)[:, None])[0]  # (H_total, W, 3)
    path = str(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format='PNG'))
