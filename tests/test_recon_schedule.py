"""recon.py shares a batch between processes by claiming videos, largest first: independent runs on one output
folder, a holder killed mid-video and taken over, --claim-wait, and two processes under torchrun (tiny config,
random weights, CPU, real clips cut short with ffmpeg)."""
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import imageio_ffmpeg
import pytest
import torch

import recon
from tests.test_recon_safety import lock_holder, wait_for
from tools.recon.batch import prepare
from tools.recon.folders import is_complete
from tools.recon.lock import LOCK_NAME
from tools.recon.records import DONE, LatentMeta
from tools.recon.schedule import largest_first, video_work
from tools.recon.settings import RunSettings
from tools.video.frames import plan

FAST = ['--steps', 1, '--device', 'cpu', '--size', 64, '--no-metrics', '--preview-only']
SUMMARY = re.compile(r'^(\w+): \d+ frames \d+x\d+ @ ')


def cut(src, dst, frames, scale=None):
    """The first `frames` frames of src as an H.264 file (scaled to `scale` 'W:H')."""
    vf = ['-vf', f'scale={scale}'] if scale else []
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-v', 'error', '-y', '-i', str(src), '-frames:v', str(frames),
                    *vf, '-c:v', 'libx264', '-pix_fmt', 'yuv420p', str(dst)], check=True)
    return dst


@pytest.fixture(scope='module')
def clips(tmp_path_factory, shared_videos):
    """Carphone (144x176) cut to 4, 8 and 12 frames, and its first 12 frames scaled to 96x128."""
    folder = tmp_path_factory.mktemp('clips')
    src = shared_videos / 'carphone_pristine.mp4'
    for n in (4, 8, 12):
        cut(src, folder / f'c{n}.mp4', n)
    cut(src, folder / 's12.mp4', 12, '128:96')
    return folder


@pytest.fixture(scope='module')
def tiny(repo_root):
    return ['--config', str(repo_root / 'configs' / 'tiny.py')]


def run(argv):
    """recon.main(argv) in-process -> (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = recon.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


class Recon:
    """recon.py in a process of its own (one torch thread), its stdout and stderr collected line by line."""

    def __init__(self, repo_root, argv, launcher=(), env=None):
        env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', **(env or {})}
        self.proc = subprocess.Popen([*launcher, *([] if launcher else [sys.executable]), str(repo_root / 'recon.py'),
                                      *map(str, argv)], cwd=repo_root, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.pid, self.out, self.err = self.proc.pid, [], []
        self.readers = [threading.Thread(target=lambda s=s, acc=acc: acc.extend(iter(s.readline, '')), daemon=True)
                        for s, acc in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.readers:
            t.start()

    def finish(self, timeout=600):
        """Wait for the process -> (exit code, stdout, stderr)."""
        code = self.proc.wait(timeout)
        for t in self.readers:
            t.join(10)
        return code, ''.join(self.out), ''.join(self.err)

    def done(self):
        """Names of the videos whose summary line this process printed, in order."""
        return [m.group(1) for ln in self.out for m in [SUMMARY.match(ln)] if m]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.finish()


def test_videos_are_ordered_by_frames_times_model_pixels(repo_root, clips, tmp_path):
    """Native size: carphone's model frame is 160x192 (144x176 padded to 32), the scaled clip's 96x128; an
    unreadable file has work 0 and comes last; --interp K counts K(T-1)+1 frames; a latent counts its plan."""
    (tmp_path / 'bad.mp4').write_text('not a video')
    config = str(repo_root / 'configs' / 'tiny.py')
    inputs = tuple(str(clips / f'{n}.mp4') for n in ('c4', 's12', 'c12', 'c8')) + (str(tmp_path / 'bad.mp4'),)
    job = prepare(RunSettings(output=str(tmp_path / 'o'), input=inputs, config=config, size=0, device='cpu'))
    assert {n: video_work(job, n) for n in job.items} == {'c12': 12 * 160 * 192, 'c8': 8 * 160 * 192,
                                                          's12': 12 * 96 * 128, 'c4': 4 * 160 * 192, 'bad': 0}
    assert largest_first(job, sorted(job.items)) == ['c12', 'c8', 's12', 'c4', 'bad']
    job = prepare(RunSettings(output=str(tmp_path / 'o'), input=inputs, config=config, size=0, device='cpu',
                              interp=2, num_frames=4))      # every clip 4 frames: 7 out; ties by name
    assert [(n, video_work(job, n)) for n in largest_first(job, list(job.items))] == [
        ('c12', 7 * 160 * 192), ('c4', 7 * 160 * 192), ('c8', 7 * 160 * 192), ('s12', 7 * 96 * 128), ('bad', 0)]
    from safetensors.torch import save_file
    meta = LatentMeta(name='lat', plan=plan(144, 176, size=64, num_frames=3), source='/x/lat.mp4', source_fps=25.0)
    save_file({'latent': torch.zeros(16, 3, 2, 3)}, str(tmp_path / 'l.safetensors'),
              metadata={'meta': json.dumps(meta.to_dict())})
    job = prepare(RunSettings(output=str(tmp_path / 'o'), decode_from=(str(tmp_path / 'l.safetensors'),),
                              config=config, device='cpu'))
    assert video_work(job, 'lat') == 3 * 64 * 96
    assert not (tmp_path / 'o').exists()


def test_two_runs_started_together_share_the_batch(repo_root, tiny, clips, tmp_path):
    """Whichever claims c12 (the largest, tied with s12 and first by name) is held still (SIGSTOP): the other
    takes s12, c8, c4 in that order, then waits for c12; once the holder goes on and completes c12 the waiting
    one counts it as done by another process. Each video is done once, both exit 0."""
    out = tmp_path / 'out'
    argv = [*tiny, *FAST, '--input', clips, '--output', out, '--claim-wait', 120]
    procs = [Recon(repo_root, argv), Recon(repo_root, argv)]
    try:
        pid = wait_for(lambda: lock_holder(out / 'c12'), procs, 'a claim of c12')
        holder, other = sorted(procs, key=lambda p: p.pid != pid)
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: any(ln.startswith('waiting up to 120 s for 1 video(s) other processes are writing: c12')
                             for ln in other.out), [other], "the other's wait")
        assert other.done() == ['s12', 'c8', 'c4'] and not (out / 'c12' / DONE).exists()
        os.kill(pid, signal.SIGCONT)
        results = [p.finish() for p in (holder, other)]
    finally:
        for p in procs:
            p.stop()
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    assert holder.done() == ['c12'] and other.done() == ['s12', 'c8', 'c4']
    assert f'c12: completed by another process in {out}/c12\n' in results[1][1]
    for name in ('s12', 'c8', 'c4'):
        assert f'{name}: completed by another process in {out}/{name} meanwhile, skipped' in results[0][1]
    assert all('4/4 done in' in stdout for _, stdout, _ in results)
    assert sorted(os.listdir(out)) == ['c12', 'c4', 'c8', 's12'] and all(is_complete(out / n) for n in os.listdir(out))


def test_a_killed_holders_video_is_taken_over_by_a_waiting_run(repo_root, tiny, clips, tmp_path):
    """A holds c12 (stopped). --claim-wait 0 does c4 and reports c12 busy at once (exit 1); --claim-wait 1
    waits a second, then reports it busy (exit 1); B with --claim-wait 60 waits, A is killed, and B takes c12
    over, naming A, and completes the batch (exit 0)."""
    inputs, out = tmp_path / 'in', tmp_path / 'out'
    inputs.mkdir()
    for n in ('c12', 'c4'):
        os.symlink(clips / f'{n}.mp4', inputs / f'{n}.mp4')
    argv = [*tiny, *FAST, '--input', inputs, '--output', out]
    a = Recon(repo_root, argv)
    try:
        wait_for(lambda: lock_holder(out / 'c12') == a.pid, [a], "A's claim of c12")
        os.kill(a.pid, signal.SIGSTOP)
        code, stdout, err = run([*argv, '--claim-wait', 0])
        busy = f'c12: {out}/c12 is being written by another process (pid {a.pid} on '
        assert code == 1 and 'waiting' not in stdout, err
        assert [SUMMARY.match(ln).group(1) for ln in stdout.splitlines() if SUMMARY.match(ln)] == ['c4']
        assert busy in stdout and '1/2 not done, being written by another process' in err and busy in err
        code, stdout, err = run([*argv, '--claim-wait', 1])
        assert code == 1, err
        assert 'c4: complete in' in stdout and 'waiting up to 1 s for 1 video(s) other processes are writing: c12' \
            in stdout and busy not in stdout and busy in err
        b = Recon(repo_root, [*argv, '--claim-wait', 60])
        try:
            wait_for(lambda: any(ln.startswith('waiting up to 60 s') for ln in b.out), [b], "B's wait")
            os.kill(a.pid, signal.SIGKILL)
            code, stdout, err = b.finish()
        finally:
            b.stop()
    finally:
        a.stop()
    assert code == 0 and b.done() == ['c12'] and '2/2 done in' in stdout, err
    line = next(ln for ln in stdout.splitlines() if 'taking over' in ln)
    assert line.startswith(f'c12: taking over {out}/c12 from pid {a.pid} on ')
    assert line.endswith(', which ended without finishing it; redoing it from scratch')
    done = json.loads((out / 'c12' / DONE).read_text())
    assert is_complete(out / 'c12') and done['frames'] == 12 and LOCK_NAME not in os.listdir(out / 'c12')


@pytest.mark.parametrize('value', ['-1', 'nan'])
def test_a_negative_claim_wait_is_one_line(value, tiny, clips, tmp_path):
    code, stdout, err = run([*tiny, '--input', clips, '--output', tmp_path / 'o', '--claim-wait', value])
    assert code == 2 and stdout == '' and len(err.strip().splitlines()) == 1
    assert err.startswith(f'error: --claim-wait {float(value)}: must be a number of seconds >= 0')
    assert not (tmp_path / 'o').exists()


def test_two_processes_under_torchrun_do_each_video_once(repo_root, tiny, clips, tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU) on 3 videos: each video's summary line appears once, the
    batch summary once, exit 0."""
    torchrun = shutil.which('torchrun', path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip('torchrun is not installed beside this python')
    inputs, out = tmp_path / 'in', tmp_path / 'out'
    inputs.mkdir()
    for n in ('c12', 'c8', 'c4'):
        os.symlink(clips / f'{n}.mp4', inputs / f'{n}.mp4')
    p = Recon(repo_root, [*tiny, *FAST, '--input', inputs, '--output', out],
              launcher=(torchrun, '--standalone', '--nproc_per_node', '2'))
    try:
        code, stdout, err = p.finish()
    finally:
        p.stop()
    assert code == 0, err
    assert sorted(p.done()) == ['c12', 'c4', 'c8']
    assert stdout.count('3/3 done in') == 1 and 'not done' not in stdout + err
    assert all(is_complete(out / n) for n in ('c12', 'c8', 'c4'))


def test_a_gloo_rank_killed_mid_video_has_its_video_finished_by_the_other(repo_root, tiny, clips, tmp_path):
    """2 gloo processes of one launch (env rendezvous, no agent to stop the survivor) on 3 unequal videos with
    --claim-wait 60: the one holding c12 (largest) is killed mid-video; the other does the rest, takes c12 over
    (naming the dead pid), cannot gather the dead one's outcomes (one warning line), prints the summary itself,
    exit 0. Every video is complete exactly once."""
    from tests.test_parallel import free_port
    inputs, out = tmp_path / 'in', tmp_path / 'out'
    inputs.mkdir()
    for n in ('c12', 'c8', 'c4'):
        os.symlink(clips / f'{n}.mp4', inputs / f'{n}.mp4')
    port = str(free_port())
    argv = [*tiny, *FAST, '--input', inputs, '--output', out, '--claim-wait', 60]
    procs = [Recon(repo_root, argv, env=dict(WORLD_SIZE='2', RANK=str(r), LOCAL_RANK=str(r), MASTER_PORT=port,
                                             MASTER_ADDR='127.0.0.1')) for r in (0, 1)]
    try:
        pid = wait_for(lambda: lock_holder(out / 'c12'), procs, 'a claim of c12')
        os.kill(pid, signal.SIGSTOP)
        assert not (out / 'c12' / DONE).exists()                        # killed mid-video
        os.kill(pid, signal.SIGKILL)
        survivor = next(p for p in procs if p.pid != pid)
        code, stdout, err = survivor.finish()
    finally:
        for p in procs:
            p.stop()
    assert code == 0, err
    assert 'c12' in survivor.done()
    assert f'c12: taking over {out}/c12 from pid {pid} on ' in stdout
    assert err.count('warning: could not gather the outcomes of the other processes') == 1
    assert stdout.count('3/3 done in') == 1
    assert sorted(os.listdir(out)) == ['c12', 'c4', 'c8'] and all(is_complete(out / n) for n in os.listdir(out))
