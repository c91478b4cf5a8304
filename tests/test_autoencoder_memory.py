"""Memory planning for other autoencoders: windows of 1 + f·k frames (models/autoencoders.py), the measured
memory (tools/recon/autoencoder_memory.py), the plan (tools/recon/memory.py) and recon.py --max-memory."""
import json

import pytest
import torch
from safetensors import safe_open

from models.autoencoders import load_autoencoder, window_frames
from tests.test_autoencoders import save_tiny
from tests.test_recon_autoencoders import run
from tools.recon.autoencoder_memory import measure_autoencoder, probe_lengths
from tools.recon.machine import bytes_in_use, peak_bytes, reset_peak
from tools.recon.memory import (HEADROOM, PlanError, Settings, Workload, autoencoder_bytes, parse_size,
                                plan_memory, predict)
from tools.video.read import probe_video

pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.mark.parametrize('frames, window, want', [(20, None, [20]), (20, 9, [9, 9, 2]), (18, 9, [9, 9]),
                                                  (9, 9, [9]), (5, 17, [5]), (1, 5, [1])])
def test_window_frames(frames, window, want):
    assert window_frames(frames, window) == want


def test_windows_decode_to_t_frames_each_window_its_own_clip(tmp_path):
    """A latent of windows [5, 5, 1] decodes window by window: the same frames as decoding each window's own
    encoding, 11 frames in all; windows that need more latent frames than there are are refused."""
    ae = load_autoencoder('wan2.1', save_tiny('wan2.1', tmp_path / 'wan'))
    video = torch.rand(1, 3, 11, 32, 48) * 2 - 1
    windows = window_frames(11, 5)
    parts = [ae.encode(video[:, :, a:a + n]) for a, n in zip((0, 5, 10), windows)]
    latent = torch.cat(parts, dim=2)
    assert latent.shape[2] == 2 + 2 + 1
    out = torch.cat(list(ae.decode_chunks(latent, 11, 4, windows=windows)), dim=2)
    want = torch.cat([ae.decode(z, n) for z, n in zip(parts, windows)], dim=2)
    assert out.shape == video.shape and torch.equal(out, want)
    whole = ae.encode(video)                                      # one window: the clip's own causal encoding
    assert whole.shape[2] == 4 and not torch.equal(out, ae.decode(whole, 11))
    with pytest.raises(ValueError, match='windows'):
        list(ae.decode_chunks(latent[:, :, :4], 11, windows=windows))


def test_autoencoder_bytes_interpolates_and_extends_the_last_slope():
    points = ((5, 10.0), (9, 18.0), (17, 20.0))
    assert [autoencoder_bytes(points, n) for n in (1, 5, 7, 9, 13, 17, 33)] == [10, 10, 14, 18, 19, 20, 24]
    assert autoencoder_bytes(((9, 18.0),), 27) == 54 and autoencoder_bytes(((9, 18.0),), 5) == 18


def workload(frames=65, points=((5, 2000.0), (9, 3600.0), (17, 6800.0)), factor=4):
    """65 frames of 160x192 through an autoencoder whose call costs 400 B per pixel and frame."""
    return Workload(source=(144, 176), model=(160, 192), output=(144, 176), frames=frames, refine=False,
                    autoencoder=(factor, points))


def test_plan_keeps_the_whole_clip_then_takes_the_longest_window_that_fits():
    w, base = workload(), 10 ** 9
    whole = plan_memory(w, budget=None, base=base)
    assert whole.settings.window is None and whole.to_dict()['window'] is None
    assert 'the whole clip at once' in whole.line()
    budget = int((base + 0.6 * (whole.prediction.peak - base)) / (1 - HEADROOM))
    plan = plan_memory(w, budget=budget, base=base)
    k = plan.settings.window
    assert k is not None and (k - 1) % 4 == 0 and 5 <= k < 65 and f'windows of {k} frames' in plan.line()
    assert plan.prediction.peak <= budget * (1 - HEADROOM) < whole.prediction.peak
    longer = Settings(1, None, plan.settings.vae_chunk, 0, 0, window=k + 4)     # the next longer window
    assert predict(w, longer, base).peak > budget * (1 - HEADROOM)
    assert plan.to_dict()['window'] == k
    cascadev = plan_memory(Workload(source=(144, 176), model=(160, 192), output=(144, 176), frames=8), None)
    assert 'window' not in cascadev.to_dict()                     # CascadeV's record is unchanged


def test_plan_error_names_the_shortest_window_in_one_line():
    with pytest.raises(PlanError) as e:
        plan_memory(workload(), budget=parse_size('1.01GB'), base=10 ** 9)
    msg = str(e.value)
    assert '\n' not in msg and 'windows of 5 frames' in msg and 'raise --max-memory to' in msg


def test_without_a_budget_a_clip_too_large_for_the_machine_is_planned_for_it():
    w, base = workload(frames=401), 10 ** 9
    whole = plan_memory(w, budget=None, base=base)
    limit = int((base + 0.5 * (whole.prediction.peak - base)) / (1 - HEADROOM))
    plan = plan_memory(w, budget=None, base=base, limit=limit)
    assert plan.settings.window is not None and plan.budget == limit
    assert plan.prediction.peak <= limit * (1 - HEADROOM)
    assert plan_memory(w, budget=None, base=base, limit=10 * whole.prediction.peak).settings.window is None


class Allocating:
    """An autoencoder whose encode holds `per_frame` bytes per frame (and decode returns the frames): the
    measured peaks are known."""
    time_factor, device = 4, torch.device('cpu')

    class spec:
        name = 'allocating'

    def __init__(self, per_frame):
        self.per_frame = per_frame

    def encode(self, video):
        held = torch.ones(video.shape[2], self.per_frame // 4)          # float32: per_frame bytes a frame
        return held.sum() + video.mean(dim=(1, 3, 4))

    def decode(self, latent, num_frames):
        return torch.zeros(1, 3, num_frames, 64, 64)


def test_measurement_finds_the_known_allocation_and_stays_in_its_room():
    per_frame = 16 * 2 ** 20
    ae = Allocating(per_frame)
    factor, points = measure_autoencoder(ae, (64, 64))
    assert factor == 4 and [n for n, _ in points] == list(probe_lengths(4)) == [5, 9, 17]
    for n, b in points:                                          # bytes per pixel of 64x64 -> bytes
        assert b * 64 * 64 == pytest.approx(n * per_frame, rel=0.05)
    # a room of 12 frames' bytes: 17 frames are predicted above it and are not run
    assert len(measure_autoencoder(Allocating(per_frame), (64, 64), room=12 * per_frame)[1]) == 2
    # a 6-frame video is padded to 9: 17 frames are not run
    assert [n for n, _ in measure_autoencoder(Allocating(per_frame), (64, 64), frames=6)[1]] == [5, 9]


@pytest.mark.parametrize('factor, frames, lengths', [
    (4, 1, (5,)), (4, 5, (5,)), (4, 6, (5, 9)), (4, 9, (5, 9)), (4, 10, (5, 9, 17)), (4, 200, (5, 9, 17)),
    (8, 10, (9, 17)), (1, 3, (2, 4)), (1, 8, (2, 4, 8)), (1, 1, (2,)), (4, None, (5, 9, 17))])
def test_probe_lengths_stop_at_the_first_that_holds_the_padded_video(factor, frames, lengths):
    assert probe_lengths(factor, frames) == lengths


def windows_of(folder):
    with safe_open(str(folder / 'latent.safetensors'), 'pt') as f:
        return json.loads(f.metadata()['meta']).get('windows')


def test_recon_under_a_budget_encodes_in_windows_and_stays_under_it(repo_root, carphone, tmp_path):
    """113 frames through a tiny LTX-Video: without a budget the whole clip at once; with a budget below that
    run's peak, windows of 8k+1 frames, 113 frames out, the process's peak under the budget and below the
    whole clip's; far too small a budget fails the video in one line."""
    weights = save_tiny('ltx-video', tmp_path / 'ltx')
    argv = ['--config', repo_root / 'configs' / 'tiny.py', '--device', 'cpu', '--size', '0', '--input', carphone,
            '--num-frames', 113, '--autoencoder', 'ltx-video', '--autoencoder-weights', weights]

    def measured(*extra):
        before = bytes_in_use('cpu')
        assert reset_peak('cpu')
        code, out, err = run([*argv, *extra])
        return code, out, err, before, peak_bytes('cpu')

    code, out, err, before, whole_peak = measured('--output', tmp_path / 'a')
    assert code == 0, err
    done = json.loads((tmp_path / 'a' / 'carphone_pristine' / 'done.json').read_text())
    assert done['memory_plan']['window'] is None and windows_of(tmp_path / 'a' / 'carphone_pristine') is None
    assert 'memory measured at 160x192' in out and 'the whole clip at once' in out
    whole_work = done['memory_plan']['predicted_peak'] - before        # predicted above the memory in use before

    # a budget whose share above the memory in use is 40 % of the whole clip's prediction
    budget = int((bytes_in_use('cpu') + 0.4 * whole_work) / (1 - HEADROOM))
    code, out, err, before_b, peak = measured('--output', tmp_path / 'b', '--max-memory', budget)
    assert code == 0, err
    folder = tmp_path / 'b' / 'carphone_pristine'
    plan = json.loads((folder / 'done.json').read_text())['memory_plan']
    k, windows = plan['window'], windows_of(folder)
    assert k is not None and (k - 1) % 8 == 0 and 9 <= k < 113 and f'windows of {k} frames' in out
    assert sum(windows) == 113 and set(windows[:-1]) == {k} and 0 < windows[-1] <= k
    assert probe_video(folder / 'rec.mp4').num_frames == 113
    assert plan['budget'] == budget and plan['predicted_peak'] <= budget * (1 - HEADROOM)
    assert peak <= budget and peak - before_b < whole_peak - before      # under the budget, below the whole clip

    code, out, err = run([*argv, '--output', tmp_path / 'c', '--max-memory', int(bytes_in_use('cpu') * 1.02)])
    line = next(x for x in out.splitlines() if x.startswith('failed:'))
    assert code == 1 and 'windows of 9 frames' in line and 'raise --max-memory to' in line


def test_benchmark_plan_runs_recon_with_the_autoencoder(repo_root, carphone, tmp_path, monkeypatch):
    """`benchmark.py memory --what plan --autoencoder NAME --autoencoder-weights DIR` hands both to each recon.py
    run and records the autoencoder; ratio = measured / predicted (the recon.py process is stood in for)."""
    from tools import benchmark
    from tools.bench import memory_fit
    seen = []

    def fake_run(argv):
        seen.append(argv)
        line = 'clip: predicted peak 1.20 GB: chunk 16 frames, the whole clip at once (no --max-memory)'
        return 0, line, 1.2e9, 0.9e9
    monkeypatch.setattr(memory_fit, 'run_recon_peak', fake_run)
    out = tmp_path / 'plan.json'
    benchmark.main(['memory', '--what', 'plan', '--config', str(repo_root / 'configs' / 'tiny.py'), '--lengths', '9',
                    '17', '--sizes', '144', '--clip', carphone, '--autoencoder', 'ltx-video', '--autoencoder-weights',
                    str(tmp_path / 'ltx'), '--device', 'cpu', '--json', str(out)])
    assert len(seen) == 2 and all(a[a.index('--autoencoder') + 1] == 'ltx-video' and
                                  a[a.index('--autoencoder-weights') + 1] == str(tmp_path / 'ltx') for a in seen)
    assert [a[a.index('--num-frames') + 1] for a in seen] == ['9', '17']
    record = json.loads(out.read_text())
    assert record['autoencoder'] == 'ltx-video' and record['rows'][0]['ratio'] == pytest.approx(0.75)
