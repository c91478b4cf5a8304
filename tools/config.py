"""Config loading: mmengine `Config` files with `_base_` inheritance, `--cfg-options` overrides, and one table of
every config key (KEYS) that validation and the `--cfg-options` help are derived from."""
import argparse
import difflib
import os
from dataclasses import dataclass

from mmengine.config import Config, DictAction

from diffusion.samplers import SAMPLERS
from models.attention import ATTN_BACKENDS
from models.dit import check_attn_strides
from models.tiling import TILE_BLENDS
from models.weights import DTYPES, STAGES
from tools.video.frames import TRANSFORMS


class ConfigError(ValueError):
    """A config file or override is invalid; the message is one line naming the key and the file."""


@dataclass(frozen=True)
class Range:
    """The numbers from `lo` to `hi` (inclusive; None: unbounded), usable as a key's choices."""
    lo: float = None
    hi: float = None

    def __contains__(self, value):
        return (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)

    def __str__(self):
        return f'>= {self.lo}' if self.hi is None else f'in [{self.lo}, {self.hi}]'


@dataclass(frozen=True)
class Key:
    """One config key. `type`: '|'-joined names of TYPES ('int|None'); `choices`: the allowed values (of a str
    or number; of each item of a list), a Range, or None (any); `default`: the value configs/_base_/ sets;
    `required`: must be present (inside an optional dict such as optimizer.auto_lr: whenever that dict is)."""
    key: str
    type: str
    default: object
    choices: object
    doc: str
    required: bool = False


TYPES = {'int': int, 'float': (int, float), 'bool': bool, 'str': str, 'path': (str, os.PathLike),
         'list': (list, tuple), 'dict': dict, 'None': type(None)}
WORDS = {'int': 'an integer', 'float': 'a number', 'bool': 'True, False', 'str': 'a string', 'path': 'a path',
         'list': 'a list', 'dict': 'a dict', 'None': 'None'}
MIXED_PRECISION = ('no', *(d for d in DTYPES if d != 'fp32'))   # accelerate's names: 'no' (fp32) or a half dtype
LR_RULES = ('sqrt', 'linear')                                     # lr x (effective batch / base) ** 0.5 or ** 1
POSITIVE, NATURAL, FRACTION = Range(1), Range(0), Range(0, 1)
K = Key
KEYS = (
    # the refiner DiT: models.dit.VideoDiT's keyword arguments
    K('model.input_size', 'int', 128, POSITIVE, 'latent pixels of one spatial tile (= data.sample_size / 8)', True),
    K('model.patch_size', 'int', 2, POSITIVE, 'DiT patch size in latent pixels', True),
    K('model.in_channels', 'int', 20, None, '4 noisy SVD-latent channels + 16 compressor channels', True),
    K('model.hidden_size', 'int', 1152, POSITIVE, 'transformer width', True),
    K('model.depth', 'int', 28, POSITIVE, 'transformer blocks', True),
    K('model.num_heads', 'int', 16, POSITIVE, 'attention heads', True),
    K('model.mlp_ratio', 'float', 4.0, None, 'MLP width / hidden_size', True),
    K('model.learn_sigma', 'bool', True, None, '8 output channels: eps and the variance interpolation value', True),
    K('model.pe_interpolation', 'float', 1.0, None, 'positional-embedding scale (the release: 2.0)', True),
    K('model.attn_strides', 'list|None', None, None, 'per layer: None = full 3D attention, [ts, xs] = grid '
      'attention (-1: one window per frame / token); None: full 3D everywhere', True),
    K('model.lats_per_vid', 'int', 8, POSITIVE, 'frames per temporal window', True),
    K('model.fp32_attention', 'bool', False, None, 'attention in fp32 under autocast (as the release)'),
    K('model.grad_checkpointing', 'bool', False, None, 'recompute block activations in backward (saves memory)'),
    K('model.attn_backend', 'str', 'sdpa', ATTN_BACKENDS, 'attention kernel'),
    K('sr_scale', 'int', 4, None, 'compressor latent (H/32) -> SVD latent (H/8)', True),
    K('scale_factor', 'float', 0.13025, None, 'SVD VAE latent scale', True),
    # the frozen stages and their weights (models.weights)
    K('compressor.chunk_size', 'int', 8, None, 'frames per compressor call (memory flat in clip length)'),
    K('previewer.chunk_size', 'int', 8, None, 'frames per previewer call'),
    K('vae.config', 'dict', {}, None, "empty: read config.json from weights.vae; keys given: build that "
      "AutoencoderKLTemporalDecoder (any of its arguments)"),
    K('vae.decode_chunk', 'int', 4, None, 'frames per SVD temporal-decoder call'),
    K('vae.decode_overlap', 'int', 2, None, 'frames blended between consecutive decoder chunks (0: none)'),
    K('vae.encode_chunk', 'int', 8, None, 'frames per SVD encoder call'),
    K('vae.sample_posterior', 'bool', True, None, 'training target x0: a posterior sample (False: the mean)'),
    K('vae.tile_size', 'int', 0, None, '> 0: decode in spatial tiles of this many latent pixels'),
    K('vae.tile_overlap', 'int', 16, None, 'latent pixels blended between neighbouring decoder tiles'),
    K('weights.dit', 'path', 'pretrained/s1024.effn-f32.pth', None, 'refiner DiT (.pth or .safetensors)'),
    K('weights.compressor', 'path', 'pretrained/effnet_encoder.safetensors', None, 'StableCascade effnet'),
    K('weights.previewer', 'path', 'pretrained/previewer.safetensors', None, 'StableCascade previewer'),
    K('weights.vae', 'path', 'pretrained/svd_vae', None, 'diffusers AutoencoderKLTemporalDecoder folder or file'),
    K('random_init', 'bool|list', False, STAGES, 'True or a list of stages: seeded random weights in place of '
      'the released files', True),
    K('init_seed', 'int', 0, None, 'seed of the random_init weights'),
    # diffusion and reconstruction sampling
    K('diffusion.num_timesteps', 'int', 1000, None, 'IDDPM steps', True),
    K('diffusion.beta_start', 'float', 1e-4, None, 'first beta of the linear schedule'),
    K('diffusion.beta_end', 'float', 0.02, None, 'last beta of the linear schedule'),
    K('diffusion.learn_sigma', 'bool', True, None, 'learned-range variance (loss MSE + VB)'),
    K('sampling.scheduler', 'str', 'EulerA', SAMPLERS, 'reconstruction sampler', True),
    K('sampling.steps', 'int', 8, POSITIVE, 'sampler steps', True),
    K('sampling.seed', 'int', 42, None, 'noise seed', True),
    K('sampling.tile_blend', 'str', 'smooth', TILE_BLENDS, "smooth (no seams) or overwrite (last tile wins)"),
    K('device', 'str', 'auto', None, 'auto, cpu, cuda or cuda:N'),
    K('dtype', 'str', 'auto', ('auto', *DTYPES), 'auto: bf16 on CUDA GPUs with native bf16, else fp32'),
    # training data (tools.training.data)
    K('data.video_list', 'path|list', [], None, '.txt / .json lists of videos, folders or video files'),
    K('data.num_frames_per_video', 'int', 8, POSITIVE, 'frames per training clip', True),
    K('data.time_stride', 'int', 4, POSITIVE, 'source frames between clip frames', True),
    K('data.sample_size', 'int', 1024, POSITIVE, 'clip frames are sample_size x sample_size', True),
    K('data.transform', 'str', 'crop', TRANSFORMS, 'crop: native-scale centre crop (the release); '
      'resize_crop: short side resized first'),
    K('data.random_flip', 'bool', True, None, 'mirror the whole clip with probability 0.5'),
    K('data.num_workers', 'int', 4, NATURAL, 'DataLoader worker processes per GPU'),
    K('data.max_bad_fraction', 'float', 0.1, FRACTION, 'stop when more of the list than this is unreadable'),
    K('data.cached_latents', 'path|None', None, None, 'folder written by tools/cache_latents.py'),
    K('data.eval_video', 'path|None', None, None, 'clip for the previews; None: the last listed video'),
    # optimisation and bookkeeping (train_vae.py)
    K('train.batch_size', 'int', 4, POSITIVE, 'clips per GPU per step', True),
    K('train.max_steps', 'int|None', None, POSITIVE, 'stop after this many optimizer steps (None: num_epochs)'),
    K('train.num_epochs', 'int', 100, POSITIVE, 'epochs when max_steps is None'),
    K('train.joint_training', 'float', 0.1, FRACTION, 'probability that a batch is trained as images'),
    K('train.mixed_precision', 'str', 'fp16', MIXED_PRECISION, 'autocast dtype of training'),
    K('train.grad_clip', 'float|None', 0.01, None, 'max gradient norm (None: no clipping)'),
    K('train.save_model_steps', 'int', 1000, POSITIVE, 'steps between checkpoints'),
    K('train.save_epoch_end', 'bool', True, None, 'also save at the end of every epoch'),
    K('train.keep_last', 'int|None', 3, NATURAL, 'checkpoints kept (None or 0: all)'),
    K('train.eval_every', 'int', 1000, NATURAL, 'steps between held-out previews (0: off)'),
    K('train.log_every', 'int', 10, POSITIVE, 'steps between log lines'),
    K('train.seed', 'int', 0, None, 'training seed'),
    K('train.ema_decay', 'float|None', None, FRACTION, 'keep an EMA of the weights (e.g. 0.9999)'),
    K('train.max_nonfinite', 'int', 10, POSITIVE, 'consecutive non-finite steps before the run stops'),
    K('train.load_from', 'path|None', None, None, 'DiT weights to start from; None: from scratch'),
    K('optimizer.type', 'str', 'CAME', None, 'CAME or AdamW (tools/training/optim.py)'),
    K('optimizer.lr', 'float', 2e-5, NATURAL, 'base lr (at base_batch_size when auto_lr is set)', True),
    K('optimizer.auto_lr', 'dict|None', {'rule': 'sqrt', 'base_batch_size': 256}, None,
      'scale lr with the effective batch; None: lr as given'),
    K('optimizer.auto_lr.rule', 'str', 'sqrt', LR_RULES, 'lr x (effective batch / base) ** 0.5 or ** 1', True),
    K('optimizer.auto_lr.base_batch_size', 'int', 256, POSITIVE, 'the batch lr is given for', True),
    K('optimizer.betas', 'list', (0.9, 0.999, 0.9999), None, "CAME's three betas (AdamW: the first two)"),
    K('optimizer.eps', 'float|list', (1e-30, 1e-16), None, "CAME's two eps (AdamW: the first)"),
    K('optimizer.weight_decay', 'float', 0.0, NATURAL, 'decoupled weight decay'),
    K('lr_schedule.warmup_steps', 'int', 1000, NATURAL, 'linear lr warm-up (0: none)'),
    K('config_path', 'path', None, None, 'the file load_config read (set by it; saved with a run)'),
)
del K
TABLE = {k.key: k for k in KEYS}
SECTIONS = {k.key.rsplit('.', i)[0] for k in KEYS for i in range(1, k.key.count('.') + 1)}   # e.g. optimizer.auto_lr


def _either(items):
    """['a', 'b', 'c'] -> 'a, b or c'."""
    words = [str(i) for i in items]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def keys_help():
    """Every key of the table for `--help`, a section's keys braced, choices after a key: 'model.{input_size,
    ...}, sr_scale, ..., sampling.{scheduler (EulerA|DDIM|DPMS), ...}, ...'."""
    groups = {}                                      # section (or top-level key) -> its keys, in table order
    for k in KEYS:
        section, _, name = k.key.partition('.')
        choices = '' if k.choices is None or isinstance(k.choices, Range) else f" ({'|'.join(k.choices)})"
        groups.setdefault(section, []).append(name + choices if name else section + choices)
    return ', '.join(f"{s}.{{{', '.join(names)}}}" if s in SECTIONS else names[0] for s, names in groups.items())


class CfgOptionsAction(DictAction):
    """mmengine's `--cfg-options` parsing (`k=v`, `k=[a,b]`, `k=a,b`, nested lists/tuples, None/True/False),
    with a usage error instead of a traceback for an item without '='."""

    def __call__(self, parser, namespace, values, option_string=None):
        for item in values or []:
            if '=' not in item:
                raise argparse.ArgumentError(self, f"{item!r}: expected KEY=VALUE (e.g. train.max_steps=10)")
        super().__call__(parser, namespace, values, option_string)


def add_cfg_options(parser):
    """Add `--cfg-options KEY=VALUE ...` to an argparse parser; the parsed value is a dict for load_config."""
    parser.add_argument(
        '--cfg-options', nargs='+', action=CfgOptionsAction, default={}, metavar='KEY=VALUE',
        help="override config keys (mmengine syntax): train.max_steps=100 data.video_list=[a.txt,b.txt] "
             "'model.attn_strides=[[1,4],None]' vae.sample_posterior=False optimizer.auto_lr=None. "
             f"Keys: {keys_help()}")
    return parser


def parse_cfg_options(items):
    """['k=v', ...] -> {key: value}, parsed exactly as `--cfg-options k=v ...` is on the command line."""
    parser = add_cfg_options(argparse.ArgumentParser(add_help=False, exit_on_error=False))
    try:
        return parser.parse_args(['--cfg-options', *items] if items else []).cfg_options
    except argparse.ArgumentError as e:
        raise ConfigError(f"--cfg-options {e.message}") from None


def _words(spec):
    """'int|None' -> 'an integer or None' (what a value of that type spec may be)."""
    return _either(', '.join(WORDS[t] for t in spec.split('|')).split(', '))


def _value_error(key, value):
    """Why `value` is not valid for `key` (its TABLE type, then its choices), as one phrase; None when valid."""
    entry, spec = TABLE[key], TABLE[key].type.split('|')
    if not (('bool' in spec) if isinstance(value, bool) else any(isinstance(value, TYPES[t]) for t in spec)):
        return f"{key} = {value!r} ({type(value).__name__}); use {_words(entry.type)}"
    if entry.choices is None or isinstance(value, bool) or value is None:
        return None
    if isinstance(entry.choices, Range):
        return None if value in entry.choices else f"{key} = {value!r}; use a value {entry.choices}"
    if not isinstance(value, (list, tuple)):
        return None if value in entry.choices else f"{key} = {value!r}; use {_either(entry.choices)}"
    bad = [v for v in value if v not in entry.choices]
    return f"{key} = {list(value)!r}; {bad[0]!r} is not one of {_either(entry.choices)}" if bad else None


def _get(values, key, path):
    """(True, value) of a dotted key in a config dict; (False, None) where it or an optional parent is absent."""
    node, parts = values, key.split('.')
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            parent = '.'.join(parts[:i])
            if parent in TABLE:                      # e.g. optimizer.auto_lr = None: its keys are absent
                return False, None
            raise ConfigError(f"{path}: {parent} = {node!r} ({type(node).__name__}); use a dict of {parent}.* keys")
        if part not in node:
            return False, None
        node = node[part]
    return True, node


def _unknown(values, prefix=''):
    """The dotted keys of a config dict that the table does not know, in file order."""
    for name, value in values.items():
        key = prefix + name
        if key in SECTIONS and isinstance(value, dict):
            yield from _unknown(value, key + '.')
        elif key not in TABLE and key not in SECTIONS:
            yield key


def _unknown_error(key, path, overrides):
    """The ConfigError for an unknown key: the --cfg-options item that set it, if one did, and the nearest key."""
    item = next((o for o in overrides if o == key or o.startswith(key + '.') or key.startswith(o + '.')), None)
    name = max(key, item or '', key=len)
    parent, _, last = name.rpartition('.')
    same_depth = [k for k in (*TABLE, *SECTIONS) if k.count('.') == name.count('.')]
    siblings = {k.rpartition('.')[2]: k for k in same_depth if k.rpartition('.')[0] == parent}
    near = [siblings[n] for n in difflib.get_close_matches(last, siblings, 1)] or \
        difflib.get_close_matches(name, same_depth, 1)
    what = f"--cfg-options key '{name}' is unknown" if item else f"unknown key '{name}'"
    hint = f"did you mean '{near[0]}'?" if near else "the known keys are listed under --cfg-options in --help"
    return ConfigError(f"{path}: {what}; {hint}")


def _check(cfg, path, overrides=()):
    """Every key of the merged config against the table: known (the nearest key named if not), present where
    required, of its type and within its choices. ConfigError (one line naming the key and `path`) otherwise."""
    values = cfg.to_dict()
    unknown = next(_unknown(values), None)
    if unknown:
        raise _unknown_error(unknown, path, overrides)
    for entry in KEYS:
        found, value = _get(values, entry.key, path)
        if not found:
            parent = entry.key.rpartition('.')[0]
            in_optional = parent in TABLE and not isinstance(_get(values, parent, path)[1], dict)
            if entry.required and not in_optional:
                raise ConfigError(f"{path}: required key '{entry.key}' is missing; add it (configs/_base_/ sets "
                                  f"{entry.default!r})")
        elif _value_error(entry.key, value):
            raise ConfigError(f"{path}: {_value_error(entry.key, value)}")
    _check_attn_strides(cfg.model, path)


def _check_attn_strides(model, path):
    """model.attn_strides against the model it configures: one entry per layer, each stride dividing
    model.lats_per_vid and the token grid model.input_size / model.patch_size (models.dit.check_attn_strides)."""
    if model.input_size % model.patch_size:
        raise ConfigError(f"{path}: model.input_size = {model.input_size} is not a multiple of model.patch_size = "
                          f"{model.patch_size}; change one of them")
    try:
        check_attn_strides(model.attn_strides, model.depth, model.lats_per_vid, model.input_size // model.patch_size,
                           key='model.attn_strides', where=f"{path}: ")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _first_line(e):
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _non_dict_parent(values, key, itself=False):
    """The first dotted parent of `key` (with `itself`, or `key`) that the config holds as a non-dict
    (optimizer.auto_lr = None), or None."""
    node, parts = values, key.split('.')
    for i, part in enumerate(parts if itself else parts[:-1]):
        if part not in node:
            return None
        node = node[part]
        if not isinstance(node, dict):
            return '.'.join(parts[:i + 1])
    return None


def _merge_items(values, parsed, path):
    """Overrides as merge_from_dict takes them. {} (also typed `key={}`) empties a key, so vae.config={} is no
    no-op; keys below one the config holds as None or another non-dict build a new dict there
    (optimizer.auto_lr.rule=linear over optimizer.auto_lr = None). ConfigError when one override sets a key
    below another override's non-dict value (optimizer.auto_lr=None with optimizer.auto_lr.rule=linear)."""
    for key, value in parsed.items():
        below = next((o for o in parsed if o.startswith(key + '.')), None)
        if below is not None and not isinstance(value, dict):
            raise ConfigError(f"{path}: --cfg-options {key}={value!r} and {below}={parsed[below]!r} contradict "
                              f"each other ({key} is then not a dict); give only one of them")
    items = {}
    for key, value in parsed.items():
        value = {'_delete_': True} if isinstance(value, (dict, str)) and value in ({}, '{}') else value
        if isinstance(value, dict) and _non_dict_parent(values, key, itself=True) == key:
            value = {'_delete_': True, **value}                # a dict in place of None
        parent = _non_dict_parent(values, key)
        if parent is None:
            items[key] = value
            continue
        node = items.setdefault(parent, {'_delete_': True})
        *middle, last = key[len(parent) + 1:].split('.')
        for part in middle:
            node = node.setdefault(part, {})
        node[last] = value
    return items


def load_config(path, overrides=None):
    """Load a config file, apply overrides, validate against KEYS, return a Config (config_path set to `path`).

    `overrides`: the dict `--cfg-options` produces ({'train.max_steps': 10, ...}; a nested dict merges into
    its section), or a list of 'KEY=VALUE' strings parsed the same way (parse_cfg_options).
    Raises ConfigError (one line naming `path` and the key) for a missing or unparsable file, an unknown key (from
    the file or an override, with the nearest known key), a missing required key, or a value of the wrong type
    or outside its choices.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found; pass a file such as configs/s1024.effn-f32.py")
    try:
        cfg = Config.fromfile(path)
    except Exception as e:  # syntax errors, bad _base_ paths ...
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: cannot be parsed ({msg}); fix the file") from e
    parsed = dict(overrides) if isinstance(overrides, dict) else parse_cfg_options(overrides)
    if parsed:
        try:
            cfg.merge_from_dict(_merge_items(cfg.to_dict(), parsed, path))
        except (TypeError, KeyError, AttributeError) as e:   # what mmengine raises for a merge it cannot do
            raise ConfigError(f"{path}: --cfg-options cannot be applied ({_first_line(e)}); check the keys") from None
    _check(cfg, path, parsed)
    cfg.config_path = path
    return cfg
