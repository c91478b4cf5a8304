"""One place that finds the released weights, reads weight files, says what is missing, and builds every stage.

Paths in `cfg.weights` are relative to the repository root (not the working directory) unless absolute.
`cfg.random_init` (True: every stage; or a list of stage names) puts seeded random weights (seed
`cfg.init_seed`) in place of the released files; a `weights` entry that names another file (a DiT you
trained, say) is always loaded (random_stages). Every weight file goes through one reader (read_state_dict):
safetensors, or a torch checkpoint read with weights_only=True.

Command line (tools/check_weights.py): `python -m models.weights check CONFIG` and
`python -m models.weights convert-dit SRC.pth DST.safetensors` (used by `bash pretrained/download.sh --convert`).
"""
import copy
import sys
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
from mmengine.config import Config
from safetensors.torch import load_file, save_file

from models.compressor import SemanticCompressor
from models.dit import VideoDiT, init_random_weights_
from models.previewer import Previewer
from models.svd_vae import SVD_VAE_CONFIG, SVDVAE

REPO_ROOT = Path(__file__).resolve().parents[1]
DOWNLOAD_CMD = 'bash pretrained/download.sh'
STAGES = ('dit', 'compressor', 'previewer', 'vae')
VAE_WEIGHT_FILES = ('diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.fp16.safetensors')
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
SEED_OFFSET = {'dit': 0, 'compressor': 1, 'previewer': 2, 'vae': 3}   # distinct streams per stage
TORCH_SUFFIXES = ('.pth', '.pt', '.ckpt', '.bin')                     # read with torch.load(weights_only=True)
IGNORED_CHECKPOINT_KEYS = ('pos_embed',)       # computed at every call; older PixArt checkpoints store it


class MissingWeightsError(FileNotFoundError):
    """A weight file named in the config does not exist; the message names it and the fetch command."""


class WeightsFormatError(ValueError):
    """A weight file exists but does not hold what the stage expects."""


def resolve_dtype(dtype, device=None):
    """'auto' | 'fp32' | 'fp16' | 'bf16' | torch.dtype -> torch.dtype.

    'auto' (None too): bf16 on a CUDA device that supports it natively, else fp32 — on CPUs without native
    bf16 matrix units bf16 is emulated and many times slower than fp32 (README: Speed).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, 'auto'):
        device = resolve_device(device)
        native = device.type == 'cuda' and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if native else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: use auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def dtype_name(dtype):
    """torch.dtype -> 'fp32' | 'fp16' | 'bf16' (the names flags and configs use)."""
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).replace('torch.', ''))


def resolve_device(device):
    """'auto' (None too) -> cuda when available else cpu; 'cpu', 'cuda', 'cuda:N' -> that torch.device.

    ValueError (one line) for a name torch does not know and for a CUDA device this machine does not have.
    """
    if isinstance(device, torch.device):
        return device
    if device in (None, 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is unknown; use auto, cpu, cuda or cuda:N") from None
    if dev.type == 'cuda':
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: this machine has no CUDA GPU (or this torch build has no CUDA); "
                             f"use --device cpu or auto")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    elif dev.type not in ('cpu', 'mps', 'xpu'):
        raise ValueError(f"device {device!r}: not supported; use auto, cpu, cuda or cuda:N")
    return dev


def resolve_path(path):
    """A config path: absolute as is, otherwise relative to the repository root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def _vae_config(cfg):
    return dict(cfg.vae.get('config', None) or {})


def required_files(cfg, stage):
    """Files `stage` reads under this config: a list of alternatives-tuples (any one of each must exist)."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: use one of {', '.join(STAGES)}")
    path = resolve_path(cfg.weights[stage])
    if stage != 'vae':
        return [(path,)]
    if not _vae_config(cfg):                             # the released diffusers folder
        return [(path / 'config.json',), tuple(path / f for f in VAE_WEIGHT_FILES)]
    if path.suffix == '.safetensors':                    # a state dict for the VAE built from cfg.vae.config
        return [(path,)]
    return [tuple(path / f for f in VAE_WEIGHT_FILES)]


@lru_cache(maxsize=1)
def released_weights():
    """{stage: path} of the released files: `weights` in configs/_base_/model.py, resolved."""
    base = Config.fromfile(str(REPO_ROOT / 'configs' / '_base_' / 'model.py'))
    return {stage: resolve_path(base.weights[stage]) for stage in STAGES}


def random_stages(cfg):
    """Stages built with seeded random weights: those `random_init` names (True: all four) whose `weights`
    entry is still the released file. An entry naming any other file is loaded, so `weights.dit=` a trained
    checkpoint is never ignored."""
    chosen = cfg.get('random_init', False)
    named = set(STAGES) if chosen is True else set(chosen or ())
    return {s for s in named if resolve_path(cfg.weights[s]) == released_weights()[s]}


def check_weights(cfg, stages=STAGES, files=None):
    """Raise MissingWeightsError naming every missing file at once and the fetch command; return {stage: path}.

    `files`: more weight files the caller reads, {config key: (path, stage, hint)} (e.g. train.load_from, a
    DiT checkpoint: stage 'dit', hint 'train from scratch with train.load_from=None').
    """
    random = random_stages(cfg)
    needed = [s for s in stages if s not in random]
    missing, fetch, hints = [], [], []
    for stage in needed:
        for options in required_files(cfg, stage):
            if not any(p.is_file() for p in options):
                missing.append(' or '.join(str(p) for p in options) + f' ({stage})')
                fetch.append(stage)
    for key, (path, stage, hint) in (files or {}).items():
        if not resolve_path(path).is_file():
            missing.append(f'{resolve_path(path)} ({key})')
            fetch.append(stage)
            hints.append(hint)
    if missing:
        only = [s for s in STAGES if s in fetch]
        command = DOWNLOAD_CMD + ('' if len(only) == len(STAGES) else f" --only {','.join(only)}")
        raise MissingWeightsError(
            f"missing weights: {'; '.join(missing)}. Fetch them with `{command}` (paths come from `weights` in "
            f"the config; random_init=True runs without weights, with meaningless outputs)"
            + ''.join(f'; {h}' for h in hints))
    return {stage: resolve_path(cfg.weights[stage]) for stage in needed}


def read_state_dict(path, allow_pickle=False, pickle_fix='if you trust the file, re-run with --allow-pickle'):
    """{name: tensor} of a weight file: .safetensors, or a torch checkpoint (its 'state_dict' entry if it holds
    one) read with torch.load(weights_only=True); on the CPU.

    MissingWeightsError for an absent file; WeightsFormatError (one line naming the file) for a file that
    cannot be read or holds no state dict. `allow_pickle`: where weights_only refuses the file, unpickle it
    fully (trusted files only); `pickle_fix` ends the refusal's message.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{path}: no such file; fetch it with `{DOWNLOAD_CMD}`")
    if path.suffix == '.safetensors':
        try:
            return load_file(str(path), device='cpu')
        except Exception as e:  # truncated or not a safetensors file
            raise WeightsFormatError(f"{path}: not a readable safetensors file ({e}); re-fetch it with "
                                     f"`{DOWNLOAD_CMD}`") from e
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # weights_only refuses pickled classes it does not know
        if not allow_pickle:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WeightsFormatError(f"{path}: torch.load(weights_only=True) refused it ({reason}); "
                                     f"{pickle_fix}") from e
        obj = _load_pth_trusting_pickle(path)
    if isinstance(obj, dict) and isinstance(obj.get('state_dict'), dict):
        obj = obj['state_dict']
    if not isinstance(obj, dict):
        raise WeightsFormatError(f"{path}: holds a {type(obj).__name__}, not a state dict; expected a .pth "
                                 f"with a 'state_dict' entry")
    return {k: v for k, v in obj.items() if torch.is_tensor(v)}


def _load_pth_trusting_pickle(path):
    """ISOLATED FALLBACK, only on an explicit --allow-pickle: full unpickling, which can run code from the file."""
    print(f"warning: {path}: loading with weights_only=False (--allow-pickle): only do this for files you trust",
          file=sys.stderr)
    return torch.load(path, map_location='cpu', weights_only=False)


def load_state_dict_strict(module, path, what):
    """Load a stage's weight file into module with strict key matching; one-line WeightsFormatError otherwise."""
    fix = f"re-fetch it with `{DOWNLOAD_CMD}`"
    state = read_state_dict(path)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        reason = next((line.strip() for line in str(e).splitlines() if 'size mismatch' in line), 'shape mismatch')
        raise WeightsFormatError(f"{path}: not {what} ({reason}); {fix}") from e
    if result.missing_keys or result.unexpected_keys:
        raise WeightsFormatError(
            f"{path}: not {what} ({len(result.missing_keys)} missing keys, e.g. {result.missing_keys[:2]}; "
            f"{len(result.unexpected_keys)} unexpected, e.g. {result.unexpected_keys[:2]}); {fix}")
    return module


def load_dit_checkpoint(model, path):
    """Load a .pth (`state_dict` key, weights_only) or .safetensors DiT checkpoint strictly; returns model.

    PixArt parameter names (the released s1024.effn-f32.pth loads as is; a stored pos_embed is ignored).
    MissingWeightsError for an absent file; WeightsFormatError naming the missing, unexpected and
    mis-shaped keys for a checkpoint of another model.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{path}: DiT checkpoint not found; fetch the released weights with "
                                  f"`{DOWNLOAD_CMD}` or fix weights.dit in the config")
    if path.suffix != '.safetensors' and path.suffix not in TORCH_SUFFIXES:
        raise WeightsFormatError(f"{path}: unknown checkpoint format {path.suffix!r}; use .pth or .safetensors")
    state = read_state_dict(path, pickle_fix=f"if you trust the file, convert it once with `python -m "
                                             f"models.weights convert-dit {path} OUT.safetensors --allow-pickle`")
    state = {k: v for k, v in state.items() if k not in IGNORED_CHECKPOINT_KEYS}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        def names(keys):
            return f"{len(keys)} ({', '.join(keys[:4])}{', …' if len(keys) > 4 else ''})"
        raise WeightsFormatError(f"{path}: checkpoint does not match the model: missing {names(missing)}, "
                                 f"unexpected {names(unexpected)}, shape mismatch {names(shapes)}; check "
                                 f"model.depth/hidden_size/in_channels/learn_sigma in the config")
    model.load_state_dict(state, strict=True)
    return model


@torch.no_grad()
def calibrate_batchnorm_(module, batch):
    """Set every BatchNorm's running statistics to those of `batch` (random-init mode: unit-scale activations)."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                                # cumulative average: exactly this batch's statistics
        torch.nn.Module.train(m, True)
    module(batch)
    for m in norms:
        m.momentum = 0.1
        torch.nn.Module.train(m, False)
    return module


def damp_residual_branches_(backbone, gain=0.1):
    """Scale the last BatchNorm of every residual MBConv branch by `gain` (random init only).

    Near-identity residual blocks (cf. zero-init residuals, Goyal et al. 2017; SkipInit, De & Smith 2020)
    keep the random 40-layer network well conditioned: with gain 1, rounding differences between batch
    sizes grew to 27% of the output on white-noise frames; with 0.1 they stay at 2e-6.
    """
    for block in backbone.modules():
        if getattr(block, 'use_res_connect', False):                  # torchvision (Fused)MBConv
            norms = [m for m in block.block.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            norms[-1].weight.data.fill_(gain)
    return backbone


def smooth_noise_frames(n, size):
    """(n, 3, size, size) in [-1, 1]: 16x bicubic-up-sampled noise, closer to natural frames than white noise.

    Random-init BatchNorm statistics taken on these keep the random compressor's latent std near 1 on the
    clips in ../shared/videos (1.0-1.2; 14 on white noise); white-noise statistics gave 250-5000.
    """
    low = torch.randn(n, 3, size // 16, size // 16)
    return torch.nn.functional.interpolate(low, size=(size, size), mode='bicubic', align_corners=False).clamp(-1, 1)


@contextmanager
def seeded(cfg, stage):
    """Seed torch's CPU generator for `stage` (init_seed + offset); the global RNG state is restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.get('init_seed', 0)) + SEED_OFFSET[stage])
        yield


_RANDOM_STAGES = {}          # (stage, init_seed, chunk_size) -> the seeded, calibrated module (CPU), once per process


def random_stage(cfg, stage, make, calibrate, chunk_size):
    """make(chunk_size) with seeded random weights calibrated by calibrate(model) (seed: init_seed + the stage's
    offset). The BatchNorm calibration runs a forward pass (about 2 s on a CPU for the compressor and
    previewer) whose batch statistics follow chunk_size, so a process keeps each (stage, seed, chunk_size) it
    made and hands out copies: the same tensors, bit for bit, for every pipeline it builds."""
    key = (stage, int(cfg.get('init_seed', 0)), int(chunk_size))
    if key not in _RANDOM_STAGES:
        with seeded(cfg, stage):
            model = make(chunk_size=chunk_size)
            calibrate(model)
        _RANDOM_STAGES[key] = model
    return copy.deepcopy(_RANDOM_STAGES[key])


def build_compressor(cfg, device='cpu', dtype=torch.float32):
    """The frozen semantic compressor: released weights, or seeded random ones with calibrated BatchNorm."""
    chunk_size = cfg.compressor.get('chunk_size', 8)
    if 'compressor' in random_stages(cfg):
        def calibrated(model):
            damp_residual_branches_(model.backbone)
            calibrate_batchnorm_(model, smooth_noise_frames(4, 256))
        model = random_stage(cfg, 'compressor', SemanticCompressor, calibrated, chunk_size)
    else:
        path = check_weights(cfg, ('compressor',))['compressor']
        model = SemanticCompressor(chunk_size=chunk_size)
        load_state_dict_strict(model, path, 'a StableCascade EfficientNet encoder (backbone.*, mapper.*)')
    return model.to(resolve_device(device), resolve_dtype(dtype, device))


def build_previewer(cfg, device='cpu', dtype=torch.float32):
    """The frozen previewer: released weights, or seeded random ones with calibrated BatchNorm."""
    chunk_size = cfg.previewer.get('chunk_size', 8)
    if 'previewer' in random_stages(cfg):
        model = random_stage(cfg, 'previewer', Previewer,
                             lambda model: calibrate_batchnorm_(model.blocks, torch.randn(8, 16, 8, 8)), chunk_size)
    else:
        path = check_weights(cfg, ('previewer',))['previewer']
        model = Previewer(chunk_size=chunk_size)
        load_state_dict_strict(model, path, 'a StableCascade previewer (blocks.0 ... blocks.24)')
    return model.to(resolve_device(device), resolve_dtype(dtype, device))


def build_vae(cfg, device='cpu', dtype=torch.float32):
    """The frozen SVD VAE: the diffusers folder in cfg.weights.vae, or cfg.vae.config (random or loaded)."""
    vcfg = cfg.vae
    kw = dict(scale_factor=float(cfg.get('scale_factor', 0.13025)),
              encode_chunk=vcfg.get('encode_chunk', 8), decode_chunk=vcfg.get('decode_chunk', 4),
              decode_overlap=vcfg.get('decode_overlap', 0),
              tile_size=vcfg.get('tile_size', 0), tile_overlap=vcfg.get('tile_overlap', 16))
    config = _vae_config(cfg)
    if 'vae' in random_stages(cfg):
        with seeded(cfg, 'vae'):
            model = SVDVAE.from_config(config or SVD_VAE_CONFIG, **kw)
    elif config:
        check_weights(cfg, ('vae',))
        model = SVDVAE.from_config(config, **kw)
        path = resolve_path(cfg.weights.vae)
        if path.is_dir():
            path = next(path / f for f in VAE_WEIGHT_FILES if (path / f).is_file())
        load_state_dict_strict(model.vae, path, 'an AutoencoderKLTemporalDecoder matching cfg.vae.config')
    else:
        path = check_weights(cfg, ('vae',))['vae']
        model = SVDVAE.from_pretrained(path, **kw)
    return model.to(resolve_device(device), resolve_dtype(dtype, device))


def build_dit(cfg, device='cpu', dtype=torch.float32):
    """The refiner DiT from cfg.model: the released checkpoint, or seeded random weights (models.dit)."""
    model = VideoDiT.from_config(cfg.model)
    if 'dit' in random_stages(cfg):
        init_random_weights_(model, seed=int(cfg.get('init_seed', 0)) + SEED_OFFSET['dit'])
    else:
        path = check_weights(cfg, ('dit',))['dit']
        load_dit_checkpoint(model, path)
    return model.to(resolve_device(device), resolve_dtype(dtype, device))


# ---- one-off conversion of the released DiT checkpoint to safetensors --------------------------------

def convert_pth_to_safetensors(src, dst, allow_pickle=False):
    """Write the tensors of checkpoint `src` to `dst` (safetensors, via DST.tmp then rename); return the count."""
    state = read_state_dict(src, allow_pickle=allow_pickle)
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}  # no shared storage in safetensors
    dst = Path(dst)
    tmp = dst.with_name(dst.name + '.tmp')
    save_file(state, str(tmp), metadata={'source': Path(src).name, 'format': 'pt'})
    tmp.replace(dst)
    return len(state)


if __name__ == '__main__':                       # the weights command line lives in tools/check_weights.py
    from tools.check_weights import main
    sys.exit(main())
