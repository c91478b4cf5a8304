"""Peak memory of a reconstruction as arithmetic: the model tools/recon/memory.py plans with.

    w = Workload.from_plan(frame_plan, frames=T, cfg=cfg, refine=True, metrics=True, device='cpu', dtype='fp32')
    p = predict(w, Settings(chunk_frames=16), base=bytes_in_use_now)     # p.peak (bytes), p.phases, p.stages

The model (`predict`) adds the memory in use before the work (`base`: libraries, weights, on CUDA the context) to
the largest of the three phases of a reconstruction, each a sum of the buffers alive at once:

    encode  a chunk decoded as uint8 + fp32 model frames (this chunk and the next) + the compressor's activations
    refine  sampler state (the whole clip's latents, the only whole-clip tensors) + one DiT tile batch
    render  the next chunk decoded + the source shaped (uint8 original panel, fp32 for the metrics; this chunk
            and the next) + the model's fp32 outputs + x264's frames held + the whole-clip latent, and then
            the larger of two moments: a model stage (previewer, SVD decode chunk or one frame of metrics)
            while the write-behind holds one chunk of uint8 panels, or two chunks of panels at the hand-over
            while cmp.mp4 draws a frame. A clip of one chunk has nothing read ahead or written behind.

Every term is tensor bytes counted from the shapes (frame size, chunk and tile sizes, dtype) times a constant
measured by `python tools/benchmark.py memory --what stages` (tools/bench/memory.py fits and prints
CALIBRATION). On CPU all terms count (the process RSS); on CUDA only the device-side ones do (stage
activations, sampler state, metrics) plus the CUDA context, and the peak is torch.cuda.max_memory_allocated
plus the context. Sizes are in bytes; GB means 10⁹ bytes. What the machine has and uses (parse_size,
bytes_in_use, default_budget, machine_memory) is tools/recon/machine.py.

Another autoencoder (recon.py --autoencoder) has no such constants: its encode + decode peak is measured per
frame size on the machine (tools/recon/autoencoder_memory.py) and stands for the compressor's and previewer's
terms; the frames of a window are gathered on the host, and a decoded window is held while it is rendered.
"""
import math
import os
from dataclasses import dataclass

from models.tiling import tile_starts
from tools.recon.machine import CUDA_CONTEXT

DTYPE_BYTES = {'fp32': 4, 'bf16': 2, 'fp16': 2}

# Bytes per (frame · model pixel · dtype byte) of the compressor, previewer and SVD decoder activations
# and per (token · hidden unit · dtype byte) for the DiT; `state`: bytes per SVD latent pixel per frame of the
# sampler; `metrics`: per model pixel · channel of one frame's PSNR/SSIM; x264 per pixel of one open file:
# `encoder` + `encoder_frame` per look-ahead frame + `encoder_thread` per thread (after a warm-up, so libx264's
# one-time allocations are not counted). Fitted on CPU by `benchmark.py memory --what stages` (tiny config,
# exact peaks); `host` scales the host frame buffers.
CALIBRATION = dict(compressor=39.0, previewer=23.0, vae=210.0, dit=10.5, state=55.4, metrics=366.0, host=1.0,
                   encoder=64.4, encoder_frame=3.1, encoder_thread=2.3)
HEADROOM = 0.05                         # of the budget, for the model's error (measured within -6 %..+2 %, CPU)
BASE_VARIATION = 0.1                    # of the memory before the work, which varies between identical runs (0.98-1.04 GB)
WRITER_LOOKAHEAD = 10                   # recon's x264 look-ahead (frames); preset medium's 40 hold 216 MB per 720p file


def writer_threads():
    """Encoder threads of each output file: the usable CPU cores, at most 8 (x264 would take 1.5 per core, and
    each thread holds a frame: on 64 cores, 58 MB more per 720p file, measured)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:                              # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def gb(n):
    """Bytes as '2.31 GB' (GB = 10⁹ B); under 0.1 GB as '2.1 MB'."""
    return f'{n / 1e9:.2f} GB' if n >= 10 ** 8 else f'{n / 1e6:.1f} MB'


def _frames(n):
    return f'{n} frame' + ('' if n == 1 else 's')


@dataclass(frozen=True)
class Workload:
    """What is reconstructed: sizes (H, W) in pixels of the source, model and output frames, T frames."""
    source: tuple
    model: tuple
    output: tuple
    frames: int
    refine: bool = True
    metrics: bool = True                 # the source is compared with the outputs (PSNR/SSIM per chunk)
    original: bool = True                # cmp.mp4 shows the source (encoding a video, not a saved latent)
    device: str = 'cpu'                  # 'cpu' or 'cuda'
    dtype: str = 'fp32'                  # the stages' precision; the sampler state stays fp32
    dit: tuple = (8, 8, 2, 1152, 16)     # (tile input_size in latent px, lats_per_vid, patch, hidden, heads)
    vae_chunk: int = 4                   # the config's SVD decode chunk (frames) and tile size (latent px, 0 off)
    vae_tile: int = 0
    vae_overlap: int = 0                 # frames shared by consecutive SVD decode chunks (chunks stay longer)
    attention_quadratic: bool = False    # the 'math' attention backend materialises (heads, n, n) scores
    plan: object = None                  # the tools/video/frames.py FramePlan (None: sizes given directly)
    autoencoder: tuple = None            # another autoencoder instead of CascadeV: (time factor, ((frames, bytes per
                                         # model pixel), ...)), measured (tools/recon/autoencoder_memory.py)

    @classmethod
    def from_plan(cls, frame_plan, frames, cfg, refine=True, metrics=True, original=True, device='cpu',
                  dtype='fp32'):
        """From a tools/video/frames.py FramePlan and a loaded config (model.*, vae.decode_chunk / tile_size)."""
        m = cfg.model
        return cls(source=tuple(frame_plan.source), model=tuple(frame_plan.model), output=tuple(frame_plan.output),
                   plan=frame_plan,
                   frames=int(frames), refine=refine, metrics=metrics and original, original=original,
                   device=str(device).split(':')[0],
                   dtype=dtype, dit=(m.input_size, m.lats_per_vid, m.get('patch_size', 2), m.hidden_size,
                                     m.num_heads),
                   vae_chunk=int(cfg.vae.get('decode_chunk', 4)), vae_tile=int(cfg.vae.get('tile_size', 0)),
                   vae_overlap=int(cfg.vae.get('decode_overlap', 0)),
                   attention_quadratic=m.get('attn_backend', 'sdpa') == 'math')


@dataclass(frozen=True)
class Settings:
    """What the planner chooses: frames per chunk, DiT tiles per call (None: all of a window), SVD decode
    chunk (frames) and tile size (latent pixels, 0: off), the video encoder's look-ahead; for another, causal
    autoencoder the frames per window it encodes as a clip of its own (None: the whole clip)."""
    chunk_frames: int = 16
    dit_tile_batch: int = None
    vae_chunk: int = 4
    vae_tile: int = 0
    lookahead: int = None                # x264 look-ahead frames of the files (None: WRITER_LOOKAHEAD)
    window: int = None

    @property
    def encoder_lookahead(self):
        """The x264 look-ahead the files get, in frames (the default resolved)."""
        return WRITER_LOOKAHEAD if self.lookahead is None else self.lookahead


def dit_tiles(w):
    """-> (tiles per temporal window (tile_starts per axis), tile height, tile width, frames per window) in latent
    pixels."""
    S, L = w.dit[0], w.dit[1]
    H, W = w.model[0] // 8, w.model[1] // 8
    return len(tile_starts(H, S)) * len(tile_starts(W, S)), min(S, H), min(S, W), min(L, w.frames)


def chunk_of(w, s):
    """Frames of a render chunk, as far as memory goes: when refining, at least one SVD decode chunk (the
    decode stream hands over whole decode chunks)."""
    return min(w.frames, max(s.chunk_frames, s.vae_chunk if w.refine else 1))


def autoencoder_frames(w, s):
    """Frames another autoencoder takes per call under s: a causal one its window (at most the clip), an image
    one a render chunk (at least a decode chunk)."""
    if w.autoencoder[0] > 1:
        return min(s.window or w.frames, w.frames)
    return max(chunk_of(w, s), s.vae_chunk)


def autoencoder_bytes(points, frames):
    """Bytes per model pixel of one encode + decode call of `frames`: the measured (frames, bytes) points
    interpolated, the last segment's slope beyond them (one point: in proportion to the frames), the first
    point's bytes below them."""
    (n0, b0), rest = points[0], points[1:]
    if not rest:
        return b0 * max(frames, n0) / n0
    for n1, b1 in rest:
        if frames <= n1:
            return b0 + (b1 - b0) * max(frames - n0, 0) / (n1 - n0)
        n0, b0 = n1, b1
    (na, ba), (nb, bb) = points[-2:]
    return bb + (bb - ba) * (frames - nb) / (nb - na)


def shorter_vae_chunks(w):
    """SVD decode chunks below the config's, longest first: its halvings and overlap + 1 (the shortest chunk
    that still moves on), each longer than the overlap."""
    ks = set(halvings(w.vae_chunk)[1:]) | {w.vae_overlap + 1}
    return sorted((k for k in ks if w.vae_overlap < k < w.vae_chunk), reverse=True)


def chunks_ahead(w, s):
    """1 when the clip has more than one chunk (a next chunk is read ahead, a previous one written behind),
    else 0."""
    return int(w.frames > chunk_of(w, s))


def stage_bytes(w, s, cal=CALIBRATION):
    """Bytes of each buffer group for workload w under settings s -> {name: (bytes, on_device)}.

    Counted from the shapes of the tensors recon keeps alive (fp32 = 4 B, RGB uint8 = 3 B per pixel); the
    fitted constants scale the stages' activations and x264, `host` the host-side frame buffers.
    """
    e = DTYPE_BYTES[w.dtype]
    c, ahead = chunk_of(w, s), chunks_ahead(w, s)
    src, mdl, out = w.source[0] * w.source[1], w.model[0] * w.model[1], w.output[0] * w.output[1]
    lat = (w.model[0] // 8) * (w.model[1] // 8)                        # SVD latent pixels per frame
    panels = w.original + 1 + w.refine                                 # original | preview | refined
    host = cal['host']
    b = {}
    # The reader thread decodes a chunk as uint8 at the source size, then shapes it a frame at a time.
    b['decode'] = (host * c * src * 3, False)
    # Encoding: fp32 model frames of the chunk in use and of the next one; the compressor on 8 frames at a time.
    b['model_frames'] = (c * mdl * 3 * 4 * (1 + ahead), True)
    b['compressor'] = (cal['compressor'] * min(c, 8) * mdl * e, True)
    # Rendering: the source of this chunk and the next, shaped: the original panel (uint8 at the output size)
    # and for the metrics fp32 at the model's size.
    b['source'] = (host * (1 + ahead) * c * (out * 3 * w.original + mdl * 3 * 4 * w.metrics), False)
    b['model_out'] = (c * mdl * 3 * 4 * (1 + w.refine), True)          # preview (and refined), fp32, model size
    b['previewer'] = (cal['previewer'] * min(c, 8) * mdl * e, True)
    # One chunk of uint8 panels at the output size (made one frame at a time); the write-behind holds the
    # previous chunk's while this one is rendered; cmp.mp4's frame is drawn in fp32, panels side by side.
    b['outputs'] = (host * c * out * 3 * panels, False)
    b['cmp_frame'] = (host * out * panels * 3 * 4 * 3, False)
    # x264 per open file (preview, rec, and cmp.mp4 with the panels side by side): a fixed part and one frame
    # for each look-ahead frame and each thread
    per_pixel = (cal['encoder'] + cal['encoder_frame'] * min(w.frames, s.encoder_lookahead)
                 + cal['encoder_thread'] * writer_threads())
    b['encoder'] = (out * per_pixel * (1 + w.refine + panels), False)
    # in-loop PSNR/SSIM (tools/recon/render.py quick_scores), one frame at a time: the SSIM blur's unfolded taps; on
    # CUDA the chunk's source frames at the model's size are copied to the device first
    on_cuda = w.device == 'cuda'
    b['metrics'] = ((cal['metrics'] * mdl * 3 + on_cuda * c * mdl * 3 * 4) if w.metrics else 0, True)
    b['latent'] = (w.frames * lat * 4 * 4, True)                          # the refined SVD latent (whole clip)
    if w.autoencoder:
        # another autoencoder: its measured encode/decode peak for the frames of one call; the window's frames
        # gathered on the host (and the chunk read ahead), and the decoded window held while it is rendered
        k = autoencoder_frames(w, s)
        b['compressor'] = b['previewer'] = (0, True)
        b['autoencoder'] = (int(autoencoder_bytes(w.autoencoder[1], k) * mdl), True)
        b['model_frames'] = ((k + ahead * c) * mdl * 3 * 4, False)
        b['model_out'] = (k * mdl * 3 * 4, True)
    if w.refine:
        tiles, th, tw, L = dit_tiles(w)
        per = s.dit_tile_batch or tiles
        _, _, p, hidden, heads = w.dit
        tokens = L * math.ceil(th / p) * math.ceil(tw / p)
        attn = per * heads * tokens ** 2 * 4 if w.attention_quadratic else 0
        stacked = tiles * L * th * tw * (20 + 4) * 4                       # a window's tiles in and eps out
        b['dit'] = (cal['dit'] * per * tokens * hidden * e + attn + stacked, True)
        b['state'] = (cal['state'] * w.frames * lat * 4, True)
        vt = s.vae_tile * 8 if s.vae_tile and s.vae_tile * 8 < max(w.model) else 0
        area = min(vt, w.model[0]) * min(vt, w.model[1]) if vt else mdl
        # the decoder's activations for one chunk, and the decoded frames waiting to be taken (one chunk)
        b['vae'] = (cal['vae'] * s.vae_chunk * area * e + s.vae_chunk * mdl * 3 * 4, True)
    return b


@dataclass(frozen=True)
class Prediction:
    peak: int                 # bytes: base + the largest phase
    phases: dict              # {'encode' | 'refine' | 'render': bytes above base}
    stages: dict              # {buffer group: bytes}


def predict(w, s, base=0, cal=CALIBRATION):
    """Predicted peak of workload w under settings s, given `base` bytes in use before the work.

    Rendering has two moments: a model stage runs (previewer, SVD decode or metrics) while the write-behind
    holds the previous chunk's panels, or this chunk's panels are handed over while the previous ones are
    still being written (cmp.mp4 draws one frame). A clip of one chunk has no previous or next chunk."""
    b = stage_bytes(w, s, cal)
    counted = {k: (v if on_dev or w.device == 'cpu' else 0) for k, (v, on_dev) in b.items()}
    g = lambda *names: sum(counted.get(k, 0) for k in names)
    phases = {'encode': g('decode', 'model_frames', 'compressor', 'autoencoder')}
    if w.refine:
        phases['refine'] = g('state', 'dit')
    work = max(g('previewer'), g('vae'), g('metrics'), g('autoencoder'))
    ahead = chunks_ahead(w, s)                      # one chunk: nothing read ahead or written behind
    phases['render'] = (g('source', 'model_out', 'encoder', 'latent') + ahead * g('decode')
                        + max(work + ahead * g('outputs'), (1 + ahead) * g('outputs') + g('cmp_frame')))
    context = CUDA_CONTEXT if w.device == 'cuda' else 0
    return Prediction(peak=int(base + context + max(phases.values())), phases=phases, stages=counted)


def halvings(n):
    """n, n/2, ..., 1 (integers, descending, no repeats)."""
    out = [n]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out
