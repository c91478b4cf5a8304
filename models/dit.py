"""Refiner DiT: PixArt-Σ XL/2 (adaLN-single, no text) with 3D and grid attention over video latents.

Reads top to bottom: timestep embedder → patch embedder → position embedding → block (attention in
models/attention.py) → final layer → model (config checks, forward, windowed inference) → size preset →
random weights. Numerics follow ../shared/golden/RECIPE.md (§2 weight recipe, §4 forward, §5 windowed
inference; windows and tiles in models/tiling.py); parameter names follow PixArt so the released
`s1024.effn-f32.pth` loads unchanged (models/weights.py load_dit_checkpoint).

Tokens are ordered (frame, row, column). Shapes: B clips, T frames, h×w tokens per frame, D channels.
"""
import functools
import inspect
import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from models.attention import ATTN_BACKENDS, Attention, attention_windows
from models.tiling import TILE_BLENDS, blend_tiles, merge_window, tile_starts, window_tile_calls

LATENT_CHANNELS = 4          # noisy SVD-latent channels at the front of the input; eps has as many


# ---- Timestep embedder ---------------------------------------------------------------------------
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


# ---- Patch embedder ------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """(B, C, T, H, W) -> (B, T·h·w, D): a stride-p p×p conv applied to every frame."""

    def __init__(self, patch_size, in_channels, hidden_size):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size, bias=True)

    def forward(self, x):
        b = x.shape[0]
        x = self.proj(rearrange(x, 'b c t h w -> (b t) c h w'))         # (B·T, D, h, w)
        return rearrange(x, '(b t) d h w -> b (t h w) d', b=b)          # (B, T·h·w, D)


# ---- Position embedding --------------------------------------------------------------------------
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


# ---- Block and final layer (adaLN-single) --------------------------------------------------------
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


# ---- Model config checks -------------------------------------------------------------------------
def check_attn_strides(strides, depth, lats_per_vid=None, grid=None, key='attn_strides',
                       where='models/dit.py: model config: '):
    """Raise a one-line ValueError unless `strides` fits a model of `depth` layers; None (all full 3D) passes.

    One entry per layer: None (full 3D attention) or [ts, xs], positive integers or -1 (one window per frame /
    token). Given lats_per_vid and grid (tokens per side), ts must divide lats_per_vid and xs the grid.
    Messages start with `where` and name the value `key` ('model.attn_strides' in a config; its depth is then
    'model.depth').
    """
    if strides is None:
        return
    depth_key = key.replace('attn_strides', 'depth')
    if len(strides) != depth:
        raise ValueError(f"{where}{key} has {len(strides)} entries but {depth_key} is {depth}; give one "
                         f"entry ([ts, xs] or None) per layer")
    bad = lambda v, n: v != -1 and n % v  # noqa: E731
    for i, s in enumerate(strides):
        if s is None:
            continue
        if not isinstance(s, (list, tuple)) or len(s) != 2 or not all(
                isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1) for v in s):
            raise ValueError(f"{where}{key}[{i}] = {s!r}; each entry must be None or [ts, xs] with positive "
                             f"integers (or -1: one window per frame / token)")
        if lats_per_vid is not None and (bad(s[0], lats_per_vid) or bad(s[1], grid)):
            raise ValueError(f"{where}{key}[{i}]={list(s)} must be [ts, xs] with ts dividing "
                             f"lats_per_vid={lats_per_vid} and xs dividing the token grid {grid} (or -1: one "
                             f"window per frame / token); change the stride")


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
    check_attn_strides(strides, depth, lats_per_vid, input_size // patch_size, where=f"{where}: ")
    if attn_backend not in ATTN_BACKENDS:
        raise ValueError(f"{where}: attn_backend={attn_backend!r} is unknown; use one of {ATTN_BACKENDS}")


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


# ---- Model ---------------------------------------------------------------------------------------
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
        _check_config(input_size, patch_size, in_channels, hidden_size, depth, num_heads, attn_strides,
                      lats_per_vid, attn_backend)
        attn_strides = [None] * depth if attn_strides is None else [None if s is None else tuple(s)
                                                                      for s in attn_strides]
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

    @classmethod
    def from_config(cls, model_cfg):
        """The network from a config's `model` dict (its keys are VideoDiT's keyword arguments), training init.

        ValueError (one line) for a key VideoDiT does not take. Weights: models/weights.py build_dit.
        """
        cfg = dict(model_cfg)
        known = set(inspect.signature(cls).parameters)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"models/dit.py: model config keys {unknown} are not VideoDiT arguments; remove them "
                             f"(valid: {sorted(known)})")
        return cls(**cfg)

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
    def forward_windowed(self, x, t, tile_blend='smooth', tile_batch=None, split=None):
        """eps (B, 4, T, H, W) for any length and size: temporal windows × spatial tiles (RECIPE §5).

        Temporal windows of `lats_per_vid` frames step by half a window and are merged as the original
        did (linear ramp over the overlap). Spatial tiles of `input_size` per axis, step round(0.75·S);
        'smooth' blends overlaps with raised-cosine weights that sum to one, 'overwrite' reproduces the
        original's last-tile-wins rule. Shorter clips and axes smaller than a tile run directly (an odd
        size is replicate-padded to the patch size and cropped back). All tiles of one temporal window
        run as one batch, or in chunks of `tile_batch` tiles. Plans and blends: models/tiling.py.
        split: a models.parallel.WorkSplit sharing the forwards (one per window and tile chunk) among the
        processes of a launch, each gathered by all; None or one process: all forwards here.
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
        boxes = [(r, c) for r in rows for c in cols]
        calls = window_tile_calls(n, len(boxes), L, tile_batch)
        forward = functools.partial(self._forward_call, x, temb, c6, boxes, (min(S, Hp), min(S, Wp)))
        eps = split.map(forward, calls) if split is not None else map(forward, calls)
        out = x.new_zeros(B, LATENT_CHANNELS, n, Hp, Wp)
        prev_end = 0
        for (s, e), results in itertools.groupby(zip(calls, eps), key=lambda call_eps: call_eps[0][:2]):
            parts = [y for _, y in results]                              # the window's calls, in tile order
            if len(boxes) > 1:
                parts = rearrange(torch.cat(parts), '(n b) c t h w -> n b c t h w', b=B)   # (n, B, 4, T, th, tw)
                y = blend_tiles(x.new_zeros(B, LATENT_CHANNELS, e - s, Hp, Wp), parts, rows, cols, tile_blend)
            else:
                y = parts[0]
            merge_window(out, y, s, prev_end)                            # linear ramp over the overlap
            prev_end = e
        return out[..., :H, :W]

    def _forward_call(self, x, temb, c6, boxes, tile, call):
        """eps of one DiT call (s, e, i, k) (models.tiling.window_tile_calls): frames [s, e) of x, tiles
        boxes[i:i + k] (rows outer, columns inner) stacked tile-major -> (k·B, 4, e − s, th, tw); the whole
        window (B, 4, e − s, H, W) when there is one tile."""
        s, e, i, k = call
        if len(boxes) == 1:
            return self.forward_conditioned(x[:, :, s:e], temb, c6)[:, :LATENT_CHANNELS]
        th, tw = tile
        tiles = torch.cat([x[:, :, s:e, r:r + th, c:c + tw] for r, c in boxes[i:i + k]])
        return self.forward_conditioned(tiles, temb.repeat(k, 1), c6.repeat(k, 1))[:, :LATENT_CHANNELS]

    # ---- input checks -------------------------------------------------------------------------------
    def _check_input(self, x, padded=False):
        """One-line ValueError unless x is (B, in_channels, T, H, W), H and W multiples of the patch unless padded."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"models/dit.py: DiT input must be (B, {self.in_channels}, T, H, W) (noisy latent + "
                             f"conditioning on channels), got {tuple(x.shape)}; concatenate on dim 1")
        if not padded and (x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size):
            raise ValueError(f"models/dit.py: DiT input height and width must be multiples of patch_size="
                             f"{self.patch_size}, got {tuple(x.shape[-2:])}; pad them or use forward_windowed")


# ---- Size preset and random weights --------------------------------------------------------------
def VideoDiT_XL_2(**kwargs):
    """The released size: PixArt-Σ XL/2 (depth 28, hidden 1152, 16 heads, patch 2)."""
    return VideoDiT(depth=28, hidden_size=1152, patch_size=2, num_heads=16, **kwargs)


@torch.no_grad()
def init_random_weights_(model, seed):
    """Seeded random weights (RECIPE §2): sorted state-dict names, one CPU generator, randn·0.02 each."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for name in sorted(state):
        state[name].copy_(torch.randn(state[name].shape, generator=g) * 0.02)
    return model
