"""Latent files: the compressor latent of one clip plus the metadata needed to render it again without the source.

    save_latent(path, latent, meta)          # (16, T, h, w) fp32 + meta (tools.recon.records.LatentMeta) as JSON
    latent, meta = load_latent(path)         # LatentError (one line) for anything not written by save_latent

A latent file may come from someone else: its metadata is data, never trusted as a path. `safe_name` is the
only way a name read from a file becomes a folder name.
"""
import json
import os
import unicodedata

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tools.files import atomic_write
from tools.recon.records import LATENT_FORMAT, LatentMeta


class LatentError(ValueError):
    """A latent file that cannot be used; the message is one line naming the file, the rule and the fix."""


def safe_name(name, path):
    """`name` if it is one safe path component (no separator, not '.', '..', empty or blank, no control, invisible-format (e.g. U+202E) or unassigned character, at most 255
    bytes), else LatentError naming `path`, the file it came from."""
    ok = (isinstance(name, str) and name.strip() not in ('', '.', '..') and '/' not in name and '\\' not in name
          and not any(unicodedata.category(c) in ('Cc', 'Cf', 'Cs', 'Co', 'Cn', 'Zl', 'Zp') for c in name)
          and len(name.encode('utf-8', 'surrogatepass')) <= 255)
    if not ok:
        raise LatentError(f"{path}: its metadata names the video {name!r}, which is not a single safe folder name "
                          f"(no '/', '\\\\', '..', blank, control or invisible characters); the file is refused — re-encode the source")
    return name


def save_latent(path, latent, meta):
    """Compressor latent (16, T, h, w) fp32 + its LatentMeta as JSON (key 'meta') as safetensors, via a temp file."""
    text = json.dumps(meta.to_dict())

    def write(tmp):
        save_file({'latent': latent.detach().float().cpu().contiguous()}, str(tmp), metadata={'meta': text})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)               # safetensors creates 0600; match the other outputs
    atomic_write(path, write)


def read_latent_meta(path):
    """The LatentMeta of a latent file (its 'name' checked by safe_name); LatentError if it is not one: no
    CascadeV metadata, no valid frame plan, or no tensor 'latent' of shape (16, T, h, w) matching the plan
    (h, w = the plan's model size / 32). Reads the header only."""
    try:
        with safe_open(str(path), 'pt') as f:
            meta = json.loads((f.metadata() or {}).get('meta', '{}'))
            keys = sorted(f.keys())
            shape = tuple(f.get_slice('latent').get_shape()) if 'latent' in keys else None
    except Exception as e:
        raise LatentError(f'{path}: not a readable safetensors file ({e}); pass a latent.safetensors written by '
                          f'recon.py') from None
    if not isinstance(meta, dict):
        meta = {}
    if meta.get('format') == 'cascadev-latent-v1':
        raise LatentError(f'{path}: was written by an older recon.py without the frame plan; reconstruct its '
                          f'source video again')
    if meta.get('format') != LATENT_FORMAT:
        raise LatentError(f'{path}: has no CascadeV latent metadata (format {LATENT_FORMAT}); pass a '
                          f'latent.safetensors written by recon.py')
    safe_name(meta.get('name'), path)
    try:
        meta = LatentMeta.from_dict(meta)
    except (KeyError, TypeError, ValueError) as e:
        raise LatentError(f'{path}: its metadata has no valid frame plan ({e}); the file was edited or is corrupt '
                          f'— re-encode the source') from None
    if shape is None:
        found = ', '.join(repr(k) for k in keys[:8]) + (', ...' if len(keys) > 8 else '') or 'none'
        raise LatentError(f"{path}: holds no tensor 'latent' (tensors found: {found}); recon.py stores the "
                          f"latent under the key 'latent' — re-encode the source, or save it under that key")
    _check_shape(path, shape, meta)
    return meta


def _check_shape(path, shape, meta):
    if meta.autoencoder:
        raise LatentError(f'{path}: is a latent of --autoencoder {meta.autoencoder}, not CascadeV\'s; --decode-from '
                          f'decodes CascadeV latents only: run recon.py --autoencoder {meta.autoencoder} on the '
                          f'source video again')
    h, w = meta.plan.model
    if len(shape) != 4 or shape[0] != 16 or tuple(shape[2:]) != (h // 32, w // 32):
        raise LatentError(f'{path}: latent of shape {tuple(shape)} does not match its metadata '
                          f'(16, T, {h // 32}, {w // 32}); the file was edited or is corrupt')


def load_latent(path):
    """-> (latent (16, T, h, w) fp32, LatentMeta); LatentError (read_latent_meta) for a file that is not one."""
    meta = read_latent_meta(path)
    latent = load_file(str(path))['latent'].float()
    _check_shape(path, latent.shape, meta)
    return latent, meta
