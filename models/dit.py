"""Refiner DiT: PixArt-Σ XL/2 (adaLN-single, no text) with 3D and grid attention over video latents.

Reads top to bottom: timestep embedder → patch embedder → position embedding → attention (full 3D and
grid) → block → final layer → model (forward, windowed inference) → size presets → weights.
Numerics follow ../shared/golden/RECIPE.md (§2 weight recipe, §4 forward, §5 windowed inference);
parameter names follow PixArt so the released `s1024.effn-f32.pth` loads unchanged.

Tokens are ordered (frame, row, column). Shapes: B clips, T frames, h×w tokens per frame, D channels.
"""
import functools
import inspect
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

LATENT_CHANNELS = 4          # noisy SVD-latent channels at the front of the input; eps has as many
ATTN_BACKENDS = ('sdpa', 'math', 'xformers')
TILE_BLENDS = ('smooth', 'overwrite')


# --------------------------------------------------------------------------------------------------
# Timestep embedder
# --------------------------------------------------------------------------------------------------
def timestep_frequencies(t, dim=256, max_period=10000):
    """(B,) timesteps -> (B, dim) [cos(t·f_k) | sin(t·f_k)], f_k = exp(-ln(max_period)·k/(dim/2)) (ADM/DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Scalar timesteps -> (B, D): 256 sinusoidal frequencies, then Linear-SiLU-Linear."""

    def __init__(self, hidden_size, frequency_size=256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t):
        freq = timestep_frequencies(t, self.frequency_size)              # (B, 256) float32
        return self.mlp(freq.to(self.mlp[0].weight.dtype))              # (B, D)


# --------------------------------------------------------------------------------------------------
# Patch embedder
# --------------------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """(B, C, T, H, W) -> (B, T·h·w, D): a stride-p p×p conv applied to every frame."""

    def __init__(self, patch_size, in_channels, hidden_size):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size, bias=True)

    def forward(self, x):
        b = x.shape[0]
        x = self.proj(rearrange(x, 'b c t h w -> (b t) c h w'))         # (B·T, D, h, w)
        return rearrange(x, '(b t) d h w -> b (t h w) d', b=b)          # (B, T·h·w, D)


# --------------------------------------------------------------------------------------------------
# Position embedding
# --------------------------------------------------------------------------------------------------
def sincos_1d(pos, dim):
    """(N,) float64 positions -> (N, dim) [sin(p·ω_k) | cos(p·ω_k)], ω_k = 10000^(-k/(dim/2)) (MAE)."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = pos[:, None] * omega[None]                                     # (N, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def pos_embed_split(dim):
    """Channels of (time, column, row): 2·⌊D/6⌋ per spatial axis, the rest (≥ a third) for time."""
    spatial = 2 * (dim // 6)
    return dim - 2 * spatial, spatial, spatial


@functools.lru_cache(maxsize=16)
def video_pos_embed(frames, rows, cols, dim, pe_interpolation=1.0, device=None, dtype=torch.float32):
    """(T·h·w, D) sin-cos embedding of a token grid (RECIPE §4.3), computed in float64, frame-major.

    Channels [time | column | row] (384 each at D=1152): time uses the frame index f, space the token
    coordinates j (column) and i (row) divided by `pe_interpolation`.
    Other grid sizes: positions are the absolute token indices (no rescaling to the trained size, unlike
    PixArt-Σ's base-size rule). The refiner works at a fixed latent scale, so a smaller frame or shorter
    clip is a crop of a trained tile and gets exactly the embedding of that crop; larger grids extrapolate.
    """
    with torch.inference_mode(False):                 # cached, so it must also serve calls under autograd
        d_t, d_x, d_y = pos_embed_split(dim)
        f, i, j = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in (frames, rows, cols)), indexing='ij')
        emb = torch.cat([sincos_1d(f.flatten(), d_t),
                         sincos_1d(j.flatten() / pe_interpolation, d_x),
                         sincos_1d(i.flatten() / pe_interpolation, d_y)], dim=1)   # (T·h·w, D)
        return emb.to(device=device, dtype=dtype)


@torch.compiler.disable
def cached_pos_embed(grid, dim, pe_interpolation, device, dtype):
    """video_pos_embed from its cache, run eagerly under torch.compile (which would re-trace the float64 maths
    into every call); called first in forward_conditioned, so the compiled graph after it stays whole."""
    return video_pos_embed(*grid, dim, pe_interpolation, device, dtype)


# --------------------------------------------------------------------------------------------------
# Attention: full 3D and grid (contiguous windows)
# --------------------------------------------------------------------------------------------------
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
            raise ImportError("models/dit.py: attn_backend='xformers' needs the optional package xformers; "
                              "install it (.venv/bin/pip install xformers) or use attn_backend='sdpa'") from None
        q, k, v = (rearrange(a, 'b h n d -> b n h d') for a in (q, k, v))
        return rearrange(memory_efficient_attention(q, k, v, scale=scale), 'b n h d -> b h n d')
    raise ValueError(f"models/dit.py: attn_backend={backend!r} is unknown; use one of {ATTN_BACKENDS}")


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
        qkv = self.qkv(x)                                                # (B, T·h·w, 3D)
        return self.proj(grid_attention(qkv, grid, window, self._attend))  # (B, T·h·w, D)


# --------------------------------------------------------------------------------------------------
# Block and final layer (adaLN-single)
# --------------------------------------------------------------------------------------------------
def modulate(x, shift, scale):
    """adaLN modulation x·(1+scale)+shift (DiT eq. in §3.2; PixArt-α t2i_modulate), one fused pass over x."""
    return torch.addcmul(shift, x, 1 + scale)


def gated_residual(x, gate, y):
    """x + gate·y in one fused pass (the residual stream is the largest tensor of a block)."""
    return torch.addcmul(x, gate, y)


class Mlp(nn.Module):
    """fc1 → GELU (tanh approximation) → fc2."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate='tanh')
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """PixArt block without cross-attention: modulated attention and MLP, gated residuals (RECIPE §4.4)."""

    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, fp32_attention=False, attn_backend='sdpa'):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, fp32_attention, attn_backend)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size ** 0.5)

    def forward(self, x, c6, grid, window):
        m = self.scale_shift_table[None] + c6.reshape(x.shape[0], 6, -1)   # (B, 6, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = m.chunk(6, dim=1)    # each (B, 1, D)
        x = gated_residual(x, gate1, self.attn(modulate(self.norm1(x), shift1, scale1), grid, window))
        return gated_residual(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))   # (B, N, D)


class FinalLayer(nn.Module):
    """Modulated LayerNorm (own 2-row table + timestep embedding) → Linear to p·p·C_out per token."""

    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size ** 0.5)

    def forward(self, x, temb):
        shift, scale = (self.scale_shift_table[None] + temb[:, None]).chunk(2, dim=1)   # (B, 1, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))                 # (B, N, p·p·C)


# --------------------------------------------------------------------------------------------------
# Windowed inference plans (RECIPE §5)
# --------------------------------------------------------------------------------------------------
def frame_window_starts(n, length):
    """Temporal window starts: step length/2, the overrunning window moved to n-length; [0] if n ≤ length."""
    if n <= length:
        return [0]
    step, starts, s = max(length // 2, 1), [], 0
    while s + length < n:
        starts.append(s)
        s += step
    return starts + [n - length]


def tile_starts(size, tile):
    """Spatial tile starts: step round(0.75·tile) (half to even) while start+tile < size, then size-tile."""
    if size <= tile:
        return [0]
    step, starts, s = round(0.75 * tile), [], 0
    while s + tile < size:
        starts.append(s)
        s += step
    return starts + [size - tile]


def _ramp(n):
    """(n,) raised-cosine ramp sin²(π/2·(k+½)/n), strictly inside (0, 1); ramp + reversed ramp = 1."""
    return torch.sin(math.pi / 2 * (torch.arange(n, dtype=torch.float64) + 0.5) / n) ** 2


@functools.lru_cache(maxsize=64)
def tile_weights_1d(starts, tile, size, device=None, dtype=torch.float32):
    """(n_tiles, tile) smooth blend weights along one axis; they sum to one at every position.

    Each tile ramps (raised cosine) over its overlap with the previous and next tile; sides that touch
    the frame border keep full weight. The ramps are then normalised by their sum over tiles, so a
    separable product of two axes also sums to one.
    """
    with torch.inference_mode(False):                 # cached, so it must also serve calls under autograd
        raw = torch.ones(len(starts), tile, dtype=torch.float64)
        for k, s in enumerate(starts):
            if k > 0 and starts[k - 1] + tile > s:                       # ramp up over the previous tile
                raw[k, :starts[k - 1] + tile - s] = _ramp(starts[k - 1] + tile - s)
            if k + 1 < len(starts) and s + tile > starts[k + 1]:         # ramp down over the next tile
                raw[k, starts[k + 1] - s:] = _ramp(s + tile - starts[k + 1]).flip(0)
        total = torch.zeros(size, dtype=torch.float64)
        for k, s in enumerate(starts):
            total[s:s + tile] += raw[k]
        weights = torch.stack([raw[k] / total[s:s + tile] for k, s in enumerate(starts)])   # (n_tiles, tile)
        return weights.to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
def attention_windows(attn_strides, lats_per_vid, grid):
    """Per layer [ts, xs] -> contiguous windows (L/ts frames, G/xs rows, G/xs cols) of tokens; None -> whole axes.

    ts or xs = -1 puts one window on every position of that axis (windows of 1 frame / 1 token) at any L and G.
    """
    size = lambda n, s: 1 if s == -1 else n // s  # noqa: E731
    return [(None, None, None) if s is None else (size(lats_per_vid, s[0]), size(grid, s[1]), size(grid, s[1]))
            for s in attn_strides]


class VideoDiT(nn.Module):
    """PixArt-Σ-style DiT on video latents: x (B, C_in, T, H, W), t (B,) -> (B, 8, T, H, W) = [eps | v].

    `attn_strides[i]` = [ts, xs] makes layer i attend inside contiguous windows of lats_per_vid/ts frames ×
    (G/xs)² tokens (G = input_size/patch_size), -1 = windows 1 frame / 1 token wide; None = full 3D attention
    over the clip. forward() takes any T, H, W (multiples of the patch): windows keep that token size (the last
    one along an axis is shorter where it does not divide) and the position embedding is the actual grid's
    (see video_pos_embed).
    """

    def __init__(self, input_size, patch_size=2, in_channels=20, hidden_size=1152, depth=28, num_heads=16,
                 mlp_ratio=4.0, learn_sigma=True, pe_interpolation=1.0, attn_strides=None, lats_per_vid=8,
                 fp32_attention=False, grad_checkpointing=False, attn_backend='sdpa'):
        super().__init__()
        attn_strides = [None] * depth if attn_strides is None else [None if s is None else tuple(s)
                                                                      for s in attn_strides]
        _check_config(input_size, patch_size, in_channels, hidden_size, depth, num_heads, attn_strides,
                      lats_per_vid, attn_backend)
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.hidden_size, self.num_heads, self.lats_per_vid = hidden_size, num_heads, lats_per_vid
        self.out_channels = LATENT_CHANNELS * 2 if learn_sigma else LATENT_CHANNELS
        self.pe_interpolation = float(pe_interpolation)
        self.attn_strides = attn_strides
        self.grad_checkpointing = grad_checkpointing
        self.windows = attention_windows(attn_strides, lats_per_vid, input_size // patch_size)

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))   # adaLN-single
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio, fp32_attention, attn_backend)
                                     for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        """Training init (PixArt-α): xavier Linears, N(0, 0.02) timestep MLP and t_block, zero output layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.t_block[1].weight, std=0.02)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def set_attn_backend(self, backend):
        """Switch every attention layer to 'sdpa', 'math' (plain reference) or 'xformers'."""
        if backend not in ATTN_BACKENDS:
            raise ValueError(f"models/dit.py: attn_backend={backend!r} is unknown; use one of {ATTN_BACKENDS}")
        for block in self.blocks:
            block.attn.backend = backend
        return self

    # ---- forward ----------------------------------------------------------------------------------
    def condition(self, t, batch, device):
        """t (scalar or (B,), one per clip) -> timestep embedding (B, D) and block modulation (B, 6D)."""
        t = _timesteps(t, batch, device)
        temb = self.t_embedder(t)                                        # (B, D)
        return temb, self.t_block(temb)                                  # (B, 6D)

    def forward(self, x, t, as_images=False):
        """x (B, C_in, T, H, W), t (B,) -> (B, 8, T, H, W); as_images: attention stays inside each frame."""
        self._check_input(x)
        temb, c6 = self.condition(t, x.shape[0], x.device)
        return self.forward_conditioned(x, temb, c6, as_images)

    def forward_conditioned(self, x, temb, c6, as_images=False):
        """forward() with the timestep embedding (B, D) and modulation (B, 6D) already computed."""
        B, _, T, H, W = x.shape
        p = self.patch_size
        grid = (T, H // p, W // p)
        pos = cached_pos_embed(grid, self.hidden_size, self.pe_interpolation, x.device,
                               self.x_embedder.proj.weight.dtype)       # (T·h·w, D), first: see cached_pos_embed
        x = self.x_embedder(x) + pos                                     # (B, T·h·w, D)
        for block, window in zip(self.blocks, self.windows):
            if as_images:                                                # one frame per window
                window = (1,) + window[1:]
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, c6, grid, window, use_reentrant=False)
            else:
                x = block(x, c6, grid, window)                           # (B, T·h·w, D)
        x = self.final_layer(x, temb)                                    # (B, T·h·w, p·p·C_out)
        return rearrange(x, 'b (t h w) (p q c) -> b c t (h p) (w q)', t=T, h=H // p, w=W // p, p=p, q=p)

    # ---- windowed inference (RECIPE §5) -------------------------------------------------------------
    def forward_windowed(self, x, t, tile_blend='smooth', tile_batch=None):
        """eps (B, 4, T, H, W) for any length and size: temporal windows × spatial tiles (RECIPE §5).

        Temporal windows of `lats_per_vid` frames step by half a window and are merged as the original
        did (linear ramp over the overlap). Spatial tiles of `input_size` per axis, step round(0.75·S);
        'smooth' blends overlaps with raised-cosine weights that sum to one, 'overwrite' reproduces the
        original's last-tile-wins rule. Shorter clips and axes smaller than a tile run directly (an odd
        size is replicate-padded to the patch size and cropped back). All tiles of one temporal window
        run as one batch, or in chunks of `tile_batch` tiles.
        """
        if tile_blend not in TILE_BLENDS:
            raise ValueError(f"models/dit.py: tile_blend={tile_blend!r} is unknown; use 'smooth' or 'overwrite'")
        self._check_input(x, padded=True)
        B, _, n, H, W = x.shape
        temb, c6 = self.condition(t, B, x.device)                        # once per call, not per tile
        p, S, L = self.patch_size, self.input_size, self.lats_per_vid
        pad_h = (-H) % p if H < S else 0
        pad_w = (-W) % p if W < S else 0
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h, 0, 0), mode='replicate')
        Hp, Wp = H + pad_h, W + pad_w
        rows, cols = tuple(tile_starts(Hp, S)), tuple(tile_starts(Wp, S))
        th, tw = min(S, Hp), min(S, Wp)
        out = x.new_zeros(B, LATENT_CHANNELS, n, Hp, Wp)
        prev_end = 0
        for s in frame_window_starts(n, L):
            e = min(s + L, n)
            y = self._tiled(x[:, :, s:e], temb, c6, rows, cols, (th, tw), tile_blend, tile_batch)
            overlap = prev_end - s
            if overlap < 2:
                out[:, :, s:e] = y
            else:                                                        # linear ramp over the overlap
                w = torch.ones(e - s, device=x.device, dtype=out.dtype)
                w[:overlap] = torch.linspace(0, 1, overlap, device=x.device, dtype=out.dtype)
                w = w[:, None, None]                                     # (T_win, 1, 1)
                out[:, :, s:e] = out[:, :, s:e] * (1 - w) + y * w
            prev_end = e
        return out[..., :H, :W]

    def _tiled(self, x, temb, c6, rows, cols, tile, tile_blend, tile_batch):
        """eps (B, 4, T, H, W) of one temporal window from its spatial tiles."""
        B = x.shape[0]
        th, tw = tile
        boxes = [(r, c) for r in rows for c in cols]                     # rows outer, columns inner
        if len(boxes) == 1:
            return self.forward_conditioned(x, temb, c6)[:, :LATENT_CHANNELS]
        tiles = torch.cat([x[..., r:r + th, c:c + tw] for r, c in boxes])   # (n·B, C, T, th, tw) tile-major
        per = tile_batch or len(boxes)
        eps = []
        for i in range(0, len(boxes), per):                              # one call per chunk of tiles
            k = min(per, len(boxes) - i)
            y = self.forward_conditioned(tiles[i * B:(i + k) * B], temb.repeat(k, 1), c6.repeat(k, 1))
            eps.append(y[:, :LATENT_CHANNELS])
        eps = torch.cat(eps)                                             # (n·B, 4, T, th, tw)
        eps = rearrange(eps, '(n b) c t h w -> n b c t h w', b=B)
        out = x.new_zeros(B, LATENT_CHANNELS, *x.shape[2:])
        if tile_blend == 'overwrite':                                    # the last tile wins
            for (r, c), e in zip(boxes, eps):
                out[..., r:r + th, c:c + tw] = e
            return out
        wr = tile_weights_1d(rows, th, x.shape[-2], x.device, out.dtype)   # (n_rows, th)
        wc = tile_weights_1d(cols, tw, x.shape[-1], x.device, out.dtype)   # (n_cols, tw)
        for k, ((r, c), e) in enumerate(zip(boxes, eps)):
            w = wr[k // len(cols)][:, None] * wc[k % len(cols)][None, :]  # (th, tw)
            out[..., r:r + th, c:c + tw] += e * w
        return out

    # ---- input checks -------------------------------------------------------------------------------
    def _check_input(self, x, padded=False):
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"models/dit.py: DiT input must be (B, {self.in_channels}, T, H, W) (noisy latent + "
                             f"conditioning on channels), got {tuple(x.shape)}; concatenate on dim 1")
        if not padded and (x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size):
            raise ValueError(f"models/dit.py: DiT input height and width must be multiples of patch_size="
                             f"{self.patch_size}, got {tuple(x.shape[-2:])}; pad them or use forward_windowed")


def _timesteps(t, batch, device):
    """A python number, 0-dim or (B,) tensor -> (B,) tensor on device (one timestep per clip)."""
    if not torch.is_tensor(t):
        return torch.full((batch,), float(t), device=device)
    t = t.to(device)
    if t.ndim == 0 or t.shape == (1,):
        return t.reshape(()).expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"models/dit.py: t must be a number or shape ({batch},), one timestep per clip, got "
                         f"{tuple(t.shape)}; for per-frame timesteps pass the first frame's value per clip")
    return t


def _check_config(input_size, patch_size, in_channels, hidden_size, depth, num_heads, strides, lats_per_vid,
                  attn_backend):
    """One-line ValueErrors for configs the model cannot run."""
    where = "models/dit.py: model config"
    if input_size % patch_size:
        raise ValueError(f"{where}: input_size={input_size} must be a multiple of patch_size={patch_size}")
    if hidden_size % num_heads or hidden_size % 2 or hidden_size < 6:
        raise ValueError(f"{where}: hidden_size={hidden_size} must be even, ≥ 6 and a multiple of "
                         f"num_heads={num_heads}")
    if in_channels <= LATENT_CHANNELS:
        raise ValueError(f"{where}: in_channels={in_channels} must exceed the {LATENT_CHANNELS} latent channels "
                         f"(latent + conditioning, e.g. 20)")
    if len(strides) != depth:
        raise ValueError(f"{where}: attn_strides has {len(strides)} entries but depth={depth}; give one "
                         f"entry ([ts, xs] or None) per layer")
    grid = input_size // patch_size
    for i, s in enumerate(strides):
        bad = lambda v, n: v != -1 and (v < 1 or n % v)  # noqa: E731
        if s is not None and (len(s) != 2 or bad(s[0], lats_per_vid) or bad(s[1], grid)):
            raise ValueError(f"{where}: attn_strides[{i}]={list(s)} must be [ts, xs] with ts dividing "
                             f"lats_per_vid={lats_per_vid} and xs dividing the token grid {grid} (or -1: one "
                             f"window per frame / token); change the stride")
    if attn_backend not in ATTN_BACKENDS:
        raise ValueError(f"{where}: attn_backend={attn_backend!r} is unknown; use one of {ATTN_BACKENDS}")


# --------------------------------------------------------------------------------------------------
# Size presets and builders
# --------------------------------------------------------------------------------------------------
def VideoDiT_XL_2(**kwargs):
    """The released size: PixArt-Σ XL/2 (depth 28, hidden 1152, 16 heads, patch 2)."""
    return VideoDiT(depth=28, hidden_size=1152, patch_size=2, num_heads=16, **kwargs)


DIT_PRESETS = {'VideoDiT-XL/2': VideoDiT_XL_2}


def build_dit(model_cfg):
    """VideoDiT from a config's `model` dict (its keys are VideoDiT's keyword arguments)."""
    cfg = dict(model_cfg)
    known = set(inspect.signature(VideoDiT).parameters)
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"models/dit.py: model config keys {unknown} are not VideoDiT arguments; remove them "
                         f"(valid: {sorted(known)})")
    return VideoDiT(**cfg)


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def init_random_weights_(model, seed):
    """Seeded random weights (RECIPE §2): sorted state-dict names, one CPU generator, randn·0.02 each."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for name in sorted(state):
        state[name].copy_(torch.randn(state[name].shape, generator=g) * 0.02)
    return model


IGNORED_CHECKPOINT_KEYS = ('pos_embed',)       # computed at every call; older PixArt checkpoints store it


def load_dit_checkpoint(model, path):
    """Load a .pth (`state_dict` key, weights_only) or .safetensors DiT checkpoint strictly; returns model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: DiT checkpoint not found; fetch the released weights with "
                                f"`bash pretrained/download.sh` or fix weights.dit in the config")
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file
        state = load_file(str(path))
    elif path.suffix in ('.pth', '.pt', '.ckpt', '.bin'):
        state = torch.load(path, map_location='cpu', weights_only=True)
        if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
            state = state['state_dict']
    else:
        raise ValueError(f"{path}: unknown checkpoint format {path.suffix!r}; use .pth or .safetensors")
    state = {k: v for k, v in state.items() if k not in IGNORED_CHECKPOINT_KEYS}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        def names(keys):
            return f"{len(keys)} ({', '.join(keys[:4])}{', …' if len(keys) > 4 else ''})"
        raise ValueError(f"{path}: checkpoint does not match the model: missing {names(missing)}, unexpected "
                         f"{names(unexpected)}, shape mismatch {names(shapes)}; check model.depth/hidden_size/"
                         f"in_channels/learn_sigma in the config")
    model.load_state_dict(state, strict=True)
    return model
