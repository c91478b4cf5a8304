"""tools/recon/memory.py: the memory model's arithmetic and the planner (pure functions, no measuring)."""
import pytest

from tools.recon.memory import (CALIBRATION, CUDA_CONTEXT, HEADROOM, PlanError, Settings, Workload, chunk_of,

    dit_tiles, parse_size, plan_memory, predict, stage_bytes)

budget_for = lambda peak: int(peak / (1 - HEADROOM))   # the budget a predicted peak fits exactly
TINY_DIT = (8, 4, 2, 64, 4)          # configs/tiny.py: input_size, lats_per_vid, patch, hidden, heads


def workload(**kw):
    base = dict(source=(720, 1280), model=(256, 448), output=(720, 1280), frames=32, dit=TINY_DIT)
    return Workload(**{**base, **kw})


@pytest.mark.parametrize('text, expected', [('24GB', 24 * 10 ** 9), ('2.5GB', 2_500_000_000), ('800MB', 8 * 10 ** 8),
                                            ('16GiB', 16 * 2 ** 30), ('1.5 gib', int(1.5 * 2 ** 30)),
                                            ('3000000000', 3 * 10 ** 9), ('10 GB', 10 ** 10)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize('text', ['', 'GB', '-1GB', '0GB', '2.5XB', 'lots', '0.5', '2.5', '4096', '999kB'])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match='e.g. 24GB'):
        parse_size(text)


@pytest.mark.parametrize('model', [(64, 64), (256, 448), (1024, 1024), (720, 1280), (96, 2048)])
def test_dit_tiles_match_the_dit(model):
    from models.tiling import tile_starts
    w = workload(model=model, dit=(128, 8, 2, 1152, 16), frames=5)
    tiles, th, tw, L = dit_tiles(w)
    H, W = model[0] // 8, model[1] // 8
    assert tiles == len(tile_starts(H, 128)) * len(tile_starts(W, 128))
    assert (th, tw, L) == (min(128, H), min(128, W), 5)


def test_counted_buffers():
    """Frame buffers are shape arithmetic: a 16-frame chunk of 720x1280 decodes to 16·921600·3 uint8 bytes; the
    source is kept shaped for this chunk and the next (the original panel in uint8, fp32 at the model's 256x448
    for the metrics); an output chunk is three uint8 panels."""
    w, s = workload(), Settings(16, None, 4, 0)
    b = stage_bytes(w, s, dict(CALIBRATION, host=1.0))
    assert b['decode'] == (16 * 921600 * 3, False)
    assert b['source'] == (2 * 16 * (921600 * 3 + 256 * 448 * 12), False)
    assert stage_bytes(workload(metrics=False), s)['source'] == (2 * 16 * 921600 * 3, False)
    assert stage_bytes(workload(original=False, metrics=False), s)['source'] == (0, False)
    assert b['outputs'] == (16 * 921600 * 3 * 3, False)
    assert stage_bytes(workload(original=False), s)['outputs'] == (16 * 921600 * 3 * 2, False)
    assert b['model_out'] == (16 * 256 * 448 * 12 * 2, True)
    assert b['latent'] == (32 * 32 * 56 * 16, True)


def test_render_has_a_model_moment_and_a_hand_over_moment():
    """While a stage runs, one chunk of panels is held (the write-behind's); while handing over, two."""
    w = workload()
    for s in (Settings(16, None, 4, 0), Settings(4, None, 4, 32, 0), Settings(16, None, 1, 0)):
        p = predict(w, s)
        g = p.stages
        common = g['decode'] + g['source'] + g['model_out'] + g['encoder'] + g['latent']
        work = max(g['previewer'], g['vae'], g['metrics'])
        assert p.phases['render'] == common + max(work + g['outputs'], 2 * g['outputs'] + g['cmp_frame'])
    one = predict(workload(frames=16), Settings(16, None, 4, 0))            # one chunk: nothing ahead or behind
    g = one.stages
    assert g['source'] == 16 * (921600 * 3 + 256 * 448 * 12)
    assert one.phases['render'] == g['source'] + g['model_out'] + g['encoder'] + g['latent'] + max(
        max(g['previewer'], g['vae'], g['metrics']), g['outputs'] + g['cmp_frame'])


def test_metrics_go_a_frame_at_a_time():
    w = workload()
    assert stage_bytes(w, Settings(4, None, 4, 0))['metrics'] == stage_bytes(w, Settings(16, None, 4, 0))['metrics']
    assert stage_bytes(w, Settings(4, None, 4, 0))['metrics'][0] == CALIBRATION['metrics'] * 256 * 448 * 3


def test_chunk_holds_at_least_one_vae_chunk_when_refining():
    assert chunk_of(workload(), Settings(10, None, 4, 0)) == 10
    assert chunk_of(workload(), Settings(2, None, 4, 0)) == 4
    assert chunk_of(workload(refine=False), Settings(2, None, 4, 0)) == 2
    assert chunk_of(workload(frames=6), Settings(16, None, 4, 0)) == 6


@pytest.mark.parametrize('chunk, overlap, expected', [(4, 0, [2, 1]), (4, 2, [3]), (4, 3, []), (8, 2, [4, 3]),
                                                      (1, 0, [])])
def test_shorter_vae_chunks_stay_longer_than_the_overlap(chunk, overlap, expected):
    from tools.recon.memory import shorter_vae_chunks
    assert shorter_vae_chunks(workload(vae_chunk=chunk, vae_overlap=overlap)) == expected


def test_prediction_grows_with_chunk_tiles_and_frame_size():
    w = workload()
    p = {c: predict(w, Settings(c, None, 4, 0)).peak for c in (4, 8, 16)}
    assert p[4] < p[8] < p[16]
    dit = {n: stage_bytes(w, Settings(16, n, 4, 0))['dit'][0] for n in (1, 4, None)}
    assert dit[1] < dit[4] < dit[None]
    assert predict(workload(source=(2160, 3840), output=(2160, 3840)), Settings()).peak > predict(w, Settings()).peak


def test_prediction_is_flat_in_clip_length():
    """Clip length enters through the whole-clip latent only, once the clip has more than one chunk (a chunk
    read ahead, one written behind) and x264's look-ahead (10 frames) is full."""
    peak = {n: predict(workload(frames=n), Settings(16, None, 4, 0)).peak for n in (8, 16, 32, 128)}
    latent = lambda n: n * 32 * 56 * 16
    assert peak[128] - peak[32] == latent(128) - latent(32)
    assert 0 < (peak[128] - peak[32]) / peak[32] < 0.01
    assert peak[16] < peak[32]                                                # one chunk: nothing ahead or behind
    look_ahead = 720 * 1280 * CALIBRATION['encoder_frame'] * (10 - 8) * 5   # preview, rec and cmp.mp4 (3 panels)
    assert peak[16] - peak[8] > look_ahead


def test_cuda_counts_device_buffers_and_the_context():
    cpu = predict(workload(), Settings(), base=10 ** 9)
    cuda = predict(workload(device='cuda'), Settings(), base=10 ** 9)
    for host in ('decode', 'source', 'outputs', 'cmp_frame', 'encoder'):
        assert cuda.stages[host] == 0 and cpu.stages[host] > 0
    assert cuda.stages['vae'] == cpu.stages['vae']
    assert cuda.stages['metrics'] == cpu.stages['metrics'] + 16 * 256 * 448 * 12    # the chunk's source, copied
    assert cuda.peak == 10 ** 9 + CUDA_CONTEXT + max(cuda.phases.values())


def test_bf16_halves_the_stage_activations():
    fp32, bf16 = (stage_bytes(workload(dtype=d), Settings()) for d in ('fp32', 'bf16'))
    assert bf16['compressor'][0] * 2 == fp32['compressor'][0]


def test_plan_without_budget_keeps_the_defaults():
    plan = plan_memory(workload(), budget=None, base=10 ** 9)
    assert plan.settings == Settings(16, None, 4, 0)
    assert plan.line().startswith('predicted peak ') and 'chunk 16 frames, DiT tiles 45 at a time, VAE chunk 4, ' \
                                                         'VAE tiles off' in plan.line()


def test_plan_fits_the_budget_with_the_largest_chunk():
    w, base = workload(), 10 ** 9
    full = predict(w, Settings(16, None, 4, 0), base).peak
    half = predict(w, Settings(8, None, 4, 0), base).peak
    plan = plan_memory(w, budget=budget_for((full + half) // 2), base=base)
    assert plan.prediction.peak <= (full + half) // 2
    assert chunk_of(w, plan.settings) == 8 and plan.settings.vae_chunk == 4 and plan.settings.vae_tile == 0
    assert plan_memory(w, budget=budget_for(full) + 1, base=base).settings == Settings(16, None, 4, 0)
    assert plan_memory(w, budget=full, base=base).settings != Settings(16, None, 4, 0)      # 5 % headroom


def test_plan_order_frames_first_then_encoder_then_vae():
    """Frame-neutral settings are exhausted first: chunk and DiT tile batch, then the encoder look-ahead
    (same frames, 10 -> 0), then SVD tiles, then shorter SVD chunks."""
    w, base = workload(model=(1024, 1024), source=(1024, 1024), output=(1024, 1024)), 10 ** 9
    smallest = lambda **kw: predict(w, Settings(**{**dict(chunk_frames=1, dit_tile_batch=1, vae_chunk=4), **kw}),
                                     base).peak
    plan = plan_memory(w, budget=budget_for(smallest() - 1), base=base)
    assert plan.settings.lookahead == 0 and plan.settings.vae_tile == 0 and plan.settings.vae_chunk == 4
    plan = plan_memory(w, budget=budget_for(smallest(lookahead=0) - 1), base=base)
    assert plan.settings.lookahead == 0 and plan.settings.vae_tile == 64 and plan.settings.vae_chunk == 4
    plan = plan_memory(w, budget=budget_for(smallest(lookahead=0, vae_tile=32) - 1), base=base)
    assert plan.settings.vae_tile == 32 and plan.settings.vae_chunk in (2, 1)
    assert plan.prediction.peak < smallest(lookahead=0, vae_tile=32)
    assert 'encoder look-ahead 0 frames' in plan.line() and 'VAE tiles 32 px' in plan.line()


def test_plan_error_is_one_line_with_the_fixes_that_fit():
    """The budget to ask for covers the headroom and 10 % of the memory before the work (it varies between runs),
    rounded up; a lower --size or --upscale is offered only when it would fit the budget given."""
    def error(budget, **kw):
        with pytest.raises(PlanError) as e:
            plan_memory(workload(**kw), budget=parse_size(budget), base=10 ** 9)
        assert '\n' not in str(e.value)
        return str(e.value)
    msg = error('1.1GB')                                                  # 720x1280 source and outputs, 256x448 model
    assert msg.startswith('--max-memory 1.10 GB: 1.04 GB after the 5% headroom, but even the smallest plan (chunk ')
    need = float(msg.split('needs ')[1].split(' GB')[0])                  # compared with the budget net of headroom
    ask = float(msg.split('raise --max-memory to ')[1].split(' GB')[0])
    assert need > 1.04 and ask >= need / (1 - HEADROOM) + 0.1 - 0.01 and msg.endswith(f'to {ask:.2f} GB')
    plan_memory(workload(), budget=parse_size(f'{ask}GB'), base=10 ** 9 + 6 * 10 ** 7)   # fits 60 MB more before
    assert error('1.3GB').endswith("GB, or --upscale (outputs at the model's size)")
    assert error('1.15GB', output=(256, 448)).endswith('GB, or lower --size')
    assert error('1.15GB', output=(256, 448), original=False).endswith(', or encode the video again at a lower --size')
    assert error('2MiB').startswith('--max-memory 2.1 MB: ')


def test_the_plan_line_names_the_chunk_recon_runs():
    w, base = workload(), 10 ** 9
    for budget in ('1.5GB', '1.7GB', '2GB', '3GB', '30GB'):
        try:
            plan = plan_memory(w, budget=parse_size(budget), base=base)
        except PlanError:
            continue
        assert plan.settings.chunk_frames == chunk_of(w, plan.settings)
        assert f'chunk {plan.settings.chunk_frames} frames' in plan.line()
    # --chunk-frames below one SVD decode chunk (4) is kept, with or without a budget, and printed as run
    for budget in (None, parse_size('30GB')):
        plan = plan_memory(w, budget=budget, base=base, chunk_frames=2)
        assert plan.settings.chunk_frames == 2 and plan.line().split(': ')[1].startswith('chunk 2 frames,')
        assert plan.to_dict()['chunk_frames'] == 2
    one = plan_memory(workload(refine=False), budget=None, base=base, chunk_frames=1)
    assert 'chunk 1 frame,' in one.line() or one.line().endswith('chunk 1 frame')
    short = plan_memory(workload(frames=4), budget=None, base=base)      # a chunk is at most the clip
    assert 'chunk 4 frames' in short.line() and short.to_dict()['chunk_frames'] == 4


def test_default_budget_is_off_on_cpu_and_the_free_device_memory_on_cuda(monkeypatch):
    import torch

    from tools.recon.memory import bytes_in_use, default_budget
    assert default_budget('cpu') is None
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device=None: (30 * 2 ** 30, 80 * 2 ** 30))
    monkeypatch.setattr(torch.cuda, 'memory_reserved', lambda device=None: 2 * 2 ** 30)
    monkeypatch.setattr(torch.cuda, 'memory_allocated', lambda device=None: 2 ** 30)
    assert default_budget('cuda:0') == 32 * 2 ** 30 + CUDA_CONTEXT
    assert bytes_in_use('cuda') == 2 ** 30
    assert 10 ** 7 < bytes_in_use('cpu') < 10 ** 11            # this process's RSS


# ---- recon.py --max-memory ------------------------------------------------------------------------------

def recon_run(argv, monkeypatch):
    """recon.main in-process (the allocator setting left to pytest) -> (exit code, stdout, stderr)."""
    import contextlib
    import io

    import recon
    import tools.recon.batch
    monkeypatch.setattr(tools.recon.batch, 'release_freed_memory_to_os', lambda *a: False)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = recon.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def tiny_argv(repo_root, clip, out, *extra):
    return ['--config', repo_root / 'configs' / 'tiny.py', '--input', clip, '--output', out, '--num-frames', 4,
            '--size', 64, '--steps', 1, *extra]


def test_recon_too_small_budget_fails_each_video_and_the_batch_goes_on(repo_root, shared_videos, tmp_path, monkeypatch):
    clips = [shared_videos / 'carphone_pristine.mp4', shared_videos / 'bigbuckbunny.mp4']
    argv = tiny_argv(repo_root, clips[0], tmp_path / 'o', '--max-memory', '100MB')
    argv[argv.index('--input') + 1:argv.index('--input') + 2] = clips
    code, out, err = recon_run(argv, monkeypatch)
    assert code == 1
    for clip in clips:                                                    # both tried, one line each
        line = next(ln for ln in out.splitlines() if ln.startswith(f'failed: {clip}: '))
        assert '--max-memory 0.10 GB: 95.0 MB after the 5% headroom, but even the smallest plan (chunk ' in line
        assert 'raise --max-memory' in line
        assert not (tmp_path / 'o' / clip.stem).exists()                 # nothing half-written is left
    assert err.startswith('2/2 failed:')


def test_recon_resumes_under_a_budget_and_records_the_plan(repo_root, shared_videos, tmp_path, monkeypatch):
    """The rerun of the same command skips the video; done.json records the budget asked for (settings) and
    the plan it gave (memory_plan); a rerun without the budget redoes the video."""
    import json
    argv = tiny_argv(repo_root, shared_videos / 'carphone_pristine.mp4', tmp_path / 'o')
    code, out, err = recon_run(argv + ['--max-memory', '64GB'], monkeypatch)
    assert code == 0, err
    done = json.loads((tmp_path / 'o' / 'carphone_pristine' / 'done.json').read_text())
    assert done['settings']['max_memory'] == 64 * 10 ** 9
    plan = done['memory_plan']
    assert plan['budget'] == 64 * 10 ** 9 and 10 ** 8 < plan['predicted_peak'] < 64 * 10 ** 9
    assert (plan['chunk_frames'], plan['vae_chunk'], plan['vae_tile'], plan['lookahead']) == (4, 4, 0, 10)   # 4 frames
    code, out, _ = recon_run(argv + ['--max-memory', '64GB'], monkeypatch)
    assert code == 0 and 'complete in' in out and 'predicted peak' not in out
    code, out, _ = recon_run(argv, monkeypatch)
    assert code == 0 and 'holds a run with other settings (max_memory 64000000000 -> None); redoing it' in out


def test_recon_bad_budget_is_a_usage_error(repo_root, shared_videos, tmp_path, monkeypatch):
    code, _, err = recon_run(tiny_argv(repo_root, shared_videos / 'carphone_pristine.mp4', tmp_path / 'o',
                                       '--max-memory', '2.5XB'), monkeypatch)
    assert code == 2 and err.strip() == "error: --max-memory '2.5XB': use a size of at least 1 MB with its unit, " \
                                        "e.g. 24GB, 2.5GB, 800MB, 16GiB"


def test_recon_prints_the_plan_and_applies_it(repo_root, shared_videos, tmp_path, monkeypatch):
    """A generous budget keeps the defaults; the plan line names them (4 frames of 64x78 -> 2 DiT tiles)."""
    import tools.recon.per_video
    seen = {}
    reconstruct = tools.recon.per_video.reconstruct

    def spy(pipe, out_dir, **kw):
        seen.update({k: kw[k] for k in ('chunk_frames', 'vae_chunk', 'tile_batch', 'lookahead')})
        return reconstruct(pipe, out_dir, **kw)
    monkeypatch.setattr(tools.recon.per_video, 'reconstruct', spy)
    code, out, err = recon_run(tiny_argv(repo_root, shared_videos / 'carphone_pristine.mp4', tmp_path / 'o',
                                         '--max-memory', '64GB'), monkeypatch)
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if 'predicted peak' in ln)
    assert line.startswith('carphone_pristine: predicted peak ') and line.endswith('(budget 64.00 GB)')
    assert 'chunk 4 frames, DiT tiles 2 at a time, VAE chunk 4, VAE tiles off' in line
    assert seen == dict(chunk_frames=16, vae_chunk=4, tile_batch=None, lookahead=None)


def test_writer_look_ahead_reaches_x264(tmp_path):
    from tools.video.write import VideoWriter
    assert VideoWriter(tmp_path / 'a.mp4', 25, lookahead=10)._codec(720, 1280)[2]['rc-lookahead'] == '10'
    assert 'rc-lookahead' not in VideoWriter(tmp_path / 'a.mp4', 25)._codec(720, 1280)[2]


@pytest.mark.parametrize('threads', [1, 3])
def test_writer_threads_reach_x264(tmp_path, threads):
    """x264 writes its settings into the stream (an SEI): the thread count given is the one it used (frames
    of 256 rows: x264 caps threads by the frame's height, at 1 for 64 rows)."""
    import numpy as np

    from tools.video.write import VideoWriter
    with VideoWriter(tmp_path / 'a.mp4', 25, threads=threads, lookahead=4) as w:
        w.write(np.zeros((8, 256, 256, 3), np.uint8))
    data = (tmp_path / 'a.mp4').read_bytes()
    assert f' threads={threads} '.encode() in data and b' rc_lookahead=4 ' in data


def test_writer_threads_are_the_cores_up_to_8(monkeypatch):
    import os

    from tools.recon.memory import writer_threads
    for cores, expected in ((1, 1), (2, 2), (16, 8)):
        monkeypatch.setattr(os, 'sched_getaffinity', lambda pid, n=cores: set(range(n)))
        assert writer_threads() == expected
