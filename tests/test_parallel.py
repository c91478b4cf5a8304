"""One piece of work on several processes (models/parallel.py): 2 gloo processes on the CPU, each with one
thread, against one process with one thread, on a real clip; and the failure protocol."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO_ROOT

WORKER = REPO_ROOT / 'tests' / 'workers' / 'split_stages.py'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch(world, *args, timeout=300):
    """Run the worker on `world` processes (env rendezvous, gloo) -> their (returncode, stderr)."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, 'OMP_NUM_THREADS': '1'}
        if world > 1:
            env.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                       MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], cwd=REPO_ROOT, env=env,
                                      stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=timeout), p.stderr.read()) for p in procs]
    for code, err in results:
        assert code == 0, err[-3000:]
    return results


@pytest.fixture(scope='module')
def stage_runs(tmp_path_factory, shared_videos):
    clip = shared_videos / 'carphone_pristine.mp4'
    one, two = tmp_path_factory.mktemp('one'), tmp_path_factory.mktemp('two')
    launch(1, 'stages', one, clip)
    launch(2, 'all', two, clip)
    return (load_file(one / 'stages.safetensors'), load_file(two / 'stages.safetensors'),
            json.loads((one / 'counters.json').read_text()), json.loads((two / 'counters.json').read_text()), two)


@pytest.mark.parametrize('key', ['latent', 'preview', 'z', 'decoded', 'blended'])
def test_two_processes_equal_one_bit_for_bit(stage_runs, key):
    one, two, _, _, _ = stage_runs
    assert one[key].shape == two[key].shape
    assert torch.equal(one[key], two[key]), float((one[key] - two[key]).abs().max())


def test_bytes_gathered_count_the_other_process_share(stage_runs):
    """Rank 0 receives rank 1's items, every second one of each stage (fp32, 12 frames at 128x160)."""
    _, _, alone, split, _ = stage_runs
    assert alone == {'bytes_gathered': 0, 'exchanges': 0}
    f32 = 4
    compressor = 4 * 16 * 4 * 5 * f32                   # chunks of 8 frames: the second has 4
    previewer = 4 * 3 * 32 * 40 * f32                   # the same chunks, gathered before the x4 up-sampling
    # DiT: 5 windows of 4 frames x 9 tiles (3x3 of 8x8 latent pixels) in calls of 4, 4 and 1 tiles = 15 calls;
    # rank 1 makes calls 1, 3, ..., 13 = 22 tiles of eps (4 channels) per step, 2 steps
    dit = 2 * 22 * 4 * 4 * 8 * 8 * f32
    frame = 3 * 128 * 160 * f32
    # the config's chunks of 3 frames overlapping by 2 start at 0, 1, ..., 9 (rank 1: 5 of them), then chunks
    # of 4 overlapping by 2 at 0, 2, 4, 6, 8 (rank 1: 2)
    svd = 5 * 3 * frame + 2 * 4 * frame
    assert split['bytes_gathered'] == compressor + previewer + dit + svd


def test_failures_reach_every_process(stage_runs):
    tmp_path = stage_runs[-1]
    r0, r1 = (json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1))
    assert r1['first'] == 'ValueError: item 3 cannot be computed'
    assert r0['first'].startswith('SplitAborted: process 1 of 2 failed')
    assert r0['second'] == r1['second'] == [[0], [10], [20]]          # still in step after the failure
    assert r1['third'] == 'finished' and r0['third'].startswith('SplitAborted')
    assert r0['fourth'] == r1['fourth'] == {'plan': 0}
