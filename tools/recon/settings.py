"""The settings of one recon run: recon.py's flags as a frozen dataclass, checked once, resolved against the config.

    settings = RunSettings(output='out', input=('videos/',), size=256)     # UsageError (one line) if a value is bad
    cfg = settings.load_config()                                            # ConfigError (one line)
    frames = settings.recon_settings(cfg)        # tools.recon.reconstruct.ReconSettings: the config's defaults filled in

Field names are the flags' names (`--frame-stride` -> frame_stride) and field defaults are the flags' defaults
(recon.py's parser reads them from here). None means "the config's value" for size, scheduler, steps, seed,
device and dtype.
"""
import math
from dataclasses import dataclass, fields
from pathlib import Path

from models.autoencoders import AUTOENCODERS
from tools.config import load_config
from tools.recon.memory import parse_size
from tools.recon.reconstruct import ReconSettings
from tools.video.frames import PREPROCESS

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = 'configs/s1024.effn-f32.py'

# the flags whose effect a latent fixes when it is encoded: (flag, RunSettings field, ReconSettings field)
LATENT_FIXED = (('--num-frames', 'num_frames', 'num_frames'), ('--start', 'start', 'start'),
                ('--frame-stride', 'frame_stride', 'stride'), ('--size', 'size', 'size'),
                ('--square', 'square', 'square'), ('--preprocess', 'preprocess', 'preprocess'),
                ('--upscale', 'upscale', 'upscale'))
READ_FIXED = (('--keep-hdr', 'keep_hdr'), ('--keep-fields', 'keep_fields'))   # how its source was read


class UsageError(ValueError):
    """A flag or path the run cannot start with; the message is one line naming it and the fix."""


@dataclass(frozen=True)
class RunSettings:
    """What a recon run is asked to do.

    input: video files and/or folders (or None); decode_from: latent files and/or folders (or None): exactly
    one of them. output: the output folder (one sub-folder per video). Frames: num_frames (None: all),
    frame_stride, start, size (short side the model sees, 0: native, None: the config's data.sample_size),
    square, preprocess ('default' | 'cascadev'), fps (None: the source's times), lossless, upscale, interp (K),
    keep_hdr (HDR code values as stored, not tone-mapped), keep_fields (interlaced frames woven, not deinterlaced).
    Sampling: preview_only, scheduler/steps/seed (None: the config's sampling.*). Run: device and dtype (None:
    the config's), compile, chunk_frames, max_memory (bytes after checking; a text such as '24GB' is parsed,
    None: no budget on CPU, the free memory on CUDA), claim_wait (seconds >= 0 a process waits after its pass
    for the videos other processes hold: tools/recon/schedule.py), split_video (under a launcher, every video
    shared by all its processes, as when fewer videos than processes remain: tools/recon/per_video.py), overwrite, no_metrics, eval, vmaf (needs eval),
    dit_checkpoint (weights.dit), cfg_options ({key: value} config overrides).
    """
    output: str
    input: tuple = None
    decode_from: tuple = None
    config: str = str(REPO_ROOT / DEFAULT_CONFIG)
    cfg_options: dict = None
    num_frames: int = None
    frame_stride: int = 1
    start: int = 0
    size: int = None
    square: bool = False
    preprocess: str = 'default'
    fps: float = None
    lossless: bool = False
    upscale: bool = False
    interp: int = 1
    keep_hdr: bool = False
    keep_fields: bool = False
    preview_only: bool = False
    scheduler: str = None
    steps: int = None
    seed: int = None
    device: str = None
    dtype: str = None
    compile: bool = False
    chunk_frames: int = 16
    max_memory: int = None
    claim_wait: float = 0.0
    split_video: bool = False
    overwrite: bool = False
    no_metrics: bool = False
    eval: bool = False
    vmaf: bool = False
    dit_checkpoint: str = None
    autoencoder: str = 'cascadev'
    autoencoder_weights: str = None

    def __post_init__(self):
        checks = [(self.num_frames is not None and self.num_frames < 1, '--num-frames', 'must be >= 1 (or omitted: all)'),
                  (self.frame_stride < 1, '--frame-stride', 'must be >= 1'),
                  (self.start < 0, '--start', 'must be >= 0'),
                  (self.size is not None and self.size < 0, '--size', 'must be >= 0 (0 keeps the native size)'),
                  (self.preprocess == 'cascadev' and self.size is not None and 0 < self.size < 32, '--size',
                   'must be >= 32 with --preprocess cascadev (its crop is to multiples of 32), or 0 for the native '
                   'size'),
                  (self.steps is not None and self.steps < 1, '--steps', 'must be >= 1'),
                  (self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)), '--fps', 'must be > 0'),
                  (self.chunk_frames < 1, '--chunk-frames', 'must be >= 1'),
                  (self.interp < 1, '--interp', 'must be >= 1 (1: the source frame rate)'),
                  (not (0 <= self.claim_wait < math.inf), '--claim-wait',
                   'must be a number of seconds >= 0 (0: do not wait for videos other processes are writing)'),
                  (self.vmaf and not self.eval, '--vmaf', 'needs --eval (VMAF is computed by the evaluation)')]
        for bad, flag, rule in checks:
            if bad:
                raise UsageError(f'{flag} {getattr(self, flag[2:].replace("-", "_"))}: {rule}')
        if (self.input is None) == (self.decode_from is None):
            raise UsageError('pass exactly one of --input or --decode-from')
        if self.preprocess not in PREPROCESS:
            raise UsageError(f"--preprocess {self.preprocess}: use one of {', '.join(PREPROCESS)}")
        self._check_autoencoder()
        if isinstance(self.max_memory, str):
            try:
                object.__setattr__(self, 'max_memory', parse_size(self.max_memory))
            except ValueError as e:
                raise UsageError(f'--max-memory {e}') from None

    def _check_autoencoder(self):
        name, other = self.autoencoder, self.autoencoder != 'cascadev'
        if name != 'cascadev' and name not in AUTOENCODERS:
            raise UsageError(f"--autoencoder {name}: unknown; use cascadev or one of {', '.join(AUTOENCODERS)}")
        clashes = [(self.preview_only, '--preview-only', 'CascadeV has a previewer'),
                   (self.interp != 1, '--interp', 'CascadeV interpolates its own latent'),
                   (self.decoding, '--decode-from', 'latents of other autoencoders are decoded in the run that '
                                                    'encodes them'),
                   (self.dit_checkpoint is not None, '--dit-checkpoint', 'only CascadeV has a DiT')]
        for bad, flag, why in clashes if other else ():
            if bad:
                raise UsageError(f'{flag} with --autoencoder {name}: not available ({why}); leave one of them out')
        if self.autoencoder_weights is not None and not other:
            raise UsageError('--autoencoder-weights needs --autoencoder NAME (another autoencoder than cascadev)')
        if other and self.autoencoder_weights is None and name != 'svd':
            raise UsageError(f'--autoencoder {name} needs --autoencoder-weights DIR, its diffusers folder (from '
                             f'{AUTOENCODERS[name].source})')

    @property
    def other_autoencoder(self):
        """True with --autoencoder NAME other than cascadev (models/autoencoders.py)."""
        return self.autoencoder != 'cascadev'

    @classmethod
    def from_flags(cls, args):
        """From parsed flags (an argparse Namespace, or any object with the fields as attributes; not changed),
        the lists of paths as tuples."""
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        for k in ('input', 'decode_from'):
            values[k] = None if values[k] is None else tuple(values[k])
        return cls(**values)

    @property
    def decoding(self):
        """True with --decode-from (saved latents are decoded; the source videos are not read)."""
        return self.decode_from is not None

    def ignored_by_latent(self):
        """The flags given that a latent fixes (its frames, geometry and how its source was read), in flag
        order; [] unless decoding."""
        if not self.decoding:
            return []
        fixed = [(flag, name) for flag, name, _ in LATENT_FIXED] + list(READ_FIXED)
        return [flag for flag, name in fixed if getattr(self, name) != getattr(RunSettings, name)]

    def stages(self):
        """The CascadeV stages the run builds: ('compressor',) when encoding, 'previewer', and ('dit', 'vae') to
        refine; none with another autoencoder (its folder is checked when it is loaded)."""
        if self.other_autoencoder:
            return ()
        encode = () if self.decoding else ('compressor',)
        return encode + ('previewer',) + (() if self.preview_only else ('dit', 'vae'))

    def load_config(self):
        """The config with --cfg-options and --dit-checkpoint applied; ConfigError (one line)."""
        cfg = load_config(self.config, self.cfg_options)
        cfg.weights.dit = self.dit_checkpoint or cfg.weights.dit
        return cfg

    def recon_settings(self, cfg):
        """The output-shaping settings with the config's defaults (data.sample_size, sampling.*) filled in;
        decoding a latent reads no source, so keep_hdr / keep_fields are False there."""
        s = cfg.sampling
        read = not self.decoding
        return ReconSettings(num_frames=self.num_frames, start=self.start, stride=self.frame_stride,
                             size=cfg.data.sample_size if self.size is None else self.size, square=self.square,
                             preprocess=self.preprocess, scheduler=self.scheduler or s.scheduler,
                             steps=self.steps or s.steps, seed=s.seed if self.seed is None else self.seed,
                             preview_only=self.preview_only, upscale=self.upscale, interp=self.interp, fps=self.fps,
                             lossless=self.lossless, keep_hdr=read and self.keep_hdr,
                             keep_fields=read and self.keep_fields, autoencoder=self.autoencoder,
                             autoencoder_weights=self.autoencoder_folder(cfg))

    def autoencoder_folder(self, cfg):
        """The other autoencoder's diffusers folder, absolute (svd: the config's weights.vae unless given);
        None for CascadeV."""
        if not self.other_autoencoder:
            return None
        return str(Path(self.autoencoder_weights or cfg.weights.vae).resolve())

    def requested_device(self, cfg):
        """--device, else the config's device, else 'auto' (not resolved)."""
        return self.device or cfg.get('device', 'auto')
