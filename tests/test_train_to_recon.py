"""Trained weights and caches used by the other tools: a tiny DiT trained here reconstructs through
models/pipeline.CascadeV, and tools/cache_latents.py splits its work over launched CPU (gloo) ranks."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.dit import VideoDiT
from models.pipeline import CascadeV
from models.weights import MissingWeightsError, load_dit_checkpoint, random_stages
from tools.config import load_config
from tools.training.cache import cache_latents
from tools.training.data import load_clip, read_cache_index
from tools.training.loop import train

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / 'configs' / 'tiny.py')
STAGES = ('compressor', 'dit', 'vae')


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def test_train_tiny_then_reconstruct_with_it(carphone, tmp_path, capsys):
    over = {'data.video_list': [carphone], 'train.max_steps': 3, 'train.save_epoch_end': False,
            'lr_schedule.warmup_steps': 0, 'optimizer.lr': 1e-2}
    result = train(load_config(TINY, over), tmp_path / 'run')
    trained = Path(result['checkpoint']) / 'model.safetensors'
    cfg = load_config(TINY, {'weights.dit': str(trained)})           # as recon.py --dit-checkpoint sets it
    assert random_stages(cfg) == {'compressor', 'previewer', 'vae'}   # the named DiT is not replaced
    video = load_clip(carphone, cfg.data, 0, False)[None]             # (1, 3, 4, 64, 64)
    pipe = CascadeV.from_config(cfg, stages=STAGES)
    untrained = CascadeV.from_config(load_config(TINY), stages=STAGES)
    direct = CascadeV(cfg, compressor=pipe.compressor, vae=pipe.vae,
                      dit=load_dit_checkpoint(VideoDiT.from_config(cfg.model), trained).eval())
    latent = pipe.encode(video)
    out, ref, base = (p.decode(latent, steps=2, seed=7) for p in (pipe, direct, untrained))
    assert torch.equal(out, ref)                                      # exactly the trained weights
    assert (out - base).abs().mean() > 1e-3                           # not the untrained model
    saved = load_file(str(trained))
    assert all(torch.equal(v, saved[k]) for k, v in pipe.dit.state_dict().items())
    missing = load_config(TINY, {'weights.dit': str(tmp_path / 'typo.safetensors')})
    with pytest.raises(MissingWeightsError, match='typo.safetensors'):  # never silently random
        CascadeV.from_config(missing, stages=STAGES)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_cache_latents_two_gloo_ranks_encode_their_own_share(shared_videos, tmp_path):
    videos = [str(shared_videos / f'{n}.mp4') for n in ('carphone_pristine', 'demo', 'bigbuckbunny')]
    opts = [f'data.video_list=[{",".join(videos)}]', 'data.random_flip=False']
    accelerate = Path(sys.executable).parent / 'accelerate'
    cmd = [str(accelerate), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
           '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', str(_free_port()),
           str(REPO / 'tools' / 'cache_latents.py'), TINY, '--out', str(tmp_path / 'cache'), '--cfg-options', *opts]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'CUDA_VISIBLE_DEVICES': '', 'ACCELERATE_USE_CPU': '1'}
    run = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert 'rank 0 of 2' in run.stderr + run.stdout and 'rank 1 of 2' in run.stderr + run.stdout
    index = {r: json.loads((tmp_path / 'cache' / f'index_r{r:02d}.json').read_text()) for r in (0, 1)}
    assert [c['path'] for c in index[0]['clips']] == videos[0::2]     # every other video, no overlap
    assert [c['path'] for c in index[1]['clips']] == videos[1::2]
    cfg = load_config(TINY, {'data.video_list': videos, 'data.random_flip': False})
    assert sorted(read_cache_index(tmp_path / 'cache', cfg)) == sorted(videos)   # training reads both shares
    assert cache_latents(cfg, tmp_path / 'alone', rank=1, world_size=2) == 1     # rank 1's share, in-process
    [mine] = index[1]['clips']
    a = load_file(str(tmp_path / 'cache' / mine['shard']))
    b = load_file(str(tmp_path / 'alone' / 'latents_r01_00000.safetensors'))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
