"""Config loading: mmengine `Config` files with `_base_` inheritance, `--cfg-options` overrides, validation."""
import ast
import os

from mmengine.config import Config


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
    'random_init': (bool,),
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


def parse_overrides(overrides):
    """['a.b=1', 'c=[1,2]', 'd=text'] -> {'a.b': 1, 'c': [1, 2], 'd': 'text'} (Python literals, else strings)."""
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    parsed = {}
    for item in overrides:
        if '=' not in item:
            raise ConfigError(f"--cfg-options {item!r}: expected key=value (e.g. train.max_steps=10)")
        key, value = item.split('=', 1)
        try:
            parsed[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            low = value.strip().lower()
            parsed[key.strip()] = {'true': True, 'false': False, 'none': None, 'null': None}.get(low, value)
    return parsed


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
                    isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in s)):
                raise ConfigError(f"{path}: model.attn_strides[{i}] = {s!r}; each entry must be None or "
                                  f"[ts, xs] with positive integers")
    from diffusion.samplers import SAMPLERS          # here: torch is slow to import, `--help` needs none
    if cfg.sampling.scheduler not in SAMPLERS:
        raise ConfigError(f"{path}: sampling.scheduler = {cfg.sampling.scheduler!r}; use {', '.join(SAMPLERS)}")


def load_config(path, overrides=None):
    """Load a config file, apply `key=value` overrides (list of strings or dict), validate, return a Config."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found; pass a file such as configs/s1024.effn-f32.py")
    try:
        cfg = Config.fromfile(path)
    except Exception as e:  # syntax errors, bad _base_ paths ...
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: cannot be parsed ({msg}); fix the file") from e
    parsed = parse_overrides(overrides)
    for key in parsed:
        try:
            _lookup(cfg, key)
        except KeyError:
            raise ConfigError(f"{path}: --cfg-options key '{key}' does not exist in the config; "
                              f"check the spelling (python -c \"from tools.config import load_config; "
                              f"print(load_config('{path}').pretty_text)\")") from None
    if parsed:  # dicts merge (mmengine); an empty dict empties the key, so vae.config={} is not a no-op
        cfg.merge_from_dict({k: {'_delete_': True} if v == {} else v for k, v in parsed.items()})
    _check(cfg, path)
    cfg.config_path = path
    return cfg
