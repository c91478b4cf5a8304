"""Training end to end (train_vae.py, tools/cache_latents.py) on the tiny config and real clips, CPU fp32.

In-process runs call tools.training.loop.train or train_vae.main(argv); the kill, signal and two-rank tests
run real processes (train_vae.py, or a small launcher script that patches or hooks the library). Torch runs
single-threaded here: the tiny model is too small for threads to help, and they hurt on a loaded machine.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_vae
from diffusion import create_diffusion
from models.dit import VideoDiT, init_random_weights_
from models.weights import build_compressor, build_vae, load_dit_checkpoint
from tools.cache_latents import main as cache_main
from tools.config import load_config
from tools.training import checkpoint as ckpt
from tools.training import step as train_step_module
from tools.training.cache import cache_latents
from tools.training.data import CachedClips, collate, load_clip, read_cache_index
from tools.training.loop import TrainingError, train
from tools.training.optim import effective_lr, lr_at
from tools.training.step import compute_losses, draw_step, encode_batch, nonfinite_policy
from tools.video.read import read_video

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / 'configs' / 'tiny.py')
# test runs: no epoch-end saves (one-video lists make every step an epoch), no warm-up, a log line per step
BASE = {'train.save_epoch_end': False, 'lr_schedule.warmup_steps': 0, 'data.num_workers': 0, 'train.log_every': 1}


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def tiny_cfg(**overrides):
    return load_config(TINY, {**BASE, **overrides})


def overrides_argv(overrides):
    """The overrides as `--cfg-options` items; a dict value becomes one item per key (key.sub=value)."""
    flat = {}
    for k, v in {**BASE, **overrides}.items():
        flat.update({f'{k}.{sub}': x for sub, x in v.items()} if isinstance(v, dict) else {k: v})
    return [f'{k}={v!r}' for k, v in flat.items()]


@pytest.fixture(scope='module')
def cache(carphone, tmp_path_factory):
    """Cached latents of the carphone clip (2 clips, unflipped and flipped)."""
    out = tmp_path_factory.mktemp('cache')
    cfg = tiny_cfg(**{'data.video_list': [carphone]})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert cache_latents(cfg, out, clips_per_video=2) == 4
    torch.set_num_threads(threads)
    return str(out)


@pytest.fixture(scope='module')
def full_run(carphone, tmp_path_factory):
    """10 steps on the fly with EMA, posterior sampling, joint image training and the released auto_lr rule
    (lr 1e-3 × √(1/256)); saves every 2 steps, keeps 2."""
    work = tmp_path_factory.mktemp('full')
    over = {'data.video_list': [carphone], 'train.max_steps': 10, 'train.save_model_steps': 2, 'train.keep_last': 2,
            'train.ema_decay': 0.9, 'train.joint_training': 0.5, 'vae.sample_posterior': True,
            'optimizer.lr': 1e-3, 'optimizer.auto_lr': {'rule': 'sqrt', 'base_batch_size': 256}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result = train(tiny_cfg(**over), work)
    torch.set_num_threads(threads)
    return over, work, result


def _steps(work):
    return [int(p.name[5:]) for p in ckpt.list_checkpoints(Path(work) / 'checkpoints')]


def test_ten_steps_write_checkpoints_and_prune(full_run):
    _, work, result = full_run
    assert result['step'] == 10 and result['iteration'] == 10
    losses = [l for _, l in result['losses']]
    assert len(losses) == 10 and all(map(lambda v: v == v and abs(v) < 1e3, losses))
    assert _steps(work) == [8, 10]                                     # keep_last=2 pruned 2, 4, 6
    folder = work / 'checkpoints' / 'step_00000010'
    assert {p.name for p in folder.iterdir()} == {'model.safetensors', 'ema.safetensors', 'optimizer.safetensors',
                                                  'rng_0.safetensors', 'state.json'}
    state = ckpt.read_manifest(folder)
    assert state['step'] == 10 and state['iteration'] == 10
    cfg = load_config(str(work / 'config.py'))                        # the final config is saved and loadable
    assert cfg.train.max_steps == 10 and cfg.train.ema_decay == 0.9
    model = load_dit_checkpoint(VideoDiT.from_config(cfg.model), folder / 'model.safetensors')   # PixArt names: loads
    assert model.final_layer.linear.weight.abs().sum() > 0                           # it trained (zero-init)
    logged = [json.loads(l) for l in (work / 'log.jsonl').read_text().splitlines()]
    assert [r['step'] for r in logged] == list(range(1, 11))
    assert {'loss', 'mse', 'vb', 'grad_norm', 'lr', 'samples_per_s'} <= logged[0].keys()
    assert all(r['lr'] == pytest.approx(1e-3 / 16, rel=1e-12) for r in logged)    # the effective lr is logged
    assert 'lr: base 0.001, auto_lr rule \'sqrt\' (base batch 256), 1 process(es) × batch 1 = effective batch 1, ' \
           'effective lr 6.25e-05' in (work / 'train.log').read_text()
    assert state['scheduler']['effective_lr'] == pytest.approx(1e-3 / 16)
    assert list((work / 'tb').iterdir())


def test_exact_resume(full_run, tmp_path):
    """5 steps, stop, resume, 5 steps == 10 straight steps: the same losses and bit-identical weights, with
    the posterior sample drawn from each step's seeded generator and the auto_lr-scaled lr."""
    over, work, result = full_run
    first = train(tiny_cfg(**{**over, 'train.max_steps': 5}), tmp_path)
    assert _steps(tmp_path) == [4, 5]
    second = train(tiny_cfg(**over), tmp_path, resume='auto')
    assert first['losses'] + second['losses'] == result['losses']
    for name in ('model.safetensors', 'ema.safetensors', 'optimizer.safetensors'):
        a = load_file(str(work / 'checkpoints' / 'step_00000010' / name))
        b = load_file(str(tmp_path / 'checkpoints' / 'step_00000010' / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_corrupt_checkpoint_one_line_and_auto_fallback(full_run, cache, tmp_path, capsys):
    over, work, _ = full_run
    shutil.copytree(work / 'checkpoints', tmp_path / 'checkpoints')
    broken = tmp_path / 'checkpoints' / 'step_00000010' / 'model.safetensors'
    broken.write_bytes(broken.read_bytes()[:1000])                  # truncated
    argv = [TINY, '--work-dir', str(tmp_path), '--cfg-options', *overrides_argv(
        {**over, 'data.video_list': [], 'data.cached_latents': cache, 'train.max_steps': 11})]
    assert train_vae.main(argv + ['--resume', str(broken.parent)]) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and str(broken) in err and 'corrupt or truncated' in err
    assert train_vae.main(argv + ['--resume', 'auto']) == 0           # falls back to step 8 and goes on
    log = (tmp_path / 'train.log').read_text()
    assert 'skipping a broken checkpoint' in log and 'resumed from' in log and 'step_00000008' in log
    assert (tmp_path / 'checkpoints' / 'step_00000010.broken').is_dir()      # set aside, not overwritten
    assert _steps(tmp_path) == [10, 11]                                    # the redone step 10 is a new one
    assert train_vae.main(argv + ['train.max_steps=5', '--resume', 'auto']) == 0       # already past step 5
    assert 'nothing to train: the run is at step 11' in (tmp_path / 'train.log').read_text()
    assert _steps(tmp_path) == [10, 11]
    ckpt.read_manifest(tmp_path / 'checkpoints' / 'step_00000010')


def nan_batches_at(monkeypatch, iterations):
    """Make the encoded batches of these 0-based iterations NaN (a corrupt batch)."""
    encode, calls = encode_batch, iter(range(10 ** 6))

    def corrupt(batch, stages, device):
        moments = encode(batch, stages, device)
        return tuple(m * float('nan') for m in moments) if next(calls) in iterations else moments
    monkeypatch.setattr(train_step_module, 'encode_batch', corrupt)


def test_nonfinite_policy():
    policy = nonfinite_policy
    assert policy(True, True, False, 3, 10) == ('step', 0)              # a good step resets the count
    assert policy(False, True, False, 3, 10) == ('skip', 4)              # NaN loss on some rank
    assert policy(True, False, False, 0, 10) == ('skip', 1)              # NaN / inf gradient norm
    assert policy(True, False, True, 2, 10) == ('overflow', 2)           # fp16 scaler skip: not a fault
    assert policy(False, False, True, 2, 10) == ('skip', 3)
    assert policy(False, True, False, 9, 10) == ('stop', 10)


def test_nan_batch_is_skipped_and_repeated_nans_stop(cache, tmp_path, monkeypatch):
    over = {'data.cached_latents': cache, 'train.max_steps': 3}
    nan_batches_at(monkeypatch, {1})
    result = train(tiny_cfg(**over), tmp_path / 'a')
    losses = [l for _, l in result['losses']]
    assert result['step'] == 3 and result['iteration'] == 4                  # 4 batches for 3 optimizer steps
    assert losses[1] != losses[1] and all(l == l for i, l in enumerate(losses) if i != 1)
    assert 'iteration 2: non-finite loss' in (tmp_path / 'a' / 'train.log').read_text()
    model = load_file(str(tmp_path / 'a' / 'checkpoints' / 'step_00000003' / 'model.safetensors'))
    assert all(torch.isfinite(v).all() for v in model.values())
    over.update({'train.max_nonfinite': 2})
    nan_batches_at(monkeypatch, {0, 1, 2})
    with pytest.raises(TrainingError, match='2 non-finite steps in a row'):
        train(tiny_cfg(**over), tmp_path / 'b')


def test_cached_latents_give_the_on_the_fly_loss(carphone, tmp_path):
    """The same clip and draws give the same loss from cached latents as from the encoders (fp32)."""
    (tmp_path / 'broken.mp4').write_text('not a video')
    (tmp_path / 'list.txt').write_text(f'{carphone}\nbroken.mp4\n')
    over = {'data.video_list': [str(tmp_path / 'list.txt')], 'data.random_flip': False,
            'vae.sample_posterior': True, 'data.max_bad_fraction': 0.5}
    assert cache_main([TINY, '--out', str(tmp_path / 'cache'), '--cfg-options', *overrides_argv(over)]) == 0
    index = json.loads((tmp_path / 'cache' / 'index_r00.json').read_text())
    assert [p for p, _ in index['bad']] == [str(tmp_path / 'broken.mp4')]           # skipped, listed
    cfg = tiny_cfg(**over)
    videos = read_cache_index(tmp_path / 'cache', cfg)
    [entry] = videos[carphone]
    cached = collate([CachedClips(videos, cfg.data)[(0, 0)]])
    stages = {'compressor': build_compressor(cfg), 'vae': build_vae(cfg), 'dtype': torch.float32}
    video = load_clip(carphone, cfg.data, entry['start'], False)
    fly = encode_batch({'video': video[None]}, stages, 'cpu')
    from_cache = encode_batch(cached, stages, 'cpu')
    model = init_random_weights_(VideoDiT.from_config(cfg.model), seed=1)      # non-zero output layer: a real loss
    diffusion = create_diffusion()
    for seed in range(3):
        a = compute_losses(model, diffusion, draw_step(fly, cfg, seed))
        b = compute_losses(model, diffusion, draw_step(from_cache, cfg, seed))
        torch.testing.assert_close(a['loss'], b['loss'], rtol=1e-5, atol=1e-6)
        assert a['vb'].abs().sum() > 0


def test_overfit_one_clip(cache, tmp_path):
    """150 steps on one cached clip cut the loss on fixed draws (timesteps, noise) by at least 30 %."""
    index = json.loads(next(Path(cache).glob('index_*.json')).read_text())
    index['clips'] = [dict(index['clips'][0], shard=str(Path(cache) / index['clips'][0]['shard']))]
    (tmp_path / 'one').mkdir()
    (tmp_path / 'one' / 'index_r00.json').write_text(json.dumps(index))   # a cache of the first clip only
    over = {'data.cached_latents': str(tmp_path / 'one'), 'train.max_steps': 150,
            'train.save_model_steps': 1000, 'train.joint_training': 0.0, 'train.log_every': 50,
            'optimizer.lr': 2e-4, 'train.grad_clip': 1.0}           # CAME; tiny's auto_lr keeps 2e-4 at batch 1
    cfg = tiny_cfg(**over)
    result = train(cfg, tmp_path / 'run')
    assert result['step'] == 150
    batch = collate([CachedClips(read_cache_index(cfg.data.cached_latents, cfg), cfg.data)[(0, 0)]])
    moments = encode_batch(batch, {}, 'cpu')
    diffusion = create_diffusion()

    def fixed_loss(model):
        with torch.no_grad():
            return sum(compute_losses(model, diffusion, draw_step(moments, cfg, 10_000 + s))
                       ['loss'].item() for s in range(32)) / 32
    before = fixed_loss(VideoDiT.from_config(cfg.model))                      # the training init (zero output layer)
    trained = load_dit_checkpoint(VideoDiT.from_config(cfg.model), Path(result['checkpoint']) / 'model.safetensors')
    after = fixed_loss(trained)
    print(f"overfit: fixed-draw loss {before:.4f} -> {after:.4f} ({100 * (1 - after / before):.1f} % lower)")
    assert after < 0.7 * before


def test_preview_mp4(carphone, shared_videos, tmp_path):
    other = str(shared_videos / 'demo.mp4')
    (tmp_path / 'train.txt').write_text(f'{carphone}\n{other}\n')
    over = {'data.video_list': [str(tmp_path / 'train.txt')], 'train.max_steps': 2, 'train.eval_every': 2,
            'train.save_model_steps': 1000}
    train(tiny_cfg(**over), tmp_path / 'run')
    video, info = read_video(tmp_path / 'run' / 'previews' / 'step_00000002.mp4')
    assert video.shape[1] == 4 and info.width == 2 * info.height == 128     # held-out clip | reconstruction
    assert f'preview clip: {other}' in (tmp_path / 'run' / 'train.log').read_text()   # the last one, held out


def test_load_from_released_format(carphone, tmp_path):
    """train.load_from takes a PixArt-style .pth ({'state_dict': ...}) and starts from those weights."""
    cfg = tiny_cfg(**{'data.video_list': [carphone]})
    released = init_random_weights_(VideoDiT.from_config(cfg.model), seed=5)
    torch.save({'state_dict': released.state_dict()}, tmp_path / 'released.pth')
    over = {'data.video_list': [carphone], 'train.max_steps': 1, 'train.load_from': str(tmp_path / 'released.pth'),
            'optimizer.type': 'AdamW', 'optimizer.lr': 1e-9}
    result = train(tiny_cfg(**over), tmp_path / 'run')
    tuned = load_file(str(Path(result['checkpoint']) / 'model.safetensors'))
    for k, v in released.state_dict().items():
        torch.testing.assert_close(tuned[k], v, atol=1e-6, rtol=0)


ABLATIONS = sorted((REPO / 'configs' / 'ablations').glob('*.py'))


def ablation_keys_at_tiny_size(path):
    """The keys the ablation changes against the released config, over configs/tiny.py (docs/training.md "Ablations"):
    an attention pattern cut to the tiny depth (the patterns repeat every 2 or 4 layers), nothing rescaled."""
    full, released, tiny = load_config(str(path)), load_config(str(REPO / 'configs' / 's1024.effn-f32.py')), \
        load_config(TINY)
    keys = {}
    if full.model.attn_strides != released.model.attn_strides:
        strides = full.model.attn_strides
        keys['model.attn_strides'] = None if strides is None else [None if s is None else list(s)
                                                                   for s in strides[:tiny.model.depth]]
    for key in ('model.lats_per_vid', 'data.num_frames_per_video'):
        section, name = key.split('.')
        if full[section][name] != released[section][name]:
            keys[key] = full[section][name]
    return keys


@pytest.mark.parametrize('path', ABLATIONS, ids=[p.stem for p in ABLATIONS])
def test_ablation_configs_train_one_step_at_tiny_size(path, carphone, tmp_path):
    keys = ablation_keys_at_tiny_size(path)
    readme = (REPO / 'docs' / 'training.md').read_text()
    assert keys and path.name in readme
    for key, value in keys.items():                                # the docs' tiny command lines say the same
        assert f"{key}={str(value).replace(' ', '')}" in readme, key
    cfg = tiny_cfg(**{**keys, 'data.video_list': [carphone], 'train.max_steps': 1})
    result = train(cfg, tmp_path)
    assert result['step'] == 1 and all(l == l for _, l in result['losses'])
    if path.stem == 'attn_2plus1d':                                # whole-axis windows at any size
        model = VideoDiT.from_config(cfg.model)
        assert model.windows[:2] == [(1, 4, 4), (cfg.model.lats_per_vid, 1, 1)]


def test_dry_run_and_bad_input(carphone, tmp_path, capsys):
    assert train_vae.main([TINY, '--dry-run', '--cfg-options', 'train.max_steps=7',
                          f'data.video_list=[{carphone},{carphone}]']) == 0
    out = capsys.readouterr().out
    assert 'max_steps=7' in out and f"video_list=[\n        '{carphone}',\n        '{carphone}',\n" in out
    assert train_vae.main([TINY, '--work-dir', str(tmp_path), '--cfg-options', 'data.video_list=[]']) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'data.video_list is empty' in err
    assert tmp_path.is_dir() and not any(tmp_path.iterdir())          # the empty dir given is kept, and left empty
    fresh = tmp_path / 'fresh'
    assert train_vae.main([TINY, '--work-dir', str(fresh), '--cfg-options', 'data.video_list=[]']) == 2
    assert not fresh.exists()                                   # a run that cannot start leaves no work dir
    capsys.readouterr()
    assert train_vae.main([TINY, '--work-dir', str(tmp_path), '--resume', str(tmp_path / 'nope'),
                          '--cfg-options', *overrides_argv({'data.video_list': [carphone]})]) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'state.json' in err
    torch.save({'state_dict': {'x_embedder.proj.weight': torch.zeros(1)}}, tmp_path / 'other.pth')
    assert train_vae.main([TINY, '--work-dir', str(tmp_path / 'run'), '--cfg-options', *overrides_argv(
        {'data.video_list': [carphone], 'train.load_from': str(tmp_path / 'other.pth')})]) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'train.load_from' in err and 'other.pth' in err and not (tmp_path / 'run').exists()
    with pytest.raises(SystemExit) as e:                                  # an option without '='
        train_vae.main([TINY, '--work-dir', str(tmp_path), '--cfg-options', 'train.max_steps'])
    assert e.value.code == 2 and 'expected KEY=VALUE' in capsys.readouterr().err


def test_missing_weights_are_named_at_once(carphone, tmp_path, capsys):
    """The released config without its files: every missing file in one line (exit 2), before any work."""
    released = str(REPO / 'configs' / 's1024.effn-f32.py')
    opts = {'data.video_list': [carphone], 'train.load_from': str(tmp_path / 'w' / 's1024.effn-f32.pth'),
            'weights.compressor': str(tmp_path / 'w' / 'effnet.safetensors'),
            'weights.vae': str(tmp_path / 'w' / 'svd_vae'), 'train.mixed_precision': 'no'}
    argv = ['--work-dir', str(tmp_path / 'run'), '--cfg-options', *overrides_argv(opts)]
    assert train_vae.main([released, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'bash pretrained/download.sh --only dit,compressor,vae' in err
    assert 'train.load_from=None' in err and all(opts[k] in err for k in ('train.load_from', 'weights.compressor'))
    assert str(tmp_path / 'w' / 'svd_vae' / 'config.json') in err
    assert not (tmp_path / 'run').exists()                                  # nothing left behind
    assert cache_main([released, '--out', str(tmp_path / 'cache'), '--cfg-options', *overrides_argv(opts)]) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and opts['weights.compressor'] in err and 'svd_vae' in err
    assert not (tmp_path / 'cache').exists()


def test_tiny_demo_learns(tmp_path):
    """The README's demo, configs/tiny.py's own training settings on example/: 60 steps, a checkpoint every 20,
    a log line (the mean of 10 steps) every 10; the logged loss falls (measured: 0.79 -> 0.11; train.seed 1 and 2:
    0.88 -> 0.085, 0.76 -> 0.096; on carphone 0.79 -> 0.096)."""
    work = tmp_path / 'tiny'
    demo = [TINY, '--work-dir', str(work), '--cfg-options', f"data.video_list=[{REPO / 'example'}]"]
    assert train_vae.main(demo) == 0
    logged = [json.loads(l) for l in (work / 'log.jsonl').read_text().splitlines()]
    assert [r['step'] for r in logged] == [10, 20, 30, 40, 50, 60]
    assert logged[0]['lr'] == pytest.approx(2.5e-4) and logged[-1]['lr'] == pytest.approx(5e-4)   # 20-step warm-up
    print('tiny demo: logged loss', ' '.join(f"{r['loss']:.3f}" for r in logged))
    assert logged[-1]['loss'] < 0.5 * logged[0]['loss']
    assert _steps(work) == [20, 40, 60]
    text = (work / 'train.log').read_text()
    assert 'steps 51-60: loss' in text
    assert 'random_init: the frozen compressor and vae have seeded random weights' in text   # the warning promised


def test_effective_lr_follows_the_released_rule():
    cfg = load_config(str(REPO / 'configs' / 's1024.effn-f32.py'))
    assert effective_lr(cfg, 1) == (pytest.approx(2.5e-6), 4)            # 2e-5 × √(4/256)
    assert effective_lr(cfg, 2) == (pytest.approx(2e-5 * 0.125 * 2 ** 0.5), 8)
    assert effective_lr(cfg, 8)[0] == pytest.approx(7.0711e-6, rel=1e-4)
    cfg.optimizer.auto_lr.rule = 'linear'
    assert effective_lr(cfg, 2)[0] == pytest.approx(2e-5 * 8 / 256)
    cfg.optimizer.auto_lr = None
    assert effective_lr(cfg, 8) == (2e-5, 32)
    assert lr_at(0, 1.0, 4) == 0.25 and lr_at(9, 1.0, 4) == 1.0
    assert subprocess.run(['bash', '-n', str(REPO / 'train_vae.sh')]).returncode == 0


# ---- real processes: kill -9 during a save, SIGTERM, two ranks ------------------------------------------

def _env(**extra):
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1', **extra}


# launchers that run train_vae.py's work with a test's patch or hook, in a real (killable, launchable) process
SLOW_SAVE = """
import sys, time
import train_vae
from tools.training import checkpoint

write_tensors = checkpoint.write_tensors


def slow_write_tensors(*args, **kwargs):      # each checkpoint file pauses 1 s once written: a window for a kill
    path = write_tensors(*args, **kwargs)
    time.sleep(1)
    return path


checkpoint.write_tensors = slow_write_tensors
sys.exit(train_vae.main(sys.argv[1:]))
"""
RANK_DUMP = """
import sys
import train_vae
from tools.config import load_config
from tools.training.checkpoint import write_tensors
from tools.training.loop import train

args = train_vae.parse_args(sys.argv[1:])
cfg = load_config(args.config, args.cfg_options)


def dump_final_weights(info):                 # every rank writes its weights after the last step
    if info['action'] == 'step' and info['step'] == cfg.train.max_steps:
        write_tensors(args.work_dir, f"debug_rank{info['rank']}.safetensors", info['model'].state_dict())


train(cfg, args.work_dir, args.resume, callback=dump_final_weights)
"""


def _launcher(folder, name, text):
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _train_cmd(work, cache, **over):
    return [sys.executable, str(REPO / 'train_vae.py'), TINY, '--work-dir', str(work), '--cfg-options',
            *overrides_argv({'data.cached_latents': cache, **over})]


def _wait_for(predicate, proc, timeout=180):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} first:\n{proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError('timed out')


def test_kill_during_save_then_resume_and_sigterm(cache, tmp_path):
    work = tmp_path / 'run'
    over = {'train.max_steps': 6, 'train.save_model_steps': 2}
    # 1. kill -9 while the second checkpoint is being written (each file write pauses 1 s)
    slow = [sys.executable, str(_launcher(tmp_path, 'slow_save.py', SLOW_SAVE)),
            *_train_cmd(work, cache, **over)[2:]]
    proc = subprocess.Popen(slow, env=_env(PYTHONPATH=str(REPO)), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tmp4 = work / 'checkpoints' / 'step_00000004.tmp'
    _wait_for(lambda: (tmp4 / 'model.safetensors').is_file(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert _steps(work) == [2] and tmp4.is_dir()
    # 2. --resume auto continues from step 2; SIGTERM to the whole process group (as a cluster scheduler
    #    sends it, DataLoader workers included) saves a checkpoint and exits cleanly
    over = {'train.max_steps': 10_000, 'train.save_model_steps': 10_000, 'data.num_workers': 1}
    proc = subprocess.Popen(_train_cmd(work, cache, **over) + ['--resume', 'auto'], env=_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log = work / 'log.jsonl'
    _wait_for(lambda: log.is_file() and len(log.read_text().splitlines()) >= 4 + 3, proc)  # 4 before the kill
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert 'resumed from' in out and 'step_00000002' in out and 'SIGTERM: saving a checkpoint' in out
    steps = _steps(work)
    assert steps[-1] >= 5 and not tmp4.exists()
    state = ckpt.read_manifest(work / 'checkpoints' / f'step_{steps[-1]:08d}')
    assert state['step'] == steps[-1]
    # 3. and goes on from there
    done = subprocess.run(_train_cmd(work, cache, **{'train.max_steps': steps[-1] + 2}) + ['--resume', 'auto'],
                          env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _steps(work)[-1] == steps[-1] + 2


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_ranks_keep_identical_weights(cache, tmp_path):
    """DDP over gloo: accelerate 1.x starts several CPU processes with --multi_gpu when no GPU is visible
    (its --cpu flag alone runs one process unless MPI is set up)."""
    accelerate = Path(sys.executable).parent / 'accelerate'
    cmd = [str(accelerate), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
           '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', str(_free_port()),
           str(_launcher(tmp_path / 'launch', 'rank_dump.py', RANK_DUMP)),
           *_train_cmd(tmp_path / 'run', cache, **{'train.max_steps': 4, 'optimizer.lr': 1e-3})[2:]]
    run = subprocess.run(cmd, env=_env(CUDA_VISIBLE_DEVICES='', ACCELERATE_USE_CPU='1', PYTHONPATH=str(REPO)),
                         cwd=REPO,
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # tiny's auto_lr: sqrt rule over a base batch of 1, so 2 processes train at 1e-3 × √2
    assert '2 process(es) × batch 1 = effective batch 2, effective lr 0.001414' in run.stdout
    logged = [json.loads(l) for l in (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()]
    assert len(logged) == 4 and all(r['lr'] == pytest.approx(1e-3 * 2 ** 0.5) for r in logged)
    r0, r1 = (load_file(str(tmp_path / 'run' / f'debug_rank{r}.safetensors')) for r in (0, 1))
    saved = load_file(str(tmp_path / 'run' / 'checkpoints' / 'step_00000004' / 'model.safetensors'))
    assert all(torch.equal(r0[k], r1[k]) and torch.equal(r0[k], saved[k]) for k in saved)
    assert (tmp_path / 'run' / 'checkpoints' / 'step_00000004' / 'rng_1.safetensors').is_file()
    assert saved['final_layer.linear.weight'].abs().sum() > 0
