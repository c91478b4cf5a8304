"""The plan that fits a reconstruction's predicted peak memory under a budget.

    w = Workload.from_plan(frame_plan, frames=T, cfg=cfg, refine=True, metrics=True, device='cpu', dtype='fp32')
    plan = plan_memory(w, budget=parse_size('2.5GB'), base=bytes_in_use_now)   # MemoryError: nothing fits
    print(plan.line())      # predicted peak 2.31 GB: chunk 16 frames, DiT tiles 4 at a time, VAE chunk 4, VAE tiles off

The planner keeps HEADROOM of the budget for the model's error and gives up first what leaves the frames unchanged
(chunk frames, DiT tiles per call, x264 look-ahead), then SVD decode tiles, then shorter SVD decode chunks; for
another autoencoder, the whole clip, then windows from the longest. The model it predicts with (Workload,
Settings, predict) is tools/recon/memory_model.py and what the machine has and uses (parse_size, bytes_in_use,
default_budget, machine_memory) tools/recon/machine.py, both importable from here too. Sizes are in bytes; GB
means 10⁹ bytes.
"""
import math
from dataclasses import dataclass, replace

from tools.recon.machine import (CUDA_CONTEXT, bytes_in_use, default_budget, machine_memory,  # noqa: F401 (its API)
                                 parse_size, release_freed_memory_to_os)
from tools.recon.memory_model import (BASE_VARIATION, CALIBRATION, DTYPE_BYTES, HEADROOM,  # noqa: F401 (its API)
                                      WRITER_LOOKAHEAD, Prediction, Settings, Workload, _frames, autoencoder_bytes,
                                      autoencoder_frames, chunk_of, chunks_ahead, dit_tiles, gb, halvings, predict,
                                      shorter_vae_chunks, stage_bytes, writer_threads)
from tools.video.frames import plan as make_plan


class PlanError(MemoryError):
    """No chunk/tile setting fits the budget; the message is one line naming the budget and the fix."""


def candidates(w, chunk_frames=16):
    """Settings from the least to the most intrusive: frames unchanged first (chunk frames, DiT tile batch, then
    a shorter encoder look-ahead: same frames, other bit allocation), then SVD tiles (close to untiled), then
    shorter SVD chunks (each frame sees fewer neighbours). Another autoencoder: the whole clip, then windows
    from the longest (1 + f·k frames, each a clip of its own: the latent restarts at every window)."""
    if w.autoencoder:
        yield from _autoencoder_candidates(w, chunk_frames)
        return
    tiles = dit_tiles(w)[0] if w.refine else 1
    options = [(w.vae_chunk, w.vae_tile, la) for la in (None, 0)]
    if w.refine:
        options += [(w.vae_chunk, t, 0) for t in (64, 32) if t * 8 < max(w.model) and (not w.vae_tile or t < w.vae_tile)]
        options += [(k, options[-1][1], 0) for k in shorter_vae_chunks(w) if k < w.frames]   # else: no change
    for k, tile, la in options:
        # shorter render chunks than one SVD decode chunk save nothing (the decode stream holds one), unless asked
        low = min(k, chunk_frames) if w.refine else 1
        chunks = sorted({max(c, low) for c in halvings(chunk_frames)}, reverse=True)
        group = [Settings(c, None if n == tiles else n, k, tile, la) for c in chunks for n in halvings(tiles)]
        yield sorted(group, key=lambda s: (-(chunk_of(w, s)), -(s.dit_tile_batch or tiles)))


def _autoencoder_candidates(w, chunk_frames):
    f, chunks = w.autoencoder[0], halvings(chunk_frames)
    for la in (None, 0):
        yield [Settings(c, None, w.vae_chunk, 0, la) for c in chunks]
    for k in range((w.frames - 2) // f if f > 1 else 0, 0, -1):            # windows shorter than the clip
        yield [Settings(c, None, w.vae_chunk, 0, 0, window=1 + f * k) for c in chunks]


@dataclass(frozen=True)
class MemoryPlan:
    settings: Settings
    prediction: Prediction
    budget: int
    workload: Workload

    def line(self):
        s, w = self.settings, self.workload
        parts = [f'chunk {_frames(self.chunk())}']
        if w.refine:
            tiles = dit_tiles(w)[0]
            parts += [f'DiT tiles {s.dit_tile_batch or tiles} at a time', f'VAE chunk {s.vae_chunk}',
                      f'VAE tiles {s.vae_tile} px' if s.vae_tile else 'VAE tiles off']
        if w.autoencoder and w.autoencoder[0] > 1:
            parts.append(f'windows of {s.window} frames' if s.window else 'the whole clip at once')
        if s.lookahead is not None:
            parts.append(f'encoder look-ahead {_frames(s.lookahead)}')
        return f'predicted peak {gb(self.prediction.peak)}: ' + ', '.join(parts)

    def chunk(self):
        """Frames per render chunk as recon runs them: the chunk setting, at most the clip."""
        return min(self.settings.chunk_frames, self.workload.frames)

    def to_dict(self):
        """What done.json records: the budget and predicted peak in bytes (budget None: none) and the settings
        (dit_tile_batch None: all of a window's tiles; vae_tile 0: off; lookahead in frames); for another
        autoencoder its window in frames (None: the whole clip)."""
        s = self.settings
        return {'budget': self.budget, 'predicted_peak': self.prediction.peak, 'chunk_frames': self.chunk(),
                'dit_tile_batch': s.dit_tile_batch, 'vae_chunk': s.vae_chunk, 'vae_tile': s.vae_tile,
                'lookahead': s.encoder_lookahead, **({'window': s.window} if self.workload.autoencoder else {})}


def plan_memory(w, budget=None, base=0, chunk_frames=16, cal=CALIBRATION, limit=None):
    """The least intrusive Settings whose predicted peak fits `budget` bytes less HEADROOM (None: the defaults,
    or, when they would not fit `limit`, a plan for `limit`); within a group, the largest chunk, then the largest DiT tile batch. PlanError (one line):
    `limit` (bytes: the machine's memory, machine_memory) less HEADROOM is below the smallest plan's peak
    (the frame size is refused whatever the budget, and the largest --size that fits is named), or no plan
    fits the budget (a larger budget and the largest --size that fits it are named)."""
    default = Settings(chunk_frames, None, w.vae_chunk, w.vae_tile, None)
    net = lambda b: b * (1 - HEADROOM)
    if limit is not None and predict(w, default, base, cal).peak > net(limit):
        need = _smallest(w, base, chunk_frames, cal).prediction.peak
        if need > net(limit):
            fix = _size_fix(w, net(min(limit, budget or limit)), base, chunk_frames, cal)   # fits both
            fix += f' (to fit --max-memory {gb(budget)})' if fix and budget and budget < limit else ''
            raise PlanError(f'{_size_flag(w)}: {_frames(w.frames)} at {w.model[0]}x{w.model[1]} from '
                            f'{w.source[0]}x{w.source[1]} need {gb(need)} even in the smallest plan ({gb(base)} of it '
                            f"before the work), more than this machine's {gb(limit)} of memory less the "
                            f'{HEADROOM:.0%} headroom ({gb(net(limit))}){"; " + fix if fix else ""}')
    if budget is None:
        if limit is None or predict(w, default, base, cal).peak <= net(limit):
            return MemoryPlan(default, predict(w, default, base, cal), None, w)
        budget = limit                                  # the defaults would not fit the machine: plan for it
    for group in candidates(w, chunk_frames):
        for s in group:
            p = predict(w, s, base, cal)
            if p.peak <= net(budget):
                return MemoryPlan(s, p, budget, w)
    smallest = _smallest(w, base, chunk_frames, cal)
    ask = math.ceil((smallest.prediction.peak / (1 - HEADROOM) + BASE_VARIATION * base) / 1e7) * 1e7   # 0.01 GB up
    fixes = ''.join(f', or {fix}' for fix in _other_fixes(w, budget, base, chunk_frames, cal))
    raise PlanError(f'--max-memory {gb(budget)}: {gb(net(budget))} after the {HEADROOM:.0%} headroom, but '
                    f'{_needs(smallest, base)}; raise --max-memory to {gb(ask)}{fixes}')


def _needs(plan, base):
    w = plan.workload
    return (f'even the smallest plan ({plan.line().split(": ", 1)[1]}) needs {gb(plan.prediction.peak)} '
            f'({gb(base)} of it before the work) for {_frames(w.frames)} at {w.model[0]}x{w.model[1]} from '
            f'{w.source[0]}x{w.source[1]}')


def _smallest(w, base, chunk_frames, cal):
    return min((MemoryPlan(s, predict(w, s, base, cal), None, w) for g in candidates(w, chunk_frames) for s in g),
               key=lambda p: p.prediction.peak)


def _size_flag(w):
    """How the frame size was asked for: '--size N' (0: native), or the latent's size when decoding one."""
    size = f'--size {w.plan.size}' if w.plan is not None else 'its --size'
    size += ' (the native size)' if w.plan is not None and w.plan.size == 0 else ''
    return size if w.original else f'its latent (encoded at {size})'


def at_size(w, size):
    """Workload w with its frames planned at --size `size` (short side, pixels), or None where that size is
    impossible for its frame settings; needs w.plan (tools/video/frames.py FramePlan)."""
    p = w.plan
    try:
        fp = make_plan(*p.source, size=size, square=p.square, preprocess=p.preprocess, start=p.start,
                       stride=p.stride, num_frames=p.num_frames, upscale=p.upscale, multiple=p.multiple)
    except ValueError:
        return None
    return replace(w, plan=fp, model=tuple(fp.model), output=tuple(fp.output))


def largest_size(w, fits, base=0, chunk_frames=16, cal=CALIBRATION):
    """The largest --size, a multiple of 32 below w's, whose smallest plan's peak is at most `fits` bytes, or
    None (none does, or w has no frame plan)."""
    if w.plan is None:
        return None
    def ok(k):
        v = at_size(w, 32 * k)
        return v is not None and _smallest(v, base, chunk_frames, cal).prediction.peak <= fits
    lo, hi = 0, (min(w.plan.resized) - 1) // 32                    # sizes 32*lo (0: none) .. 32*hi
    while lo < hi:                                                # the peak grows with the size
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return 32 * lo or None


def _size_fix(w, fits, base, chunk_frames, cal):
    """'use --size S or lower' (a saved latent: encoding again at it) for the largest lower size that fits,
    or ''."""
    size = largest_size(w, fits, base, chunk_frames, cal)
    if size is None:
        return ''
    return f'use --size {size} or lower' if w.original else f'encode the video again at --size {size} or lower'


def _other_fixes(w, budget, base, chunk_frames, cal):
    """The frame settings that would fit `budget`: the largest lower --size (for a saved latent, an encoding at
    it; without a frame plan: half the model's size) or, when outputs are larger than the model frames,
    --upscale."""
    fits = lambda v: _smallest(v, base, chunk_frames, cal).prediction.peak <= budget * (1 - HEADROOM)
    half = tuple(max(32, x // 64 * 32) for x in w.model)
    fixes = []
    if w.plan is not None:
        fixes += [f for f in [_size_fix(w, budget * (1 - HEADROOM), base, chunk_frames, cal)] if f]
    elif w.model != half and fits(replace(w, model=half, output=half if w.output == w.model else w.output)):
        fixes.append('lower --size' if w.original else 'encode the video again at a lower --size')
    if w.original and w.output[0] * w.output[1] > w.model[0] * w.model[1] and fits(replace(w, output=w.model)):
        fixes.append("--upscale (outputs at the model's size)")
    return fixes
