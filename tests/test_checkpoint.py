"""Checkpoint files (tools/training/checkpoint.py): pickle-free optimizer state, atomic save, prune, corrupt files."""
import shutil

import pytest
import torch
from came_pytorch import CAME

from tools.training import checkpoint as ckpt


def _trained_optimizer(kind):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = CAME(model.parameters(), lr=1e-3) if kind == 'CAME' else torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize('kind', ['CAME', 'AdamW'])
def test_optimizer_state_round_trips_without_pickle(tmp_path, kind):
    model, opt = _trained_optimizer(kind)
    ckpt.write_state(tmp_path, 'opt.safetensors', opt.state_dict())
    restored = ckpt.read_state(tmp_path, 'opt.safetensors')
    assert _same(opt.state_dict(), restored)
    _, fresh = _trained_optimizer(kind)
    fresh.load_state_dict(restored)
    assert _same(opt.state_dict(), fresh.state_dict())


def test_flatten_refuses_objects_that_need_pickle():
    with pytest.raises(TypeError, match="'x.a'.*object"):
        ckpt.flatten_state({'a': object()}, 'x', {})


def _save(root, step, keep_last=None, payload=1.0):
    tmp = ckpt.begin(root, step)
    ckpt.write_tensors(tmp, 'model.safetensors', {'w': torch.full((3,), payload)})
    return ckpt.commit(tmp, {'step': step}, keep_last)


def test_atomic_save_prune_and_latest(tmp_path):
    for step in (2, 4, 6, 8):
        _save(tmp_path, step, keep_last=3)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ['step_00000004', 'step_00000006', 'step_00000008']
    ckpt.begin(tmp_path, 10)                          # a save killed half-way: only a .tmp folder
    assert ckpt.list_checkpoints(tmp_path)[-1].name == 'step_00000008'
    folder, state, _ = ckpt.resolve_resume(tmp_path, 'auto')
    assert folder.name == 'step_00000008' and state['step'] == 8 and 'model.safetensors' in state['files']
    _save(tmp_path, 12, keep_last=3)                  # the next save removes the stale .tmp
    assert not list(tmp_path.glob('*.tmp'))
    again = _save(tmp_path, 12, keep_last=3, payload=2.0)   # a step saved again (a redone resume) replaces it
    assert torch.equal(ckpt.read_tensors(again, 'model.safetensors')['w'], torch.full((3,), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['step_00000006', 'step_00000008', 'step_00000012']


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'delete', 'manifest'])
def test_corrupt_checkpoint_one_line_and_auto_fallback(tmp_path, damage):
    _save(tmp_path, 1)
    bad = _save(tmp_path, 2)
    target = bad / ('state.json' if damage == 'manifest' else 'model.safetensors')
    data = target.read_bytes()
    if damage == 'truncate':
        target.write_bytes(data[:len(data) // 2])
    elif damage == 'flip':
        target.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == 'delete':
        target.unlink()
    else:
        target.write_text(data.decode()[:20])
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.read_manifest(bad)
    msg = str(e.value)
    assert '\n' not in msg and str(target) in msg
    warnings = []
    folder, _, broken = ckpt.resolve_resume(tmp_path, 'auto', log=warnings.append)
    assert folder.name == 'step_00000001' and str(target) in warnings[0] and broken[0][0] == bad
    assert ckpt.set_aside(bad).name == 'step_00000002.broken'
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ['step_00000001']
    shutil.rmtree(folder)
    shutil.move(tmp_path / 'step_00000002.broken', bad)
    with pytest.raises(ckpt.CheckpointError, match='every checkpoint is broken'):
        ckpt.resolve_resume(tmp_path, 'auto', log=warnings.append)


def test_unreadable_tensor_file_one_line(tmp_path):
    (tmp_path / 'x.safetensors').write_bytes(b'\x00' * 7)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.read_tensors(tmp_path, 'x.safetensors')
    assert '\n' not in str(e.value) and 'x.safetensors' in str(e.value)


def test_rng_state_round_trip(tmp_path):
    ckpt.write_tensors(tmp_path, 'rng.safetensors', ckpt.rng_state())
    a = torch.rand(3)
    ckpt.set_rng_state(ckpt.read_tensors(tmp_path, 'rng.safetensors'))
    assert torch.equal(a, torch.rand(3))
