"""What training and its tools refuse before any work: a used or locked work dir, an existing latent cache,
typos and bad values in configs; what they say about random weights; the shell wrappers' path rule.

Real runs of the tiny config on the real carphone clip, CPU, one torch thread.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import train_vae
from tools import check_weights
from tools.cache_latents import main as cache_main
from tools.config import load_config
from tools.training.data import read_cache_index

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / 'configs' / 'tiny.py')
QUICK = ['train.max_steps=2', 'train.log_every=1', 'lr_schedule.warmup_steps=0']

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def snapshot(folder):
    """{relative path: (sha256, mtime_ns)} of every file under `folder`, and every folder as (None, mtime_ns)."""
    out = {}
    for p in sorted(Path(folder).rglob('*')):
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        out[str(p.relative_to(folder))] = (digest, p.stat().st_mtime_ns)
    return out


def one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert err and '\n' not in err, err
    return err


@pytest.fixture(scope='module')
def used_run(carphone, tmp_path_factory):
    """A real work dir of a 2-step run."""
    work = tmp_path_factory.mktemp('used') / 'run'
    assert train_vae.main([TINY, '--work-dir', str(work), '--cfg-options', f'data.video_list=[{carphone}]',
                           *QUICK]) == 0
    return work


# ---- the work dir ------------------------------------------------------------------------------------------

def test_a_second_run_in_a_used_work_dir_is_refused_and_nothing_is_touched(used_run, carphone, capsys):
    capsys.readouterr()
    before = snapshot(used_run)
    assert {'config.py', 'log.jsonl', 'train.log', 'checkpoints/step_00000002/state.json'} <= before.keys()
    argv = [TINY, '--work-dir', str(used_run), '--cfg-options', f'data.video_list=[{carphone}]', *QUICK]
    for extra in ([], ['--dry-run']):                                   # --dry-run checks what a run checks
        assert train_vae.main(argv + extra) == 2
        err = one_line(capsys)
        assert str(used_run) in err and '--resume auto' in err and 'another --work-dir' in err
    time.sleep(0.01)
    assert snapshot(used_run) == before                                # every file's bytes and mtime


def test_resume_goes_on_in_the_same_work_dir(used_run, carphone, tmp_path):
    work = tmp_path / 'run'
    shutil.copytree(used_run, work)
    assert train_vae.main([TINY, '--work-dir', str(work), '--resume', 'auto', '--cfg-options',
                           f'data.video_list=[{carphone}]', *QUICK, 'train.max_steps=3']) == 0
    logged = [json.loads(l)['step'] for l in (work / 'log.jsonl').read_text().splitlines()]
    assert logged == [1, 2, 3]                                         # one run, continued
    assert sorted(p.name for p in (work / 'checkpoints').iterdir()) == ['step_00000002', 'step_00000003']


HOLD_LOCK = """
import sys, time
from tools.training.workdir import WorkDir
WorkDir(sys.argv[1]).claim('auto')
print('held', flush=True)
time.sleep(600)
"""


def test_a_training_running_in_the_work_dir_locks_it_until_it_ends(carphone, tmp_path, capsys):
    work = tmp_path / 'run'
    holder = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(work)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, 'PYTHONPATH': str(REPO)})
    try:
        assert holder.stdout.readline().strip() == 'held'
        argv = [TINY, '--work-dir', str(work), '--resume', 'auto', '--cfg-options', f'data.video_list=[{carphone}]',
                *QUICK]
        assert train_vae.main(argv) == 2
        err = one_line(capsys)
        assert f'another training (pid {holder.pid}) is running in it' in err
        assert sorted(p.name for p in work.iterdir()) == ['.lock']      # the holder's folder is left alone
    finally:
        holder.kill()                                                  # kill -9: the kernel drops the lock
        holder.wait(30)
    assert train_vae.main(argv) == 0                                   # a killed run leaves no stale lock
    assert (work / 'checkpoints' / 'step_00000002').is_dir()


# ---- configs: typos and bad values, one line, exit 2, no work dir ------------------------------------------

BAD_OVERRIDES = [
    (['train.max_steps=abc'], 'train.max_steps'),
    (['train.batch_size=0'], 'train.batch_size'),
    (['train.mixed_precision=fp8'], 'train.mixed_precision'),
    (['model.attn_strides=[[1,3],None,None,None]'], 'model.attn_strides[0]'),
    (['optimizer.auto_lr=None', 'optimizer.auto_lr.rule=linear'], 'optimizer.auto_lr'),
    (['train.max_steps=2.5'], 'train.max_steps'),
    (['data.random_flip=yes'], 'data.random_flip'),
    (['data.num_frames_per_video=0'], 'data.num_frames_per_video'),
    (['model.hidden_size=62'], 'hidden_size=62'),                     # only the model itself can tell
    (['train.max_stpes=3'], "did you mean 'train.max_steps'"),
]


@pytest.mark.parametrize('overrides, key', BAD_OVERRIDES, ids=[o[0][-1] for o in BAD_OVERRIDES])
@pytest.mark.parametrize('dry_run', [False, True], ids=['run', 'dry-run'])
def test_bad_values_exit_2_with_one_line_and_no_work_dir(overrides, key, dry_run, carphone, tmp_path, capsys):
    work = tmp_path / 'run'
    argv = [TINY, '--work-dir', str(work), '--cfg-options', f'data.video_list=[{carphone}]', *overrides]
    assert train_vae.main(argv + (['--dry-run'] if dry_run else [])) == 2
    assert key in one_line(capsys)
    assert not work.exists()


@pytest.mark.parametrize('text, message', [
    ("train = dict(max_stpes=3)\n", "unknown key 'train.max_stpes'; did you mean 'train.max_steps'?"),
    ("trian = dict(max_steps=3)\n", "unknown key 'trian'; did you mean 'train'?"),
])
def test_typos_in_a_config_file_stop_every_entry_point(text, message, carphone, tmp_path, capsys):
    import recon
    from tools import benchmark
    path = tmp_path / 'my.py'
    path.write_text(f"_base_ = [{TINY!r}]\n{text}")
    expected = f"{path}: {message}"
    runs = {'train_vae.py': lambda: train_vae.main([str(path), '--work-dir', str(tmp_path / 'run')]),
            'tools/cache_latents.py': lambda: cache_main([str(path), '--out', str(tmp_path / 'cache')]),
            'tools/check_weights.py': lambda: check_weights.main(['check', str(path)]),
            'recon.py': lambda: recon.main(['--config', str(path), '--input', carphone,
                                            '--output', str(tmp_path / 'out')])}
    for name, run in runs.items():
        assert run() == 2, name
        assert one_line(capsys).endswith(expected), name
    with pytest.raises(SystemExit) as e:                              # argparse's exit: code 2, one line
        benchmark.main(['stages', '--config', str(path), '--frames', '2', '--size', '64'])
    assert e.value.code == 2 and one_line(capsys).endswith(expected)
    assert sorted(os.listdir(tmp_path)) == ['my.py']                  # nothing written


# ---- random weights ------------------------------------------------------------------------------------

def test_check_weights_says_random_init_needs_no_files(tmp_path, capsys):
    assert check_weights.main(['check', TINY]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'{TINY}: needs no weight files\n') and 'all weights present' not in out
    assert 'random_init: dit, compressor, previewer, vae get seeded random weights (no file needed' in out
    module = subprocess.run([sys.executable, '-m', 'models.weights', 'check', TINY], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert module.returncode == 0 and module.stdout == out             # python -m models.weights check: the same
    dit = tmp_path / 'dit.safetensors'
    dit.write_bytes(b'x')
    cfg = tmp_path / 'trained.py'
    cfg.write_text(f"_base_ = [{TINY!r}]\nweights = dict(dit={str(dit)!r})\n")
    assert check_weights.main(['check', str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'{cfg}: all weights present\n  dit: {dit}\n')
    assert 'random_init: compressor, previewer, vae get seeded random weights' in out


# ---- the latent cache: an existing one is refused, resumed or overwritten ------------------------------------

def cache_argv(out, videos, *extra):
    return [TINY, '--out', str(out), *extra, '--cfg-options', f"data.video_list=[{','.join(videos)}]",
            'data.random_flip=False']


def test_an_existing_cache_is_refused_extended_or_replaced(shared_videos, tmp_path, capsys, caplog):
    car, demo, bunny = (str(shared_videos / f'{n}.mp4') for n in ('carphone_pristine', 'demo', 'bigbuckbunny'))
    out = tmp_path / 'cache'
    assert cache_main(cache_argv(out, [car, demo])) == 0
    assert 'random_init: the compressor and vae have seeded random weights' in caplog.text
    capsys.readouterr()
    cfg = load_config(TINY, {'data.video_list': [car, demo, bunny], 'data.random_flip': False})
    first = snapshot(out)
    assert cache_main(cache_argv(out, [bunny])) == 2                   # the default: refused, untouched
    err = one_line(capsys)
    assert f'--out {out}: already holds a latent cache (2 clips)' in err and '--resume' in err and '--overwrite' in err
    assert cache_main(cache_argv(out, [car, demo, bunny], '--resume', '--clips-per-video', '2')) == 2
    assert 'clips_per_video=1' in one_line(capsys)                     # --resume needs the same settings
    assert snapshot(out) == first
    assert cache_main(cache_argv(out, [car, demo, bunny], '--resume')) == 0        # adds only what it lacks
    assert sorted(read_cache_index(out, cfg)) == sorted([car, demo, bunny])
    assert all(snapshot(out)[name] == first[name] for name in first if name.startswith('latents_'))   # kept as is
    index = json.loads((out / 'index_r00.json').read_text())
    assert [(c['path'], c['shard']) for c in index['clips']] == [
        (car, 'latents_r00_00000.safetensors'), (demo, 'latents_r00_00000.safetensors'),
        (bunny, 'latents_r00_00001.safetensors')]
    assert cache_main(cache_argv(out, [bunny], '--overwrite')) == 0
    assert sorted(read_cache_index(out, cfg)) == [bunny] and sorted(os.listdir(out)) == [
        'index_r00.json', 'latents_r00_00000.safetensors']
    (tmp_path / 'notes').mkdir()
    (tmp_path / 'notes' / 'todo.txt').write_text('mine')
    assert cache_main(cache_argv(tmp_path / 'notes', [bunny], '--overwrite')) == 2   # not a cache: never deleted
    assert 'todo.txt, which is not part of a latent cache' in one_line(capsys)
    assert os.listdir(tmp_path / 'notes') == ['todo.txt']


# ---- the shell wrappers: relative paths are the caller's ----------------------------------------------------

def test_the_wrappers_resolve_relative_paths_against_the_callers_directory(shared_videos, tmp_path):
    shutil.copy(shared_videos / 'carphone_pristine.mp4', tmp_path / 'clip.mp4')
    (tmp_path / 'mine.py').write_text(f"_base_ = [{TINY!r}]\ntrain = dict(max_steps=2)\n")
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    train = subprocess.run(['bash', str(REPO / 'train_vae.sh'), 'mine.py', 'run', '--cfg-options',
                            'data.video_list=[clip.mp4]'], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    assert (tmp_path / 'run' / 'checkpoints' / 'step_00000002' / 'state.json').is_file()
    assert not (REPO / 'run').exists()
    recon = subprocess.run(['bash', str(REPO / 'recon.sh'), 'clip.mp4', 'out', '--config', 'mine.py',
                            '--num-frames', '4'], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert recon.returncode == 0, recon.stdout[-2000:] + recon.stderr[-2000:]
    assert (tmp_path / 'out' / 'clip' / 'done.json').is_file() and not (REPO / 'out').exists()
    for script in ('train_vae.sh', 'recon.sh'):                       # the rule, stated in the usage text
        assert 'relative to the directory you run' in (REPO / script).read_text(), script
