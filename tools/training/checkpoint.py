"""Training checkpoints: atomic `step_N/` folders of safetensors files plus a JSON manifest, no pickle.

Layout of WORK_DIR/checkpoints/step_{N:08d}/:
    model.safetensors       DiT weights (PixArt names, fp32), loadable by models/weights.load_dit_checkpoint
    ema.safetensors         EMA weights (only when train.ema_decay is set)
    optimizer.safetensors   optimizer state: tensors as entries, the nested structure as JSON metadata
                            (optimizer_{rank}.safetensors, one per rank, when FSDP shards the optimizer)
    rng_{rank}.safetensors  each rank's torch RNG states (uint8 tensors)
    state.json              step, data position, optimizer/scheduler/scaler scalars, sha256 of every file

A checkpoint is written into `step_N.tmp/`, every file is fsync'ed, the manifest (state.json) is written
last, and the folder is renamed to `step_N/`: a folder with the final name is always complete, and a
killed save leaves only a `.tmp` folder that the next save removes.
"""
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from safetensors import safe_open
from safetensors.torch import load_file, save_file

log = logging.getLogger('cascadev.train')
MANIFEST = 'state.json'
_STEP_DIR = re.compile(r'^step_(\d{8})$')


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or corrupt; the message is one line naming the file."""


def step_dir(root, step):
    return Path(root) / f'step_{step:08d}'


def list_checkpoints(root):
    """Complete checkpoints under `root` (final name and a manifest), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / MANIFEST).is_file()]
    return [p for _, p in sorted(found)]


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 24), b''):
            h.update(block)
    return h.hexdigest()


# ---- writing ---------------------------------------------------------------------------------------

def begin(root, step):
    """Create (empty) `step_N.tmp/` and return it; a stale one from a killed save is replaced."""
    tmp = step_dir(root, step).with_name(f'step_{step:08d}.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def write_tensors(folder, name, tensors, metadata=None):
    """Write a dict of tensors (and optional str -> str metadata) as `folder/name` (safetensors); fsync it."""
    path = Path(folder) / name
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)
    _fsync(path)
    return path


def commit(tmp, state, keep_last=None):
    """Hash the files in `tmp`, write the manifest last, rename to the final name, prune; return the folder."""
    tmp = Path(tmp)
    state = dict(state, files={p.name: _sha256(p) for p in sorted(tmp.iterdir())})
    manifest = tmp / MANIFEST
    manifest.write_text(json.dumps(state, indent=1))
    _fsync(manifest)
    _fsync(tmp)
    final = tmp.with_name(tmp.name[:-len('.tmp')])
    if final.exists():  # left by an earlier run that a resume from an older checkpoint is now redoing
        old = final.with_name(final.name + '.old')
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    _fsync(final.parent)
    prune(final.parent, keep_last)
    return final


def prune(root, keep_last):
    """Delete all but the newest `keep_last` complete checkpoints (None or 0: keep all) and stale .tmp folders."""
    root = Path(root)
    for stale in [*root.glob('step_*.tmp'), *root.glob('step_*.old')]:
        shutil.rmtree(stale, ignore_errors=True)
    if keep_last:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


# ---- reading ---------------------------------------------------------------------------------------

def read_manifest(folder, verify=True):
    """Load state.json; with `verify`, check that every listed file exists and matches its sha256."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{manifest}: missing, so {folder} is not a complete checkpoint; "
                              f"resume from another one (or --resume auto)")
    try:
        state = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{manifest}: corrupt ({e.__class__.__name__}); delete {folder} and resume "
                              f"from an earlier checkpoint") from None
    if verify:
        for name, digest in state.get('files', {}).items():
            path = folder / name
            if not path.is_file():
                raise CheckpointError(f"{path}: missing from the checkpoint; delete {folder} and resume from "
                                      f"an earlier checkpoint")
            if _sha256(path) != digest:
                raise CheckpointError(f"{path}: corrupt or truncated (sha256 differs from {MANIFEST}); delete "
                                      f"{folder} and resume from an earlier checkpoint")
    return state


def read_tensors(folder, name):
    """Load `folder/name` (safetensors) to CPU with a one-line error for a broken file."""
    path = Path(folder) / name
    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError, OSError, ...
        raise CheckpointError(f"{path}: cannot be read ({_first_line(e)}); delete {folder} and resume from an "
                              f"earlier checkpoint") from None


def _first_line(e):
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def write_state(folder, name, state):
    """A nested state dict (optimizer, ...) as safetensors: tensors as entries, the structure as JSON metadata."""
    tensors = {}
    structure = flatten_state(state, 'state', tensors)
    return write_tensors(folder, name, tensors, metadata={'structure': json.dumps(structure)})


def read_state(folder, name):
    """Inverse of write_state."""
    tensors = read_tensors(folder, name)
    with safe_open(str(Path(folder) / name), framework='pt') as f:
        structure = json.loads(f.metadata()['structure'])
    return unflatten_state(structure, tensors)


def resolve_resume(root, resume, log=print):
    """--resume PATH -> (folder, state, []); --resume auto -> the newest complete checkpoint that verifies and
    the broken newer ones it skipped, or None when there is no checkpoint at all."""
    if resume != 'auto':
        return Path(resume), read_manifest(resume), []
    broken = []
    for folder in reversed(list_checkpoints(root)):
        try:
            return folder, read_manifest(folder), broken
        except CheckpointError as e:
            log(f"--resume auto: skipping a broken checkpoint: {e}")
            broken.append((folder, e))
    if broken:
        raise CheckpointError(f"{root}: every checkpoint is broken (newest: {broken[0][1]}); move them away to "
                              f"start from scratch")
    return None


def set_aside(folder):
    """Rename a broken checkpoint to `step_N.broken` (kept for inspection, never resumed from or pruned)."""
    target = Path(folder).with_name(Path(folder).name + '.broken')
    shutil.rmtree(target, ignore_errors=True)
    os.rename(folder, target)
    return target


# ---- nested state (optimizer, scaler) without pickle ------------------------------------------------

def flatten_state(obj, prefix, tensors):
    """Nested dict/list/tuple with tensors -> JSON-able structure; tensors move into `tensors` by key."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {'__tensor__': prefix}
    if isinstance(obj, dict):  # keys may be ints (optimizer state is keyed by parameter index)
        return {'__items__': [[k, flatten_state(v, f'{prefix}.{k}', tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [flatten_state(v, f'{prefix}.{i}', tensors) for i, v in enumerate(obj)]
        return {'__tuple__': items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state at '{prefix}' has type {type(obj).__name__}, which cannot be saved "
                    f"without pickle")


def unflatten_state(obj, tensors):
    """Inverse of flatten_state."""
    if isinstance(obj, dict):
        if '__tensor__' in obj:
            return tensors[obj['__tensor__']]
        if '__tuple__' in obj:
            return tuple(unflatten_state(v, tensors) for v in obj['__tuple__'])
        return {k: unflatten_state(v, tensors) for k, v in obj['__items__']}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


def rng_state():
    """This process's torch RNG states as uint8 tensors."""
    states = {'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f'cuda.{i}'] = s
    return states


def set_rng_state(states):
    torch.set_rng_state(states['torch'])
    cuda = [states[k] for k in sorted(states) if k.startswith('cuda.')]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ---- a training run's checkpoints under accelerate (called on every rank) ---------------------------

def optimizer_file(accelerator):
    """optimizer.safetensors, or one file per rank when FSDP shards the optimizer state."""
    sharded = accelerator.distributed_type == DistributedType.FSDP
    return f'optimizer_{accelerator.process_index}.safetensors' if sharded else 'optimizer.safetensors'


def save_checkpoint(accelerator, root, step, model, ema, optimizer, state, keep_last):
    """All ranks: model (+EMA) and state by the main process, RNG (and FSDP optimizer shards) per rank; atomic."""
    weights = accelerator.get_state_dict(model)          # collective under FSDP; the full state on the main rank
    tmp = step_dir(root, step).with_name(f'step_{step:08d}.tmp')
    if accelerator.is_main_process:
        begin(root, step)
    accelerator.wait_for_everyone()
    write_tensors(tmp, f'rng_{accelerator.process_index}.safetensors', rng_state())
    name = optimizer_file(accelerator)
    if accelerator.is_main_process or name != 'optimizer.safetensors':
        write_state(tmp, name, optimizer.state_dict())
    if accelerator.is_main_process:
        write_tensors(tmp, 'model.safetensors', weights)
        if ema is not None:
            write_tensors(tmp, 'ema.safetensors', ema.state_dict())
        if accelerator.scaler is not None:
            state = dict(state, scaler=accelerator.scaler.state_dict())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = commit(tmp, state, keep_last)
        log.info(f"saved checkpoint {final}")
    accelerator.wait_for_everyone()


def load_weights(folder, model, ema):
    """Model (+EMA) weights of a checkpoint into the plain (not yet wrapped) modules."""
    model.load_state_dict(read_tensors(folder, 'model.safetensors'))
    if ema is not None:
        if (Path(folder) / 'ema.safetensors').is_file():
            ema.load_state_dict(read_tensors(folder, 'ema.safetensors'))
        else:
            ema.load_state_dict(model.state_dict())
            log.warning(f"{folder}: has no ema.safetensors; the EMA starts from the model weights")


def load_training_state(accelerator, folder, state, optimizer):
    """Optimizer, loss scaler and this rank's RNG of a checkpoint (after accelerator.prepare)."""
    optimizer.load_state_dict(read_state(folder, optimizer_file(accelerator)))
    if accelerator.scaler is not None and 'scaler' in state:
        accelerator.scaler.load_state_dict(state['scaler'])
    rng = f'rng_{accelerator.process_index}.safetensors'
    if (Path(folder) / rng).is_file():
        set_rng_state(read_tensors(folder, rng))
