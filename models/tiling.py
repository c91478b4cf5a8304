"""Sliding windows and tiles: where they start, how overlaps blend, and tiled application of a function.

One copy for every stage that splits a video: the DiT's temporal windows and spatial tiles (RECIPE §5),
the SVD VAE's temporal decode chunks and spatial decode tiles, and the memory planner's tile count.

Starts: a window of `window` positions steps by `step` while it ends before the axis does; one last
window is moved flush with the end (so every window is full length); an axis no longer than a window is
one window at 0.

Blend ramps (`ramp`), all rising over n positions: 'cosine' sin²(π/2·(k+½)/n) (the DiT's tiles and the
VAE's overlapping chunks; ramp + its reverse = 1), 'linear' (k+½)/n (the VAE's spatial tiles), 'endpoints'
torch.linspace(0, 1, n) (the original's temporal window merge: 0 and 1 at the ends).
"""
import functools
import math

import torch

TILE_BLENDS = ('smooth', 'overwrite')     # DiT tile overlaps: blended weights summing to one | last tile wins
RAMPS = ('cosine', 'linear', 'endpoints')


# --------------------------------------------------------------------------------------------------
# Starts
# --------------------------------------------------------------------------------------------------
def sliding_starts(size, window, step):
    """Window starts along an axis of `size`: 0, step, 2·step, ... while start + window < size, then
    size − window; [0] when size ≤ window. step ≥ 1 positions."""
    if size <= window:
        return [0]
    starts, s = [], 0
    while s + window < size:
        starts.append(s)
        s += step
    return starts + [size - window]


def frame_window_starts(n, length):
    """DiT temporal window starts over n frames: step length/2 (at least 1), the last window flush with the end."""
    return sliding_starts(n, length, max(length // 2, 1))


def tile_starts(size, tile):
    """DiT spatial tile starts: step round(0.75·tile) (half to even), the last tile flush with the end."""
    return sliding_starts(size, tile, round(0.75 * tile))


def window_tile_calls(frames, tiles, window, tile_batch=None):
    """The DiT calls of a windowed forward over `frames` frames and `tiles` spatial tiles: the temporal windows
    of `window` frames (frame_window_starts), each in chunks of `tile_batch` tiles (None: all at once), windows
    outer -> [(start, end, first tile, tiles in the call)]."""
    per = tile_batch or tiles
    return [(s, min(s + window, frames), i, min(per, tiles - i)) for s in frame_window_starts(frames, window)
            for i in range(0, tiles, per)]


def chunk_spans(num_frames, chunk, overlap=0):
    """SVD temporal decoder chunks [(start, stop)] covering [0, num_frames).

    overlap 0: [0, chunk), [chunk, 2·chunk), ..., the last one shorter (the original's chunks). overlap > 0:
    starts step by chunk − overlap (sliding_starts), so every chunk has `chunk` frames (a clip of at most
    `chunk` frames is one chunk).
    """
    if not overlap:
        return [(a, min(a + chunk, num_frames)) for a in range(0, num_frames, chunk)]
    return [(a, min(a + chunk, num_frames)) for a in sliding_starts(num_frames, chunk, chunk - overlap)]


# --------------------------------------------------------------------------------------------------
# Blend weights
# --------------------------------------------------------------------------------------------------
def ramp(n, kind='cosine', device=None, dtype=torch.float64):
    """(n,) rising blend ramp in [0, 1] of the given kind (see the module docstring); strictly inside (0, 1)
    for 'cosine' and 'linear'. ValueError for an unknown kind."""
    if kind == 'endpoints':
        return torch.linspace(0, 1, n, device=device, dtype=dtype)
    k = torch.arange(n, dtype=dtype, device=device) + 0.5
    if kind == 'linear':
        return k / n
    if kind == 'cosine':
        return torch.sin(math.pi / 2 * k / n) ** 2
    raise ValueError(f"models/tiling.py: ramp kind {kind!r} is unknown; use one of {RAMPS}")


def edge_weights(n, rise, fall, kind='cosine', device=None, dtype=torch.float64):
    """(n,) weights of one tile: `ramp(rise)` over its first `rise` positions, the reversed `ramp(fall)` over
    its last `fall`, 1 elsewhere (a side with 0 keeps full weight)."""
    w = torch.ones(n, device=device, dtype=dtype)
    if rise:
        w[:rise] = ramp(rise, kind, device, dtype)
    if fall:
        w[-fall:] = ramp(fall, kind, device, dtype).flip(0)
    return w


@functools.lru_cache(maxsize=64)
def tile_weights_1d(starts, tile, size, device=None, dtype=torch.float32):
    """(n_tiles, tile) smooth blend weights along one axis of `size`; they sum to one at every position.

    Each tile ramps (raised cosine) over its overlap with the previous and next tile; sides that touch the
    border keep full weight. The ramps are then normalised by their sum over tiles (float64), so a
    separable product of two axes also sums to one. `starts` is a tuple (the result is cached).
    """
    with torch.inference_mode(False):                 # cached, so it must also serve calls under autograd
        raw = torch.stack([edge_weights(tile,
                                        max(starts[k - 1] + tile - s, 0) if k > 0 else 0,
                                        max(s + tile - starts[k + 1], 0) if k + 1 < len(starts) else 0)
                           for k, s in enumerate(starts)])                                    # (n_tiles, tile)
        total = torch.zeros(size, dtype=torch.float64)
        for k, s in enumerate(starts):
            total[s:s + tile] += raw[k]
        weights = torch.stack([raw[k] / total[s:s + tile] for k, s in enumerate(starts)])   # (n_tiles, tile)
        return weights.to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Blending tiles and windows
# --------------------------------------------------------------------------------------------------
def blend_tiles(out, parts, rows, cols, blend='smooth'):
    """Add tiles into `out` (B, C, T, H, W, zeros) and return it.

    parts (n_tiles, B, C, T, th, tw) at (row, column) starts rows × cols, rows outer, columns inner.
    'smooth': each tile weighted by the product of its row and column tile_weights_1d (sum one everywhere);
    'overwrite': the last tile covering a position wins (the original's rule). ValueError otherwise.
    """
    th, tw = parts.shape[-2:]
    boxes = [(r, c) for r in rows for c in cols]
    if blend == 'overwrite':
        for (r, c), e in zip(boxes, parts):
            out[..., r:r + th, c:c + tw] = e
        return out
    if blend != 'smooth':
        raise ValueError(f"models/tiling.py: tile_blend={blend!r} is unknown; use 'smooth' or 'overwrite'")
    wr = tile_weights_1d(tuple(rows), th, out.shape[-2], out.device, out.dtype)   # (n_rows, th)
    wc = tile_weights_1d(tuple(cols), tw, out.shape[-1], out.device, out.dtype)   # (n_cols, tw)
    for k, ((r, c), e) in enumerate(zip(boxes, parts)):
        w = wr[k // len(cols)][:, None] * wc[k % len(cols)][None, :]              # (th, tw)
        out[..., r:r + th, c:c + tw] += e * w
    return out


def merge_window(out, y, start, prev_end):
    """Write window y (B, C, T_win, H, W) into frames [start, start + T_win) of out (B, C, T, H, W).

    Over the frames it shares with the previous window (which ended at `prev_end`), when at least 2, the
    window fades in with an 'endpoints' ramp (0 → 1) over what is there; elsewhere it is written as is.
    """
    end = start + y.shape[2]
    overlap = prev_end - start
    if overlap < 2:
        out[:, :, start:end] = y
        return out
    w = edge_weights(end - start, overlap, 0, 'endpoints', out.device, out.dtype)[:, None, None]   # (T_win, 1, 1)
    out[:, :, start:end] = out[:, :, start:end] * (1 - w) + y * w
    return out


def blend_spans(parts, spans, chunk):
    """Blend chunks (B, C, chunk, H, W) decoded over overlapping frame `spans`; yield each run of final frames.

    Weights along time: tile_weights_1d (raised-cosine ramps over each overlap, summing to one per frame),
    accumulated in float32, each run cast back to the chunk's dtype. Frames before the next chunk's start
    are final once the current chunk is added.
    """
    starts = tuple(a for a, _ in spans)
    weights = tile_weights_1d(starts, chunk, spans[-1][1])             # (n_chunks, chunk), float32 on the CPU
    acc, acc_start = None, 0                                           # weighted sum of frames [acc_start, a + chunk)
    for k, ((a, b), frames) in enumerate(zip(spans, parts)):
        part = frames.float() * weights[k].to(frames.device).view(1, 1, -1, 1, 1)
        if acc is None:
            acc = part
        else:
            shared = acc_start + acc.shape[2] - a                       # frames in both the sum and this chunk
            acc = torch.cat([acc[:, :, :a - acc_start], acc[:, :, a - acc_start:] + part[:, :, :shared],
                             part[:, :, shared:]], dim=2)
        final = (spans[k + 1][0] if k + 1 < len(spans) else b) - acc_start
        yield acc[:, :, :final].to(frames.dtype)
        acc, acc_start = acc[:, :, final:], acc_start + final


def tiled_apply(fn, z, tile, overlap, scale):
    """Apply fn: (N, C, h, w) -> (N, C', h·scale, w·scale) on overlapping tiles of z and blend them.

    Tiles of `tile` pixels step by tile − overlap (the last flush with the end); each output tile is
    weighted by 'linear' ramps over overlap·scale pixels on its inner sides, and the sum is divided by
    the summed weights. Returns float32 (N, C', H·scale, W·scale).
    """
    h, w = z.shape[-2:]
    out = weight = None
    for y in sliding_starts(h, tile, tile - overlap):
        for x in sliding_starts(w, tile, tile - overlap):
            part = fn(z[..., y:y + tile, x:x + tile])                       # (N, C', th·s, tw·s)
            if out is None:
                out = part.new_zeros(*part.shape[:2], h * scale, w * scale, dtype=torch.float32)
                weight = torch.zeros(h * scale, w * scale, device=part.device)
            o = overlap * scale
            wy = edge_weights(part.shape[-2], o if y > 0 else 0, o if y + tile < h else 0, 'linear',
                              part.device, torch.float32)
            wx = edge_weights(part.shape[-1], o if x > 0 else 0, o if x + tile < w else 0, 'linear',
                              part.device, torch.float32)
            wt = wy[:, None] * wx[None, :]
            sy, sx = slice(y * scale, y * scale + part.shape[-2]), slice(x * scale, x * scale + part.shape[-1])
            out[..., sy, sx] += part.float() * wt
            weight[sy, sx] += wt
    return out / weight
