"""recon.py never loses or mixes work: one writer per output folder, checks of the output folder, the sizes
and budgets and the latent files before any work (tiny config, random weights, CPU, real clips)."""
import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import recon
from tools.config import load_config
from tools.files import atomic_write, folder_problem, is_temp_of, temp_path
from tools.recon.lock import LOCK_NAME, FolderBusy, claim
from tools.recon.memory import (HEADROOM, PlanError, Workload, at_size, candidates, dit_tiles, largest_size, parse_size,
                                plan_memory, predict)
from tools.recon.records import DONE, LatentMeta
from tools.video.frames import plan
from tools.video.read import probe_video, read_frames

NAME = 'carphone_pristine'


@pytest.fixture(scope='module')
def tiny(repo_root):
    return ['--config', str(repo_root / 'configs' / 'tiny.py'), '--steps', '1', '--device', 'cpu']


def run(argv):
    """recon.main(argv) in-process -> (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = recon.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def start(repo_root, argv):
    """recon.py in a process of its own (one torch thread: the machine is shared)."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    return subprocess.Popen([sys.executable, str(repo_root / 'recon.py'), *map(str, argv)], cwd=repo_root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(test, procs, what, limit=600):
    """Poll test() until it returns something true; fail if every process ended first (or after `limit` s).
    procs: Popen objects, or objects holding one as .proc and their stderr lines as .err."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = test()
        if value:
            return value
        if all(getattr(p, 'proc', p).poll() is not None for p in procs):
            errors = (''.join(p.err) if hasattr(p, 'err') else p.stderr.read() for p in procs)
            pytest.fail(f'the processes ended before {what}: ' + ' | '.join(errors))
        time.sleep(0.02)
    pytest.fail(f'no {what} within {limit} s')


def lock_holder(folder):
    """The pid recorded in folder/.lock, or None (no lock file yet, or its holder has not written it)."""
    try:
        return json.loads((folder / LOCK_NAME).read_text())['pid']
    except (OSError, ValueError, KeyError):
        return None


def frames_sha256(path):
    frames, _ = read_frames(path)
    return hashlib.sha256(frames.tobytes()).hexdigest()


def assert_one_complete_set(folder, seed):
    """done.json lists files that all exist and are readable, each video with its stream; with --lossless the
    decoded frames are exactly the frames done.json's digests name: one run's set, nothing of another."""
    done = json.loads((folder / DONE).read_text())
    assert done['settings']['seed'] == seed and done.get('seed', seed) == seed        # no sampler: no 'seed'
    assert sorted(os.listdir(folder)) == sorted(done['files'] + [DONE])          # no temp file, no lock file
    for f in done['files']:
        if f.endswith('.mp4'):
            assert probe_video(folder / f).num_frames == done['frames']
    from PIL import Image
    assert Image.open(folder / 'cmp.png').size[0] > 0
    for f, digest in done['frames_sha256'].items():
        assert frames_sha256(folder / f) == digest, f
    from tools.recon.latents import load_latent
    latent, meta = load_latent(folder / 'latent.safetensors')
    assert meta.name == NAME and latent.shape[1] == done['frames']


# ---- one writer per folder -------------------------------------------------------------------------------

def test_two_processes_on_one_output_one_writes_the_other_says_so(repo_root, tiny, shared_videos, tmp_path):
    """Both started together with other seeds: whichever claims the folder first is held still (SIGSTOP) while
    it writes, so the other certainly finds it taken; it skips the video with one line and exits 1, and the
    folder ends up holding the first one's complete set."""
    out = tmp_path / 'out'
    argv = [*tiny, '--input', shared_videos / f'{NAME}.mp4', '--output', out, '--num-frames', 2, '--size', 64,
            '--lossless', '--no-metrics']
    procs = {seed: start(repo_root, [*argv, '--seed', seed]) for seed in (1, 2)}
    try:
        pid = wait_for(lambda: lock_holder(out / NAME), procs.values(), 'a claim of the folder')
        holder_seed = next(s for s, p in procs.items() if p.pid == pid)
        holder, other = procs[holder_seed], procs[3 - holder_seed]
        os.kill(pid, signal.SIGSTOP)
        stdout, stderr = other.communicate(timeout=600)
        assert other.returncode == 1, stderr
        line = next(ln for ln in stdout.splitlines() if 'being written' in ln)
        assert line.startswith(f'{NAME}: {out}/{NAME} is being written by another process (pid {pid} on '
                               f'{socket.gethostname()} since ') and line.endswith('; skipped — rerun to resume it')
        assert '1/1 not done, being written by another process' in stderr and line in stderr
        os.kill(pid, signal.SIGCONT)
        stdout, stderr = holder.communicate(timeout=600)
        assert holder.returncode == 0 and '1/1 done' in stdout, stderr
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()
    assert_one_complete_set(out / NAME, holder_seed)
    assert sorted(os.listdir(out)) == [NAME]


def test_a_killed_writer_leaves_nothing_a_rerun_keeps(repo_root, tiny, shared_videos, tmp_path):
    """SIGKILL while the files are being written: its claim is free at once, and the rerun removes the dead
    writer's temp files and half-made outputs and writes one complete set."""
    out = tmp_path / 'out'
    argv = [*tiny, '--input', shared_videos / f'{NAME}.mp4', '--output', out, '--num-frames', 2, '--size', 64,
            '--lossless', '--no-metrics', '--preview-only']
    writer = start(repo_root, [*argv, '--seed', 5])
    try:
        temps = lambda: [p for p in (out / NAME).glob('*.tmp')] if (out / NAME).is_dir() else []
        wait_for(temps, [writer], 'a temp file')
        writer.kill()
        writer.wait()
    finally:
        if writer.poll() is None:
            writer.kill()
    left = os.listdir(out / NAME)
    assert LOCK_NAME in left and any(n.endswith('.tmp') for n in left) and DONE not in left
    code, stdout, err = run([*argv, '--seed', 6])
    assert code == 0 and '1/1 done' in stdout, err
    assert_one_complete_set(out / NAME, 6)


def test_a_claim_is_one_per_folder_and_a_killed_holders_claim_is_free(tmp_path):
    folder = tmp_path / 'v'
    child = subprocess.Popen([sys.executable, '-c', textwrap.dedent(f'''
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from tools.recon.lock import claim
        lock = claim({str(folder)!r})
        print('held', flush=True)
        time.sleep(600)''')], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == 'held'
        with pytest.raises(FolderBusy) as e:
            claim(folder)
        assert e.value.holder.pid == child.pid and e.value.holder.host == socket.gethostname()
        assert f'is being written by another process (pid {child.pid} on ' in str(e.value)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    assert (folder / LOCK_NAME).exists()                           # left behind by the killed holder, yet free
    with claim(folder) as lock:
        assert json.loads((folder / LOCK_NAME).read_text())['pid'] == os.getpid()
        with pytest.raises(FolderBusy):                             # one claim per folder, within a process too
            claim(folder)
    assert not lock.held and os.listdir(folder) == []              # released: the lock file is removed
    with claim(folder):                                            # and the folder can be claimed again
        pass


def test_temp_names_are_each_writers_own(tmp_path):
    a, b = temp_path(tmp_path / 'x.mp4'), temp_path(tmp_path / 'x.mp4')
    assert a != b and f'.{os.getpid()}.' in a and a.endswith('.tmp')
    assert is_temp_of(Path(a).name, 'x.mp4') and not is_temp_of(Path(a).name, 'x.mp')
    assert not is_temp_of('x.mp4', 'x.mp4') and not is_temp_of('x.mp4.tmp', 'x.mp4')
    seen = []

    def write(tmp):
        seen.append(tmp)
        tmp.write_text('new')
        raise RuntimeError('interrupted')
    (tmp_path / 'r.json').write_text('old')
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / 'r.json', write)
    assert sorted(os.listdir(tmp_path)) == ['r.json'] and (tmp_path / 'r.json').read_text() == 'old'
    assert is_temp_of(seen[0].name, 'r.json')


# ---- the output folder, checked before the pipeline is built ----------------------------------------------

@pytest.fixture
def no_pipeline(monkeypatch):
    from models.pipeline import CascadeV

    def refuse(*a, **k):
        raise AssertionError('the pipeline was built')
    monkeypatch.setattr(CascadeV, 'from_config', classmethod(refuse))


@pytest.mark.parametrize('output, reason', [('/proc/x', '/proc does not take new folders ('),
                                            ('/dev/null/x', '/dev/null is not a folder'),
                                            ('FILE/x', 'FILE is not a folder')])
def test_an_output_folder_that_cannot_be_written_is_refused_first(output, reason, tiny, shared_videos, tmp_path,
                                                                   no_pipeline):
    (tmp_path / 'FILE').write_text('a file')
    output, reason = output.replace('FILE', str(tmp_path / 'FILE')), reason.replace('FILE', str(tmp_path / 'FILE'))
    code, stdout, err = run([*tiny, '--input', shared_videos / f'{NAME}.mp4', '--output', output])
    assert code == 2 and stdout == '' and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f'error: --output {output}: cannot be written ({reason}') and 'pick a folder' in err
    assert not os.path.exists(output) and sorted(os.listdir(tmp_path)) == ['FILE']


def test_a_read_only_output_folder_is_refused(tiny, shared_videos, tmp_path, no_pipeline):
    if os.geteuid() == 0:
        pytest.skip('root writes into read-only folders')
    ro = tmp_path / 'ro'
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run([*tiny, '--input', shared_videos / f'{NAME}.mp4', '--output', ro / 'out'])
        assert code == 2 and 'cannot be written' in err and 'Permission denied' in err
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


def test_the_write_check_leaves_nothing_behind_also_when_runs_start_together(tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    assert folder_problem(tmp_path / 'a' / 'b' / 'c') is None
    assert os.listdir(tmp_path) == []
    (tmp_path / 'd').mkdir()
    assert folder_problem(tmp_path / 'd') is None and os.listdir(tmp_path / 'd') == []
    with ThreadPoolExecutor(8) as pool:              # each creates and removes the same folders
        answers = list(pool.map(lambda _: folder_problem(tmp_path / 'e' / 'f'), range(400)))
    assert answers == [None] * 400 and sorted(os.listdir(tmp_path)) == ['d']


# ---- sizes and budgets ----------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def carphone_work(repo_root, shared_videos):
    """w(size) -> the Workload of 4 frames of carphone (144x176) at --size `size` under the tiny config."""
    info = probe_video(shared_videos / f'{NAME}.mp4')
    cfg = load_config(str(repo_root / 'configs' / 'tiny.py'))
    return lambda size: Workload.from_plan(plan(info.height, info.width, size=size, num_frames=4), 4, cfg)


BASE = 10 ** 9                       # memory in use before the work


def smallest_need(w):
    """The lowest predicted peak of any plan of w (bytes)."""
    return min(predict(w, s, BASE).peak for g in candidates(w) for s in g)


def test_a_size_no_machine_fits_is_refused_naming_the_size_that_does(carphone_work):
    w, limit = carphone_work(100000), 64 * 10 ** 9
    with pytest.raises(PlanError) as e:
        plan_memory(w, None, base=BASE, limit=limit)
    msg = str(e.value)
    assert msg.startswith('--size 100000: 4 frames at 100000x122240 from 144x176 need ') and '\n' not in msg
    need = float(msg.split(' need ')[1].split(' GB')[0])
    assert need == pytest.approx(smallest_need(w) / 1e9, abs=0.01) and need > 10_000      # thousands of GB
    assert "more than this machine's 64.00 GB of memory less the 5% headroom (60.80 GB)" in msg
    assert 'DiT tiles' not in msg and '--max-memory' not in msg
    size = int(msg.split('use --size ')[1].split()[0])
    assert smallest_need(at_size(w, size)) <= limit * (1 - HEADROOM) < smallest_need(at_size(w, size + 32))
    plan_memory(at_size(w, size), None, base=BASE, limit=limit)                      # the size named runs
    # a budget below the machine's memory: the size named fits the budget too; no budget is suggested
    with pytest.raises(PlanError) as e:
        plan_memory(w, parse_size('4GB'), base=BASE, limit=limit)
    size = int(str(e.value).split('use --size ')[1].split()[0])
    assert str(e.value).endswith(' or lower (to fit --max-memory 4.00 GB)') and 'raise' not in str(e.value)
    assert smallest_need(at_size(w, size)) <= 4e9 * (1 - HEADROOM) < smallest_need(at_size(w, size + 32))


def test_a_budget_too_small_says_what_must_fit_a_larger_budget_and_the_largest_size(carphone_work):
    w = carphone_work(1024)
    with pytest.raises(PlanError) as e:
        plan_memory(w, parse_size('1.3GB'), base=BASE, limit=64 * 10 ** 9)
    msg = str(e.value)
    assert msg.startswith('--max-memory 1.30 GB: 1.24 GB after the 5% headroom, but even the smallest plan (chunk ')
    need = float(msg.split(' needs ')[1].split(' GB')[0])
    assert need > 1.24 and need == pytest.approx(smallest_need(w) / 1e9, abs=0.01)
    ask = float(msg.split('raise --max-memory to ')[1].split(' GB')[0])
    plan_memory(w, int(ask * 1e9), base=BASE)                                       # the budget named fits
    size = int(msg.split('or use --size ')[1].split()[0])
    assert msg.endswith(f'or use --size {size} or lower') and size % 32 == 0
    assert size == largest_size(w, 1.3e9 * (1 - HEADROOM), BASE)
    plan_memory(at_size(w, size), parse_size('1.3GB'), base=BASE)                   # the size named fits
    with pytest.raises(PlanError):
        plan_memory(at_size(w, size + 32), parse_size('1.3GB'), base=BASE)


@pytest.mark.parametrize('size', [64, 0, 1024, 100000])
def test_dit_tiles_at_a_time_never_exceed_the_tiles(carphone_work, size):
    w = carphone_work(size)
    tiles = dit_tiles(w)[0]
    assert all(1 <= (s.dit_tile_batch or tiles) <= tiles for g in candidates(w) for s in g)
    line = plan_memory(w, None, base=BASE).line()
    assert int(line.split('DiT tiles ')[1].split()[0]) == tiles


def test_recon_refuses_an_absurd_size_in_one_line(tiny, shared_videos, tmp_path):
    code, stdout, err = run([*tiny, '--input', shared_videos / f'{NAME}.mp4', '--output', tmp_path / 'o',
                             '--num-frames', 4, '--size', 100000, '--max-memory', '4GB'])
    assert code == 1
    line = next(ln for ln in stdout.splitlines() if ln.startswith('failed: '))
    assert f'{NAME}.mp4: --size 100000: 4 frames at 100000x122240 from 144x176 need ' in line
    assert ' or lower (to fit --max-memory 4.00 GB)' in line and 'predicted peak' not in stdout
    assert err.startswith('1/1 failed:') and not (tmp_path / 'o').exists()


# ---- latent files and the order of the checks -----------------------------------------------------------

def write_latent(path, tensors, name='clip'):
    from safetensors.torch import save_file
    meta = LatentMeta(name=name, plan=plan(144, 176, size=64, num_frames=2), source='/x/clip.mp4', source_fps=25.0)
    save_file(tensors, str(path), metadata={'meta': json.dumps(meta.to_dict())})


@pytest.mark.parametrize('tensors, message', [
    ({'lat': torch.zeros(16, 2, 2, 3)}, "holds no tensor 'latent' (tensors found: 'lat'); recon.py stores the latent "
                                        "under the key 'latent'"),
    ({}, "holds no tensor 'latent' (tensors found: none)"),
    ({'latent': torch.zeros(16, 2, 4, 4)}, 'latent of shape (16, 2, 4, 4) does not match its metadata (16, T, 2, 3)')])
def test_a_malformed_latent_is_one_line_before_any_work(tensors, message, tiny, tmp_path, no_pipeline):
    write_latent(tmp_path / 'l.safetensors', tensors)
    code, stdout, err = run([*tiny, '--decode-from', tmp_path / 'l.safetensors', '--output', tmp_path / 'o'])
    assert code == 2 and stdout == '' and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f'error: --decode-from {tmp_path}/l.safetensors: {message}')
    assert not (tmp_path / 'o').exists()


def test_a_config_without_weights_prints_only_its_error(repo_root, tmp_path, no_pipeline):
    """A config inheriting tiny.py with real weights that are absent, fp16 on a CPU, and flags a latent ignores:
    the run cannot start, so the weights line is all it prints."""
    cfg = tmp_path / 'ablation.py'
    w = {k: str(tmp_path / 'w' / f) for k, f in
         dict(dit='dit.pth', compressor='e.safetensors', previewer='p.safetensors', vae='svd_vae').items()}
    cfg.write_text(f"_base_ = [{str(repo_root / 'configs' / 'tiny.py')!r}]\nrandom_init = False\nweights = {w!r}\n")
    write_latent(tmp_path / 'l.safetensors', {'latent': torch.zeros(16, 2, 2, 3)})
    code, stdout, err = run(['--config', cfg, '--decode-from', tmp_path / 'l.safetensors', '--output', tmp_path / 'o',
                             '--device', 'cpu', '--dtype', 'fp16', '--size', 128, '--num-frames', 3])
    assert code == 2 and stdout == ''
    assert len(err.strip().splitlines()) == 1 and err.startswith('error: missing weights: ') and 'dit.pth' in err, err
    assert not (tmp_path / 'o').exists()
