"""One video shared by the processes of a launch (recon.py under torchrun, 2 gloo processes of one thread each,
tools/recon/per_video.py share_video): the same files as one process of one thread, bit for bit, one done.json
that says 2 processes shared the video, one set of files; a video that fails stops on both and the batch goes on."""
import json
import os
import shutil
import sys

import pytest
from safetensors.torch import load_file

from tests.test_recon_schedule import Recon, cut
from tools.recon.folders import is_complete

FLAGS = ['--num-frames', 12, '--size', 128, '--steps', 2, '--device', 'cpu']
FILES = {'cmp.mp4', 'cmp.png', 'done.json', 'latent.safetensors', 'preview.mp4', 'rec.mp4'}


@pytest.fixture(scope='module')
def torchrun():
    path = shutil.which('torchrun', path=os.path.dirname(sys.executable))
    if path is None:
        pytest.skip('torchrun is not installed beside this python')
    return (path, '--standalone', '--nproc_per_node', '2')


def recon(repo_root, argv, launcher=()):
    p = Recon(repo_root, ['--config', repo_root / 'configs' / 'tiny.py', *argv], launcher=launcher)
    try:
        return p.finish()
    finally:
        p.stop()


@pytest.fixture(scope='module')
def runs(repo_root, torchrun, shared_videos, tmp_path_factory):
    """carphone, 12 frames at 128x160, reconstructed by one process and by two."""
    clip = shared_videos / 'carphone_pristine.mp4'
    one, two = tmp_path_factory.mktemp('one'), tmp_path_factory.mktemp('two')
    code, _, err = recon(repo_root, ['--input', clip, '--output', one, *FLAGS])
    assert code == 0, err
    code, stdout, err = recon(repo_root, ['--input', clip, '--output', two, *FLAGS], torchrun)
    assert code == 0, err
    return one / 'carphone_pristine', two / 'carphone_pristine', stdout


def test_two_processes_write_the_files_of_one_bit_for_bit(runs):
    one, two, _ = runs
    a, b = (json.loads((d / 'done.json').read_text()) for d in (one, two))
    assert a['frames_sha256'] == b['frames_sha256']                        # preview.mp4 and rec.mp4 frames
    la, lb = load_file(one / 'latent.safetensors'), load_file(two / 'latent.safetensors')
    assert la.keys() == lb.keys() and all(la[k].equal(lb[k]) for k in la)
    assert a['settings'] == b['settings']                                   # a rerun alone would skip it
    assert a['render']['metrics'] == b['render']['metrics'] if 'render' in a else a['metrics'] == b['metrics']


def test_one_done_json_records_the_processes_and_one_set_of_files(runs):
    one, two, stdout = runs
    a, b = (json.loads((d / 'done.json').read_text()) for d in (one, two))
    assert a['processes'] == 1 and 'gathered_bytes' not in a
    # what rank 0 received of rank 1's share (fp32): the second compressor and previewer chunk of 8 frames (4
    # frames of 16x4x5 latent, of 3x32x40 preview before the x4 up-sampling), DiT calls 1 and 3 of the 5
    # windows of each of the 2 steps (9 tiles of 4x4x8x8 eps each), SVD chunks 1 and 3 of the 5 of 4 frames
    compressor, previewer, dit = 4 * 16 * 4 * 5 * 4, 4 * 3 * 32 * 40 * 4, 2 * 2 * 9 * 4 * 4 * 8 * 8 * 4
    svd = 2 * 4 * 3 * 128 * 160 * 4
    assert b['processes'] == 2 and b['gathered_bytes'] == compressor + previewer + dit + svd
    assert {p.name for p in two.iterdir()} == FILES == {p.name for p in one.iterdir()}
    assert [p.name for p in two.parent.iterdir()] == ['carphone_pristine']    # no lock, temp or stray file
    assert stdout.count('1/1 done in') == 1 and stdout.count('carphone_pristine: 12 frames') == 1
    assert 'each one shared by all of them' in stdout


def test_a_failing_video_stops_on_every_process_and_the_batch_goes_on(repo_root, torchrun, shared_videos,
                                                                      tmp_path):
    """--split-video on 2 videos: a truncated file fails (once, on the summary), the good one is done by both;
    --eval still runs on rank 0 (the other rank exits 0, so torchrun does not stop rank 0 on its way)."""
    inputs, out = tmp_path / 'in', tmp_path / 'out'
    inputs.mkdir()
    cut(shared_videos / 'carphone_pristine.mp4', inputs / 'good.mp4', 6)
    (inputs / 'broken.mp4').write_bytes((inputs / 'good.mp4').read_bytes()[:2000])
    code, stdout, err = recon(repo_root, ['--input', inputs, '--output', out, '--split-video', '--size', 64,
                                          '--steps', 1, '--device', 'cpu', '--no-metrics', '--eval'], torchrun)
    assert code == 1, err
    assert 'SIGTERM' not in err
    assert list(json.loads((out / '.eval' / 'summary.json').read_text())['methods']) == ['preview', 'refined']
    assert err.count('1/2 failed:') == 1 and 'broken.mp4' in err
    assert is_complete(out / 'good') and not (out / 'broken').exists()
    assert json.loads((out / 'good' / 'done.json').read_text())['processes'] == 2
