"""The original's frame preprocessing, bit-exact: every case listed in the golden file's metadata.

GOLDEN_PREPROCESS_FILE names the file (default ../shared/golden/golden_preprocess_a.safetensors); cases are
rebuilt from its metadata alone (source key, path, short edge / resolution, size_div), so other golden files
made by the same recipe (RECIPE.md §12) check the same way.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tools.video.frames import cascadev_recon_preprocess, cascadev_train_crop

DEFAULT = Path(__file__).resolve().parents[2] / 'shared' / 'golden' / 'golden_preprocess_a.safetensors'


GOLDEN = Path(os.environ.get('GOLDEN_PREPROCESS_FILE', DEFAULT))


def _cases():
    """One parameter per case of the golden file's metadata (read at collection; a skip when it is absent)."""
    if not GOLDEN.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(
            reason=f'{GOLDEN} not found (set GOLDEN_PREPROCESS_FILE or put ../shared beside the repository)'))]
    from safetensors import safe_open
    with safe_open(str(GOLDEN), 'np') as f:
        return [pytest.param(case, id=case['key']) for case in json.loads(f.metadata()['meta'])['cases']]


@pytest.fixture(scope='module')
def tensors():
    """Every tensor of the golden file, read once for all cases."""
    from safetensors import safe_open
    with safe_open(str(GOLDEN), 'np') as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize('case', _cases())
def test_preprocess_case_is_bit_exact(case, tensors):
    src, want = tensors[case['src']], tensors[case['key']]
    if case['path'] == 'recon':
        got = cascadev_recon_preprocess(src, case['short_edge'], multiple=case.get('size_div', 32))
    elif case['path'] == 'train':
        got = cascadev_train_crop(src, case['resolution'])
    else:
        pytest.fail(f"unknown path {case['path']!r} in the golden case {case['key']}")
    assert got.dtype == np.uint8 and got.shape == want.shape == tuple(case['shape'])
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert int(diff.max()) == 0, f"{case['key']}: {int((diff > 0).sum())} values differ (max {int(diff.max())})"


def test_train_crop_pads_short_sides_centred():
    frames = np.full((2, 10, 40, 3), 200, np.uint8)            # height below R, width above
    out = cascadev_train_crop(frames, 16)
    assert out.shape == (2, 16, 16, 3)
    assert (out[:, :3] == 0).all() and (out[:, 13:] == 0).all()          # top (16-10)//2 = 3, bottom 3
    assert (out[:, 3:13] == 200).all()


def test_recon_preprocess_rejects_float_and_tiny_frames():
    with pytest.raises(ValueError, match='uint8'):
        cascadev_recon_preprocess(np.zeros((1, 64, 64, 3), np.float32), 64)
    with pytest.raises(ValueError, match='below 32'):
        cascadev_recon_preprocess(np.zeros((1, 64, 64, 3), np.uint8), 16)
