"""Attention of the refiner DiT: multi-head self-attention over full 3D or grid (contiguous) token windows.

Tokens are ordered (frame, row, column) over a (T, h, w) grid; RECIPE §4.5. Backends: 'sdpa' (torch's
scaled_dot_product_attention, flash/efficient kernels), 'math' (the plain reference), 'xformers' (optional).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

ATTN_BACKENDS = ('sdpa', 'math', 'xformers')


def attention(q, k, v, backend='sdpa'):
    """softmax(q·kᵀ/√d)·v for (b, heads, n, d) tensors; 'sdpa' (flash/efficient kernels), 'math', 'xformers'."""
    scale = q.shape[-1] ** -0.5
    if backend == 'sdpa':
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if backend == 'math':                                                 # plain reference path
        weights = (q @ k.transpose(-2, -1) * scale).float().softmax(dim=-1).to(q.dtype)
        return weights @ v
    if backend == 'xformers':
        try:
            from xformers.ops import memory_efficient_attention
        except ImportError:
            raise ImportError("models/attention.py: attn_backend='xformers' needs the optional package xformers; "
                              "install it (.venv/bin/pip install xformers) or use attn_backend='sdpa'") from None
        q, k, v = (rearrange(a, 'b h n d -> b n h d') for a in (q, k, v))
        return rearrange(memory_efficient_attention(q, k, v, scale=scale), 'b n h d -> b h n d')
    raise ValueError(f"models/attention.py: attn_backend={backend!r} is unknown; use one of {ATTN_BACKENDS}")


def _axis_runs(n, w):
    """Split an axis of n tokens into windows of w: [(start, stop, window)], the last run shorter if w ∤ n."""
    w = n if w is None else min(w, n)
    full = n // w * w
    return [(0, full, w)] + ([(full, n, n - full)] if full < n else [])


def grid_attention(qkv, grid, window, attend):
    """Attention inside contiguous (wt, wh, ww) token windows of the (T, h, w) grid (RECIPE §4.5).

    qkv (B, T·h·w, 3D) -> (B, T·h·w, D). A window entry None spans its whole axis. Windows are not
    dilated. Where a window size does not divide the axis the last window along it is shorter.
    """
    T, H, W = grid
    runs = [_axis_runs(n, w) for n, w in zip(grid, window)]
    if all(len(r) == 1 for r in runs):                                   # regular tiling: one regroup
        wt, wh, ww = (r[0][2] for r in runs)
        if (wt, wh, ww) == (T, H, W):
            return attend(qkv)                                           # full 3D attention
        pattern = 'b (nt wt nh wh nw ww) c -> (b nt nh nw) (wt wh ww) c'
        out = attend(rearrange(qkv, pattern, wt=wt, wh=wh, ww=ww, nh=H // wh, nw=W // ww))
        return rearrange(out, '(b nt nh nw) (wt wh ww) c -> b (nt wt nh wh nw ww) c',
                         b=qkv.shape[0], nh=H // wh, nw=W // ww, wt=wt, wh=wh, ww=ww)
    qkv = rearrange(qkv, 'b (t h w) c -> b t h w c', t=T, h=H, w=W)
    out = qkv.new_empty(*qkv.shape[:4], qkv.shape[-1] // 3)              # (B, T, h, w, D)
    for t0, t1, wt in runs[0]:                                           # ≤ 8 regular regions
        for h0, h1, wh in runs[1]:
            for w0, w1, ww in runs[2]:
                region = qkv[:, t0:t1, h0:h1, w0:w1]
                nt, nh, nw = (t1 - t0) // wt, (h1 - h0) // wh, (w1 - w0) // ww
                o = attend(rearrange(region, 'b (nt wt) (nh wh) (nw ww) c -> (b nt nh nw) (wt wh ww) c',
                                     wt=wt, wh=wh, ww=ww))
                out[:, t0:t1, h0:h1, w0:w1] = rearrange(
                    o, '(b nt nh nw) (wt wh ww) c -> b (nt wt) (nh wh) (nw ww) c', nt=nt, nh=nh, nw=nw, wt=wt, wh=wh)
    return rearrange(out, 'b t h w c -> b (t h w) c')


class Attention(nn.Module):
    """Multi-head self-attention over token windows; q, k, v from one Linear, heads own contiguous channels."""

    def __init__(self, dim, num_heads, fp32_attention=False, backend='sdpa'):
        super().__init__()
        self.num_heads = num_heads
        self.fp32_attention = fp32_attention
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def _attend(self, qkv):
        """(b, n, 3D) -> (b, n, D) attention over all n tokens."""
        q, k, v = rearrange(qkv, 'b n (three h d) -> three b h n d', three=3, h=self.num_heads)
        if self.fp32_attention and q.dtype != torch.float32:              # upcast as the original did
            with torch.autocast(q.device.type, enabled=False):
                out = attention(q.float(), k.float(), v.float(), self.backend).to(q.dtype)
        else:
            out = attention(q, k, v, self.backend)                       # (b, heads, n, d)
        return rearrange(out, 'b h n d -> b n (h d)')

    def forward(self, x, grid, window):
        """x (B, T·h·w, D) over a (T, h, w) token grid -> (B, T·h·w, D), attending inside `window`s."""
        qkv = self.qkv(x)                                                # (B, T·h·w, 3D)
        return self.proj(grid_attention(qkv, grid, window, self._attend))  # (B, T·h·w, D)


def attention_windows(attn_strides, lats_per_vid, grid):
    """Per layer [ts, xs] -> contiguous windows (L/ts frames, G/xs rows, G/xs cols) of tokens; None -> whole axes.

    ts or xs = -1 puts one window on every position of that axis (windows of 1 frame / 1 token) at any L and G.
    """
    size = lambda n, s: 1 if s == -1 else n // s  # noqa: E731
    return [(None, None, None) if s is None else (size(lats_per_vid, s[0]), size(grid, s[1]), size(grid, s[1]))
            for s in attn_strides]
