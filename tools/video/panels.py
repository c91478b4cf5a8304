"""Side-by-side comparison videos and PNG grids, labelled: clips (C, T, H, W) in [-1, 1] (PNG grids also take
RGB uint8 (T, H, W, 3))."""
import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from tools.files import atomic_write
from tools.video.frames import from_uint8
from tools.video.frames import resize as _resize
from tools.video.write import to_uint8


def _label_overlay(text, frame_h):
    """Label as (rgb (3, h, w) in [-1, 1], alpha (1, h, w)): white text on a dark box, sized to the frame."""
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
    """PNG grid: one labelled row per clip, `num_frames` evenly spaced frames as columns. Clips are (C, T, H, W)
    in [-1, 1] or RGB uint8 (T, H, W, 3); rows are scaled to the first clip's height, black to the right of
    shorter rows. Built a frame at a time into the uint8 grid (no float copy of the whole grid)."""
    labels = list(labels) if labels is not None else [''] * len(videos)
    if not videos or len(labels) != len(videos):
        raise ValueError(f"write_grid_png got {len(videos)} videos and {len(labels)} labels; give one label each")
    u8 = [str(v.dtype) in ('uint8', 'torch.uint8') for v in videos]          # numpy or torch
    shapes = [(v.shape[0], *v.shape[1:3]) if is_u8 else (v.shape[1], *v.shape[-2:]) for v, is_u8 in zip(videos, u8)]
    H = shapes[0][1]
    widths = [max(1, round(w * H / h)) for _, h, w in shapes]
    columns = [np.unique(np.linspace(0, T - 1, min(num_frames, T)).round().astype(int)) for T, _, _ in shapes]
    grid = np.zeros((H * len(videos), max(len(c) * w for c, w in zip(columns, widths)), 3), np.uint8)
    for r, (v, label) in enumerate(zip(videos, labels)):
        w = widths[r]
        for j, i in enumerate(columns[r]):
            x = from_uint8(v[i:i + 1]) if u8[r] else v[:, i:i + 1].float()
            x = _resize(x, H, w)
            if j == 0:
                x = draw_label(x, label)                         # label on the first column
            grid[r * H:(r + 1) * H, j * w:(j + 1) * w] = to_uint8(x)[0]
    path = str(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format='PNG'))
