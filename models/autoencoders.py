"""Other video autoencoders behind one interface, to reconstruct beside CascadeV under the same protocol.

    ae = load_autoencoder('wan2.1', 'pretrained/wan2.1-vae', device='cuda', dtype=torch.bfloat16)
    latent = ae.encode(video)                  # (B, 3, T, H, W) in [-1, 1] -> (B, C, T', H', W'), scaled
    video2 = ae.decode(latent, num_frames=T)   # -> (B, 3, T, H, W) in [-1, 1]: T frames in, T frames out
    windows = window_frames(T, 49)             # a long clip in windows of 1 + 4k frames, each a clip of its own

Each entry of AUTOENCODERS is a small adapter over one diffusers class: where its weights come from, its
frame-count rule, its latent scaling, its deterministic encoding and its decoder's inputs. What is read off
the loaded model, not assumed: the compression factors (the model's `temporal/spatial_compression_ratio`,
Wan's `scale_factor_*`, or the number of down-sampling levels) and the latent channels.

Frame-count rule: a causal video autoencoder with temporal factor f > 1 takes 1 + f·k frames (CogVideoX,
HunyuanVideo, Wan, EasyAnimate: 4k+1; LTX-Video, Cosmos: 8k+1). A clip of T frames is padded at the end by
repeating its last frame up to the next such count and the decode is cut back to T. Image autoencoders (f = 1)
run frame by frame. A clip too long for the memory is encoded in windows (window_frames: 1 + f·k frames each,
the last one shorter), each window a causal clip of its own, so the latent restarts at every window; the
windows' frame counts are part of the latent (decode_chunks takes them; recon's planner picks the window,
tools/recon/memory.py). H and W must be multiples of the spatial factor: the frame plan pads to it
(tools/video/frames.py, `multiple`) and undoes it.

Latent scaling (what a text-to-video model consumes): (z − mean) / std · scaling where the model has per-channel
statistics (Wan, LTX-Video, Cosmos), else (z − shift) · scaling (CogVideoX 1.5 divides: `invert_scale_latents`).
Encoding is deterministic: the posterior's mode. LTX-Video 0.9.1+ has a timestep-conditioned decoder; it is run
at `decode_timestep` 0.05 (the diffusers pipeline's default) without the pipeline's decode noise, so the decode
is deterministic; `notes` says so. The SVD VAE ('svd') is CascadeV's own decoder stage (models/svd_vae.py,
scale 0.13025, temporal chunks): the ceiling of CascadeV's refinement.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch

from models.svd_vae import SVDVAE
from models.weights import MissingWeightsError, WeightsFormatError, build_vae


@dataclass(frozen=True)
class AutoencoderSpec:
    """One registry entry: `cls` the diffusers class name, `source` the Hugging Face folder its weights come
    from (repository, sub-folder), `description` for --help and the tables, `decode_timestep` for
    timestep-conditioned decoders (LTX-Video)."""
    name: str
    cls: str
    source: str
    description: str
    decode_timestep: float = 0.05


AUTOENCODERS = {s.name: s for s in (
    AutoencoderSpec('svd', 'AutoencoderKLTemporalDecoder', 'stabilityai/stable-video-diffusion-img2vid-xt (vae/)',
                    "the SVD VAE alone: CascadeV's decoder, per-frame encoder"),
    AutoencoderSpec('sd', 'AutoencoderKL', 'stabilityai/sd-vae-ft-mse or stabilityai/sdxl-vae',
                    'an image VAE (SD / SDXL) frame by frame'),
    AutoencoderSpec('cogvideox', 'AutoencoderKLCogVideoX', 'THUDM/CogVideoX-2b (vae/)', 'CogVideoX'),
    AutoencoderSpec('hunyuanvideo', 'AutoencoderKLHunyuanVideo', 'hunyuanvideo-community/HunyuanVideo (vae/)',
                    'HunyuanVideo'),
    AutoencoderSpec('ltx-video', 'AutoencoderKLLTXVideo', 'Lightricks/LTX-Video (vae/)', 'LTX-Video'),
    AutoencoderSpec('wan2.1', 'AutoencoderKLWan', 'Wan-AI/Wan2.1-T2V-1.3B-Diffusers (vae/)', 'Wan 2.1'),
    AutoencoderSpec('cosmos', 'AutoencoderKLCosmos', 'nvidia/Cosmos-1.0-Diffusion-7B-Text2World (vae/)',
                    'Cosmos tokenizer CV8x8x8'),
    AutoencoderSpec('easyanimate', 'AutoencoderKLMagvit', 'alibaba-pai/EasyAnimateV5.1-12b-zh (vae/)',
                    'EasyAnimate (MagViT VAE)'),
)}
IMAGE_CLASSES = ('AutoencoderKL', 'AutoencoderKLTemporalDecoder')


def frames_for(num_frames, time_factor):
    """Frames the autoencoder takes for a clip of `num_frames`: 1 + f·ceil((T − 1) / f) (T itself for f = 1)."""
    if time_factor <= 1:
        return num_frames
    return 1 + time_factor * -(-(num_frames - 1) // time_factor)


def latent_frames(num_frames, time_factor):
    """Latent frames of a clip of `num_frames`: (frames_for(T) - 1) / f + 1 (T itself for f = 1)."""
    return (frames_for(num_frames, time_factor) - 1) // max(time_factor, 1) + 1


def window_frames(num_frames, window=None):
    """Frames of each window of a clip encoded `window` frames at a time: [window, ..., the rest]; None (or a
    window of at least the clip): [num_frames], the whole clip at once."""
    if window is None or window >= num_frames:
        return [num_frames]
    return [window] * (num_frames // window) + ([num_frames % window] if num_frames % window else [])


def pad_frames(video, num_frames):
    """(B, C, T, H, W) -> (B, C, num_frames, H, W): the last frame repeated at the end (num_frames >= T)."""
    extra = num_frames - video.shape[2]
    if extra <= 0:
        return video
    return torch.cat([video, video[:, :, -1:].expand(-1, -1, extra, -1, -1)], dim=2)


def weights_folder(path, spec):
    """The diffusers folder holding the autoencoder: `path` itself or its `vae/` sub-folder (a pipeline folder).
    MissingWeightsError (one line naming the folder and where the weights come from) when neither has a
    config.json; WeightsFormatError when it holds another class."""
    for folder in (Path(path), Path(path) / 'vae'):
        config = folder / 'config.json'
        if config.is_file():
            try:
                cls = json.loads(config.read_text()).get('_class_name')
            except (ValueError, AttributeError):
                raise WeightsFormatError(f'{config}: is not a JSON object (a diffusers config); download '
                                         f'{spec.source} again') from None
            if cls != spec.cls:
                raise WeightsFormatError(f"{config}: holds a {cls}, but --autoencoder {spec.name} needs a {spec.cls}; "
                                         f"pass the folder of {spec.source}")
            return folder
    raise MissingWeightsError(f"{path}: no diffusers autoencoder folder (config.json + weights) for --autoencoder "
                              f"{spec.name}; download {spec.source} there (huggingface-cli download ... "
                              f"--local-dir {path}) and pass it as --autoencoder-weights")


def _model_factors(model):
    """(time factor, spatial factor, latent channels) read off a loaded diffusers autoencoder."""
    cfg = model.config
    own = vars(model)                        # ratios set in __init__ (LTX-Video, Hunyuan, ...), not config aliases
    spatial = (own.get('spatial_compression_ratio') or cfg.get('spatial_compression_ratio')
               or cfg.get('scale_factor_spatial') or 2 ** (len(cfg['block_out_channels']) - 1))
    if type(model).__name__ in IMAGE_CLASSES:
        time = 1
    else:
        time = (own.get('temporal_compression_ratio') or cfg.get('temporal_compression_ratio')
                or cfg.get('scale_factor_temporal') or 1)
    channels = cfg.get('latent_channels') or cfg.get('z_dim')
    return int(time), int(spatial), int(channels)


def _statistics(model):
    """(mean, std) per latent channel (tensors) where the model has them (config or buffers), else (None, None)."""
    buffers = dict(model.named_buffers())
    mean, std = buffers.get('latents_mean'), buffers.get('latents_std')
    if mean is None and model.config.get('latents_mean') is not None:
        mean = torch.tensor(model.config['latents_mean'], dtype=torch.float32)
        std = torch.tensor(model.config['latents_std'], dtype=torch.float32)
    if mean is None:
        return None, None
    return mean.float().flatten(), std.float().flatten()


class VideoAutoencoder:
    """A diffusers autoencoder behind the interface recon needs (frozen, eval mode, no gradients).

    time_factor, spatial_factor, channels: the compression (read off the model); compression: e.g.
    '4×8×8, 16 ch'; notes: what the adapter changes from the model's own pipeline (one line each).
    """

    def __init__(self, spec, model, device='cpu', dtype=torch.float32, frame_chunk=8):
        if model.dtype != dtype:                  # from_pretrained(torch_dtype=...) already loads it in dtype
            model = model.to(dtype=dtype)
        self.spec, self.model = spec, model.to(device=device).eval().requires_grad_(False)
        self.device, self.dtype, self.frame_chunk = torch.device(device), dtype, frame_chunk
        self.time_factor, self.spatial_factor, self.channels = _model_factors(model)
        self.mean, self.std = _statistics(model)
        cfg = model.config
        self.scaling = float(cfg.get('scaling_factor') or 1.0)
        self.shift = float(cfg.get('shift_factor') or 0.0)
        self.invert = bool(cfg.get('invert_scale_latents'))
        self.timestep = spec.decode_timestep if cfg.get('timestep_conditioning') else None
        for switch in ('enable_tiling', 'enable_slicing'):        # memory flat in frame size; same maths
            try:
                getattr(model, switch)()
            except (AttributeError, NotImplementedError):
                pass

    @property
    def compression(self):
        f, s = self.time_factor, self.spatial_factor
        return f'{f}×{s}×{s}, {self.channels} ch'

    @property
    def notes(self):
        notes = []
        if self.time_factor > 1:
            notes.append(f'{self.time_factor}k+1 frames: clips padded with their last frame, decodes cut back')
        if self.timestep is not None:
            notes.append(f'timestep-conditioned decoder run at decode_timestep {self.timestep} without decode noise')
        return notes

    def _scale(self, z):
        if self.mean is not None:
            shape = (1, -1) + (1,) * (z.dim() - 2)
            mean, std = (t[:z.shape[1]].view(shape).to(z) for t in (self.mean, self.std))
            return (z - mean) / std * self.scaling
        return (z - self.shift) / self.scaling if self.invert else (z - self.shift) * self.scaling

    def _unscale(self, z):
        if self.mean is not None:
            shape = (1, -1) + (1,) * (z.dim() - 2)
            mean, std = (t[:z.shape[1]].view(shape).to(z) for t in (self.mean, self.std))
            return z / self.scaling * std + mean
        return z * self.scaling + self.shift if self.invert else z / self.scaling + self.shift

    def _check(self, video):
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f'{self.spec.name}: expected a video (B, 3, T, H, W), got shape {tuple(video.shape)}')
        h, w = video.shape[-2:]
        s = self.spatial_factor
        if h % s or w % s:
            raise ValueError(f'{self.spec.name}: frames are {h}x{w}; both sides must be multiples of {s} '
                             f'(the frame plan pads to it)')

    @torch.no_grad()
    def encode(self, video):
        """(B, 3, T, H, W) in [-1, 1] -> scaled latent (B, C, T', H/s, W/s) (image VAEs: T' = T; video VAEs:
        the clip padded to 1 + f·k frames, T' = k + 1). ValueError for a wrong shape or size."""
        self._check(video)
        x = video.to(self.device, self.dtype)
        if self.time_factor == 1:
            b, t = x.shape[0], x.shape[2]
            frames = x.transpose(1, 2).flatten(0, 1)                       # (B*T, 3, H, W)
            z = torch.cat([self.model.encode(c).latent_dist.mode() for c in frames.split(self.frame_chunk)])
            z = z.unflatten(0, (b, t)).transpose(1, 2)
        else:
            z = self.model.encode(pad_frames(x, frames_for(x.shape[2], self.time_factor))).latent_dist.mode()
        return self._scale(z.float())

    @torch.no_grad()
    def decode(self, latent, num_frames):
        """Scaled latent (B, C, T', h, w) -> (B, 3, num_frames, h·s, w·s) float32 in [-1, 1] (clamped)."""
        z = self._unscale(latent.float()).to(self.device, self.dtype)
        if self.time_factor == 1:
            b, t = z.shape[0], z.shape[2]
            flat = z.transpose(1, 2).flatten(0, 1)
            parts = [self.model.decode(c).sample for c in flat.split(self.frame_chunk)]
            x = torch.cat(parts).unflatten(0, (b, t)).transpose(1, 2)
        else:
            kw = {}
            if self.timestep is not None:
                kw['temb'] = torch.full((z.shape[0],), self.timestep, device=self.device, dtype=self.dtype)
            x = self.model.decode(z, **kw).sample
        return x[:, :, :num_frames].float().clamp(-1, 1)

    def decode_chunks(self, latent, num_frames, chunk_size=None, windows=None):
        """Yield the decode of `latent` in temporal chunks of at most `chunk_size` frames (None: 16),
        (B, 3, k, H, W) float32 in [-1, 1], `num_frames` in all. An image autoencoder decodes chunk by chunk;
        a video autoencoder decodes each window of the encoding at once (windows: their frame counts,
        window_frames; None: one window, the whole clip), a causal decoder needing the window's whole latent."""
        chunk = chunk_size or 16
        if self.time_factor == 1:
            for a in range(0, num_frames, chunk):
                yield self.decode(latent[:, :, a:a + chunk], min(chunk, num_frames - a))
            return
        start = 0
        for n in windows or [num_frames]:
            k = latent_frames(n, self.time_factor)
            if start + k > latent.shape[2]:
                raise ValueError(f'{self.spec.name}: windows {windows} need {start + k} latent frames, the latent '
                                 f'has {latent.shape[2]}')
            yield from self.decode(latent[:, :, start:start + k], n).split(chunk, dim=2)
            start += k


class SVDAutoencoder:
    """CascadeV's SVD VAE stage (models/svd_vae.SVDVAE: scale 0.13025, decode in temporal chunks with the
    config's overlap) behind the VideoAutoencoder interface: 1×8×8, 4 ch, any frame count."""

    def __init__(self, spec, vae):
        self.spec, self.vae = spec, vae
        self.time_factor, self.spatial_factor, self.channels = 1, 8, vae.vae.config.latent_channels
        self.device, self.dtype = vae.device, vae.dtype
        self.notes = [f'decoded {vae.decode_chunk} frames at a time, overlap {vae.decode_overlap}, as CascadeV does']

    compression = VideoAutoencoder.compression

    @torch.no_grad()
    def encode(self, video):
        """(B, 3, T, H, W) in [-1, 1] -> the posterior mean × 0.13025, (B, 4, T, H/8, W/8)."""
        return self.vae.encode(video.to(self.device, self.dtype)).float()

    @torch.no_grad()
    def decode(self, latent, num_frames):
        """(B, 4, T, h, w) -> (B, 3, T, 8h, 8w) float32 in [-1, 1]."""
        return torch.cat(list(self.decode_chunks(latent, num_frames)), dim=2)

    @torch.no_grad()
    def decode_chunks(self, latent, num_frames, chunk_size=None, windows=None):
        """Yield the decode in the SVD VAE's own temporal chunks (chunk_size: frames per decoder call, None:
        its decode_chunk), (B, 3, k, H, W) float32 in [-1, 1]; memory flat in clip length. `windows` is
        VideoAutoencoder's (an image autoencoder's latent does not depend on them)."""
        for frames in self.vae.decode_iter(latent[:, :, :num_frames].to(self.device, self.dtype),
                                           decode_chunk=chunk_size):
            yield frames.float().clamp(-1, 1)


def autoencoder_from_config(name, weights, cfg, device='cpu', dtype=torch.float32):
    """As load_autoencoder, with 'svd' built as CascadeV builds its decoder stage from `cfg` (models.weights.
    build_vae: scale, decode chunk and overlap, tiles), from `weights` when given, else the config's
    weights.vae (random under the config's random_init, as CascadeV's own decoder)."""
    if name != 'svd':
        return load_autoencoder(name, weights, device, dtype)
    cfg = cfg.copy()
    if weights is not None:                       # a folder named here is loaded, never replaced by random weights
        cfg.weights.vae = str(weights_folder(weights, AUTOENCODERS['svd']))
    return SVDAutoencoder(AUTOENCODERS['svd'], build_vae(cfg, device, dtype).freeze())


def load_autoencoder(name, weights, device='cpu', dtype=torch.float32, svd_options=None):
    """Registry name + a local diffusers folder -> VideoAutoencoder (SVDAutoencoder for 'svd', built with
    `svd_options`, models/svd_vae.SVDVAE's keywords: decode_chunk, decode_overlap, ...). ValueError for an
    unknown name (the line lists the known ones); MissingWeightsError / WeightsFormatError (one line: also for a
    broken config.json, no weight file or weights unlike the config)."""
    if name not in AUTOENCODERS:
        raise ValueError(f"--autoencoder {name}: unknown; choose one of cascadev, {', '.join(AUTOENCODERS)}")
    spec = AUTOENCODERS[name]
    folder = weights_folder(weights, spec)
    if name == 'svd':
        vae = SVDVAE.from_pretrained(str(folder), torch_dtype=dtype, **(svd_options or {}))
        return SVDAutoencoder(spec, vae.to(device=device, dtype=dtype).freeze())
    try:
        model = getattr(diffusers, spec.cls).from_pretrained(str(folder), torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as e:      # no weight file, shapes unlike the config, a bad file
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise WeightsFormatError(f'{folder}: cannot be loaded as {spec.cls} ({reason}); the folder needs the '
                                 f'config.json and weights of {spec.source}') from None
    return VideoAutoencoder(spec, model, device=device, dtype=dtype)


def autoencoder_record(ae, weights):
    """What done.json records of an autoencoder: {'name', 'class', 'weights', 'compression', 'notes'}."""
    return {'name': ae.spec.name, 'class': ae.spec.cls, 'weights': None if weights is None else str(weights),
            'compression': ae.compression, 'notes': list(ae.notes)}
