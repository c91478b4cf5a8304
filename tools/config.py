"""Config loading: mmengine `Config` files with `_base_` inheritance, `--cfg-options` overrides, validation."""
import argparse
import os

from mmengine.config import Config, DictAction


class ConfigError(ValueError):
    """A config file or override is invalid; the message is one line naming the key and the file."""


# key -> accepted types (None allowed where listed). Checked after overrides are applied.
REQUIRED = {
    'model.input_size': (int,),
    'model.patch_size': (int,),
    'model.in_channels': (int,),
    'model.hidden_size': (int,),
    'model.depth': (int,),
    'model.num_heads': (int,),
    'model.mlp_ratio': (int, float),
    'model.learn_sigma': (bool,),
    'model.pe_interpolation': (int, float),
    'model.attn_strides': (list, tuple, type(None)),
    'model.lats_per_vid': (int,),
    'sr_scale': (int,),
    'scale_factor': (float,),
    'random_init': (bool, list, tuple),
    'diffusion.num_timesteps': (int,),
    'sampling.scheduler': (str,),
    'sampling.steps': (int,),
    'sampling.seed': (int,),
    'data.num_frames_per_video': (int,),
    'data.time_stride': (int,),
    'data.sample_size': (int,),
    'train.batch_size': (int,),
    'optimizer.lr': (float,),
}


def _lookup(cfg, dotted):
    node = cfg.to_dict() if isinstance(cfg, Config) else cfg
    for part in dotted.split('.'):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


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
             "'model.attn_strides=[[1,4],None]' vae.sample_posterior=False optimizer.auto_lr=None")
    return parser


def parse_cfg_options(items):
    """['k=v', ...] -> {key: value}, parsed exactly as `--cfg-options k=v ...` is on the command line."""
    parser = add_cfg_options(argparse.ArgumentParser(add_help=False, exit_on_error=False))
    try:
        return parser.parse_args(['--cfg-options', *items] if items else []).cfg_options
    except argparse.ArgumentError as e:
        raise ConfigError(f"--cfg-options {e.message}") from None


def _check(cfg, path):
    for key, types in REQUIRED.items():
        try:
            value = _lookup(cfg, key)
        except KeyError:
            raise ConfigError(f"{path}: required key '{key}' is missing; add it (see configs/_base_/)") from None
        if types == (float,) and isinstance(value, int) and not isinstance(value, bool):
            continue  # an int where a float is expected is fine (lr=1 is a valid float)
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            names = '/'.join(t.__name__ for t in types)
            raise ConfigError(f"{path}: key '{key}' must be {names}, got {type(value).__name__} {value!r}")
    strides = cfg.model.attn_strides
    if strides is not None:
        if len(strides) != cfg.model.depth:
            raise ConfigError(f"{path}: model.attn_strides has {len(strides)} entries but model.depth is "
                              f"{cfg.model.depth}; give one entry ([ts, xs] or None) per layer")
        for i, s in enumerate(strides):
            if s is not None and (not isinstance(s, (list, tuple)) or len(s) != 2 or not all(
                    isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1) for v in s)):
                raise ConfigError(f"{path}: model.attn_strides[{i}] = {s!r}; each entry must be None or "
                                  f"[ts, xs] with positive integers (or -1: one window per frame / token)")
    stages = ('dit', 'compressor', 'previewer', 'vae')
    if not isinstance(cfg.random_init, bool) and any(s not in stages for s in cfg.random_init):
        raise ConfigError(f"{path}: random_init = {list(cfg.random_init)!r}; use True, False or a list of "
                          f"stages from {list(stages)}")
    if cfg.get('data', {}).get('transform', 'crop') not in ('crop', 'resize_crop'):
        raise ConfigError(f"{path}: data.transform = {cfg.data.transform!r}; use 'crop' (native-scale centre crop, "
                          f"as the release was trained) or 'resize_crop' (short side resized first)")
    auto = cfg.optimizer.get('auto_lr')
    if auto is not None and not (isinstance(auto, dict) and auto.get('rule') in ('sqrt', 'linear') and isinstance(
            auto.get('base_batch_size'), int) and auto['base_batch_size'] >= 1):
        raise ConfigError(f"{path}: optimizer.auto_lr = {auto!r}; use dict(rule='sqrt' or 'linear', "
                          f"base_batch_size=256) or None (the lr as given)")
    from diffusion.samplers import SAMPLERS          # here: torch is slow to import, `--help` needs none
    if cfg.sampling.scheduler not in SAMPLERS:
        raise ConfigError(f"{path}: sampling.scheduler = {cfg.sampling.scheduler!r}; use {', '.join(SAMPLERS)}")
    from models.dit import TILE_BLENDS
    if cfg.sampling.get('tile_blend', 'smooth') not in TILE_BLENDS:
        raise ConfigError(f"{path}: sampling.tile_blend = {cfg.sampling.tile_blend!r}; use {' or '.join(TILE_BLENDS)}")
    if cfg.get('dtype', 'auto') not in ('auto', 'fp32', 'fp16', 'bf16'):
        raise ConfigError(f"{path}: dtype = {cfg.dtype!r}; use auto, fp32, fp16 or bf16")


def load_config(path, overrides=None):
    """Load a config file, apply overrides, validate, return a Config.

    `overrides`: the dict `--cfg-options` produces ({'train.max_steps': 10, ...}; a nested dict merges into
    its section), or a list of 'KEY=VALUE' strings parsed the same way (parse_cfg_options).
    """
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found; pass a file such as configs/s1024.effn-f32.py")
    try:
        cfg = Config.fromfile(path)
    except Exception as e:  # syntax errors, bad _base_ paths ...
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: cannot be parsed ({msg}); fix the file") from e
    parsed = dict(overrides) if isinstance(overrides, dict) else parse_cfg_options(overrides)
    for key in parsed:
        try:
            _lookup(cfg, key)
        except KeyError:
            raise ConfigError(f"{path}: --cfg-options key '{key}' does not exist in the config; "
                              f"check the spelling (python -c \"from tools.config import load_config; "
                              f"print(load_config('{path}').pretty_text)\")") from None
    if parsed:  # dicts merge (mmengine); {} (also typed as `key={}`) empties the key, so vae.config={} is no no-op
        cfg.merge_from_dict({k: {'_delete_': True} if v in ({}, '{}') else v for k, v in parsed.items()})
    _check(cfg, path)
    cfg.config_path = path
    return cfg
