"""tools/benchmark.py (tools/bench/): JSON schemas of every subcommand on the tiny config, the analytic FLOP
count against torch's FLOP counter and the released model's numbers, the optimised DiT paths (compiled, bf16)
against eager fp32, the seam measurement, and one-line errors.

No timing assertions: speed is measured by running the benchmark, not by tests (DEVELOPERS.md).
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from models.dit import VideoDiT, init_random_weights_
from tools import benchmark
from tools.bench import dit as bench_dit
from tools.bench import flops, measure, seams
from tools.config import load_config

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / 'shared'
TINY = str(REPO / 'configs' / 'tiny.py')
RELEASED = str(REPO / 'configs' / 's1024.effn-f32.py')
STAGES = ['read', 'compressor', 'dit', 'previewer', 'vae', 'write', 'metrics']


# One CPU thread per test (the benchmark's --threads sets the same process-wide value; restored after each).
pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def tiny_cfg():
    return load_config(TINY)


@pytest.fixture(scope='module')
def tiny_dit(tiny_cfg):
    return init_random_weights_(VideoDiT.from_config(tiny_cfg.model), 0).eval()


def finite_number(v):
    return isinstance(v, (int, float)) and math.isfinite(v)


# ---- recon: end to end, as a user runs it ------------------------------------------------------------
def check_recon_record(r, frames, size, steps, dtype='float32'):
    assert r['benchmark'] == 'recon' and r['frames'] == frames and (r['height'], r['width']) == (size, size)
    assert r['steps'] == steps and r['dtype'] == dtype and r['random_init'] is True
    assert [s['stage'] for s in r['stages']] == STAGES
    for s in r['stages']:
        assert finite_number(s['seconds']) and s['seconds'] >= 0 and s['calls'] >= 1
        assert s['peak_mib'] is None or finite_number(s['peak_mib'])
    dit = r['dit']
    assert len(dit['step_seconds']) == steps and all(finite_number(v) for v in dit['step_seconds'])
    want = flops.recon_flops(load_config(r['config']), frames, size, size, steps)
    assert dit['flops_per_step'] == want['per_step']['total'] > 0
    assert finite_number(dit['tflops']) and finite_number(dit['sampler_overhead_s'])
    assert finite_number(r['end_to_end_s']) and finite_number(r['frames_per_s']) and finite_number(r['load_s'])
    assert r['dit_latent'] == [frames, size // 8, size // 8] and r['model_size'] == [size, size]
    assert r['target'] == measure.TARGET and r['memory_kind'] == 'cpu_rss_high_water_mark'
    assert {'torch', 'device', 'threads', 'cpu'} <= set(r['env'])


def test_recon_is_the_default_subcommand_cli(tmp_path):
    """`benchmark.py --config configs/tiny.py --frames 4 --size 64` as a user runs it: a table and a JSON."""
    out = tmp_path / 'recon.json'
    res = subprocess.run([sys.executable, str(REPO / 'tools' / 'benchmark.py'), '--config', TINY, '--frames', '4',
                          '--size', '64', '--device', 'cpu', '--threads', '1', '--warmup', '0', '--json', str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'vae' in res.stdout and 'frames/s' in res.stdout
    check_recon_record(json.loads(out.read_text()), frames=4, size=64, steps=2)


def test_recon_bf16_fast_path_runs_on_cpu(tmp_path):
    """--dtype bf16 with attention in bf16: every stage runs and writes a full-length video."""
    from tools.video.read import probe_video
    out = tmp_path / 'bf16.json'
    record = benchmark.main(['--config', TINY, '--cfg-options', 'model.fp32_attention=False', '--frames', '5',
                             '--size', '64', '--dtype', 'bf16', '--steps', '1', '--warmup', '0', '--device', 'cpu',
                             '--overlap', 'both', '--out-dir', str(tmp_path), '--json', str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    check_recon_record(record, frames=5, size=64, steps=1, dtype='bfloat16')
    assert record['fp32_attention'] is False and finite_number(record['overlap_ratio'])
    assert set(record['end_to_end_runs_s']) == {'overlap', 'no_overlap'}
    assert probe_video(tmp_path / 'rec.mp4').num_frames == 5 == probe_video(tmp_path / 'preview.mp4').num_frames


def test_recon_on_a_real_clip_without_size(tmp_path, shared_videos):
    """--input without --size: the short side goes to data.sample_size (64), the aspect ratio is kept."""
    clip = shared_videos / 'carphone_pristine.mp4'                       # 144 x 176
    record = benchmark.main(['recon', '--config', TINY, '--input', str(clip), '--frames', '2', '--steps', '1',
                             '--warmup', '0', '--device', 'cpu', '--json', str(tmp_path / 'r.json')])
    assert record['input'] == str(clip) and record['frames'] == 2
    assert record['model_size'] == [64, 96]                                # 64 x 78, padded to multiples of 32


def test_missing_weights_and_bad_input_are_one_line_exit_2(tmp_path, capsys):
    argv = ['recon', '--config', TINY, '--cfg-options', 'random_init=False', f'weights.dit={tmp_path}/none.pth',
            '--frames', '2', '--device', 'cpu']
    with pytest.raises(SystemExit) as e:
        benchmark.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert 'none.pth (dit)' in err and 'bash pretrained/download.sh' in err
    with pytest.raises(SystemExit) as e:
        benchmark.main(['recon', '--config', TINY, '--input', str(tmp_path / 'nope.mp4'), '--device', 'cpu'])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and 'nope.mp4: no such file' in err
    with pytest.raises(SystemExit) as e:
        benchmark.main(['recon', '--config', TINY, '--frames', '2', '--device', 'tpu9'])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == "benchmark.py recon: device 'tpu9' is unknown; use auto, cpu, cuda or cuda:N"


@pytest.mark.parametrize('argv, expected', [
    (['flops', '--frames', '0'], '--frames 0: must be >= 1'),
    (['--config', TINY, '--frames', '0'], '--frames 0: must be >= 1'),       # the default subcommand (recon)
    (['recon', '--warmup', '-1'], '--warmup -1: must be >= 0'),
    (['dit', '--grid', '8', '0'], '--grid 0: must be >= 1'),
    (['memory', '--lengths', '8', '-4'], '--lengths -4: must be >= 1'),
    (['flops', '--tflops', '0'], '--tflops 0.0: must be > 0'),
    (['eval', '--repeats', '0'], '--repeats 0: must be >= 1'),
    (['seams', '--overlap', '-1'], '--overlap -1: must be >= 0'),
    (['flops', '--json', '/proc/x/flops.json'], '--json /proc/x/flops.json: cannot be written'),
    (['eval', '--json', '/proc/x.json'], '--json /proc/x.json: cannot be written'),
    (['recon', '--out-dir', '/proc/x'], '--out-dir /proc/x: cannot be written'),
])
def test_out_of_range_flags_and_unwritable_outputs_are_one_line_exit_2(argv, expected, capsys):
    """Checked before any work: `flops --frames 0` never runs its default 4 frames, nothing is written."""
    if '/proc/' in ' '.join(argv) and not Path('/proc/self').exists():
        pytest.skip('needs Linux /proc (a folder nobody can create files in)')
    with pytest.raises(SystemExit) as e:
        benchmark.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and expected in err, err


def test_json_naming_a_folder_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        benchmark.main(['flops', '--json', str(tmp_path)])
    assert e.value.code == 2 and 'is a folder' in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ---- eval: scoring per metric against recon's time per frame -------------------------------------------------
def test_eval_subcommand_record(tmp_path, capsys):
    """`benchmark.py eval` on the tiny config: recon and every core metric timed on the same frames."""
    out = tmp_path / 'eval.json'
    r = benchmark.main(['eval', '--config', TINY, '--frames', '3', '--size', '64', '--device', 'cpu',
                        '--warmup', '0', '--repeats', '1', '--json', str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    assert r['benchmark'] == 'eval' and (r['frames'], r['height'], r['width']) == (3, 64, 64)
    assert r['core'] == ['psnr', 'ssim', 'flicker', 'tof'] and list(r['metrics']) == r['core']
    rec = r['recon']
    assert rec['frames'] == 3 and rec['seconds'] > 0 and rec['per_frame_s'] == pytest.approx(rec['seconds'] / 3)
    assert rec['user_s'] > 0 and rec['sys_s'] >= 0
    for key, m in r['metrics'].items():
        assert set(m) == {'seconds', 'per_frame_s', 'user_s', 'sys_s'}, key
        assert m['seconds'] > 0 and m['per_frame_s'] == pytest.approx(m['seconds'] / 3) and m['sys_s'] >= 0
    assert r['eval_per_frame_s'] == pytest.approx(sum(m['per_frame_s'] for m in r['metrics'].values()))
    assert r['ratio'] == pytest.approx(r['eval_per_frame_s'] / rec['per_frame_s'])
    assert r['eval_user_s'] > 0 and r['sys_fraction'] == pytest.approx(r['eval_sys_s'] / r['eval_user_s'])
    assert r['goal'] == {'ratio_max': 0.25, 'sys_fraction_max': 0.1}
    printed = capsys.readouterr().out
    assert 'psnr + ssim + flicker + tof:' in printed and "x recon's" in printed


# ---- analytic FLOPs -------------------------------------------------------------------------------------
def test_flops_of_the_released_model():
    """8x1024² -> 32,768 tokens: ≈29 TFLOP linear, ≈59 full 3D attention, ≈12 grid attention, ≈100 in all."""
    r = flops.recon_flops(load_config(RELEASED), 8, 1024, 1024, steps=8)
    step = r['per_step']
    assert r['latent'] == [8, 128, 128] and step['forward_calls'] == 1 and step['tokens'] == 32768
    D, N = 1152, 32768
    assert step['linear'] == 28 * 2 * N * 12 * D * D                              # 29.2 TFLOP
    assert step['attention_full'] == 12 * 4 * N * N * D                           # 59.4 TFLOP
    assert step['attention_grid'] == 8 * 4 * N * 2048 * D + 8 * 4 * N * 8192 * D  # 12.4 TFLOP
    for part, tflop in (('linear', 29), ('attention_full', 59), ('attention_grid', 12), ('total', 100)):
        assert abs(step[part] / 1e12 - tflop) / tflop < 0.04, part
    assert abs(r['total'] / 1e15 - 0.8) < 0.02                                    # 8 steps ≈ 0.8 PFLOP


@pytest.mark.parametrize('shape', [(4, 8, 8), (3, 8, 12), (6, 10, 6)])
def test_flops_equal_torch_flop_counter(tiny_cfg, tiny_dit, shape):
    """The analytic count equals torch's count of every matmul/conv (math attention), irregular windows too."""
    x = torch.randn(1, 20, *shape)
    tiny_dit.set_attn_backend('math')
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            tiny_dit(x, 3.0)
    finally:
        tiny_dit.set_attn_backend('sdpa')
    assert counter.get_total_flops() == flops.dit_flops(tiny_cfg.model, *shape)['total']


def test_windowed_flops_equal_torch_flop_counter(tiny_cfg, tiny_dit):
    """forward_windowed over 4 temporal windows (starts 0, 2, 4, 5) x 4 tiles: the plan's count equals torch's."""
    x = torch.randn(1, 20, 9, 12, 12)
    tiny_dit.set_attn_backend('math')
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            tiny_dit.forward_windowed(x, 3.0)
    finally:
        tiny_dit.set_attn_backend('sdpa')
    want = flops.windowed_flops(tiny_cfg.model, 9, 12, 12)
    assert want['forward_calls'] == 4 * 4 and counter.get_total_flops() == want['total']


def test_flops_subcommand_json(tmp_path):
    out = tmp_path / 'flops.json'
    r = benchmark.main(['flops', '--frames', '32', '--size', '2048', '--json', str(out)])
    assert json.loads(out.read_text())['total'] == r['total']
    assert r['latent'] == [32, 256, 256] and r['per_step']['forward_calls'] == 7 * 9   # windows x tiles


# ---- dit, gemm-floor, numerics, memory -------------------------------------------------------------------
def test_dit_fp32_attention_variants(tmp_path):
    out = tmp_path / 'dit.json'
    benchmark.main(['dit', '--config', TINY, '--dtypes', 'bf16', '--backends', 'sdpa', '--fp32-attention', 'both',
                    '--repeats', '1', '--warmup', '0', '--device', 'cpu', '--json', str(out)])
    rows = json.loads(out.read_text())['rows']
    assert [(r['dtype'], r['fp32_attention']) for r in rows] == [('bf16', True), ('bf16', False)]
    assert all(finite_number(r['tflops']) and r['max_abs_diff'] < 0.05 for r in rows)


def test_plain_forward_is_the_same_maths(tiny_dit):
    x = torch.randn(1, 20, 6, 10, 8)
    with torch.no_grad():
        assert (bench_dit.plain_forward(tiny_dit, x, 7.0) - tiny_dit(x, 7.0)).abs().max() < 1e-5


def test_gemm_floor_json(tmp_path):
    out = tmp_path / 'floor.json'
    benchmark.main(['gemm-floor', '--config', TINY, '--grid', '8', '--repeats', '1', '--warmup', '0',
                    '--json', str(out)])
    r = json.loads(out.read_text())
    assert [row['run'] for row in r['rows']] == ['block_gemms', 'forward_sdpa', 'forward_math', 'plain']
    assert r['tokens'] == 4 * 4 * 4 and finite_number(r['floor_ratio']) and r['plain_max_abs_diff'] < 1e-5


def test_numerics_json(tmp_path):
    """bf16 vs fp32 rows; with ../shared also the golden case, whose fp32 row is the parity error."""
    out = tmp_path / 'numerics.json'
    benchmark.main(['numerics', '--config', TINY, '--grid', '8', '--device', 'cpu', '--json', str(out)])
    rows = json.loads(out.read_text())['rows']
    tiny_rows = [r for r in rows if r['case'].startswith('tiny.py')]
    assert [(r['path'], r['fp32_attention']) for r in tiny_rows] == [('bf16', False)]
    assert all(0 < r['max_rel_std'] < 0.1 and r['mean_abs'] <= r['max_abs'] for r in rows if r['path'] == 'bf16')
    if (SHARED / 'golden' / 'golden_a.safetensors').is_file():
        golden = [r for r in rows if r['case'].startswith('golden')]
        assert [(r['path'], r['fp32_attention']) for r in golden] == [('fp32', True), ('bf16', True),
                                                                       ('bf16', False)]
        assert golden[0]['max_abs'] < 1e-4


def test_memory_json(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, 'release_freed_memory_to_os', lambda: False)   # keep pytest's malloc as is
    out = tmp_path / 'memory.json'
    benchmark.main(['memory', '--config', TINY, '--lengths', '4', '8', '--sizes', '64', '--device', 'cpu',
                    '--json', str(out)])
    rows = json.loads(out.read_text())['rows']
    assert [(r['frames'], r['size'], r['tile']) for r in rows] == [(4, 64, 8), (8, 64, 8)]
    assert all(r['added_mib'] is None or r['added_mib'] >= 0 for r in rows)


def test_memory_plan_rows_per_length_and_budget(tmp_path, shared_videos):
    """--what plan: one recon.py process per length x budget (here 1 x 2: each process costs its start, 8 s); a
    budget nothing fits is that video's failure (exit 1, its line kept); ratio is measured / predicted."""
    out = tmp_path / 'plan.json'
    benchmark.main(['memory', '--config', TINY, '--what', 'plan', '--lengths', '2', '--sizes', '64',
                    '--budgets', '100MB', 'off', '--clip', str(shared_videos / 'carphone_pristine.mp4'),
                    '--device', 'cpu', '--json', str(out)])
    rows = json.loads(out.read_text())['rows']
    assert [(r['frames'], r['budget'], r['exit']) for r in rows] == [(2, '100MB', 1), (2, 'off', 0)]
    for r in rows:
        if r['exit']:
            assert r['predicted_gb'] is None and '--max-memory 0.10 GB:' in r['plan'] and 'even the smallest plan' in r['plan']
        else:
            assert 0.3 < r['predicted_gb'] < 10 and r['ratio'] == pytest.approx(r['measured_gb'] / r['predicted_gb'])
            assert f"chunk {r['frames']} frame" in r['plan'] and r['plan'].endswith('(no --max-memory)')


def test_stages_channels_last_and_bf16(tmp_path):
    """Channels-last convolutions give the NCHW result up to float rounding; bf16 rows run."""
    out = tmp_path / 'stages.json'
    benchmark.main(['stages', '--config', TINY, '--frames', '2', '--size', '64', '--repeats', '1', '--warmup', '0',
                    '--device', 'cpu', '--json', str(out)])
    rows = json.loads(out.read_text())['rows']
    assert [(r['stage'], r['dtype'], r['channels_last']) for r in rows] == [
        (s, d, c) for s in ('compressor', 'previewer', 'svd_decode') for d in ('fp32', 'bf16') for c in (False, True)]
    for r in rows:
        assert r['max_abs_vs_fp32'] < (1e-4 if r['dtype'] == 'fp32' else 0.5), r


# ---- optimised paths equal the plain one ---------------------------------------------------------------
def test_compiled_and_eager_dit_are_equal(tiny_dit):
    """torch.compile (inductor, what --compile uses) of the per-tile forward: fp32 CPU outputs within 1e-5.

    Skips where inductor cannot build its C++ kernels (no compiler). ~10-20 s on a 2-core machine.
    """
    x = torch.randn(1, 20, 6, 12, 10)
    with torch.no_grad():
        eager = tiny_dit.forward_windowed(x, 321.0)
        compiled = bench_dit.compile_dit(tiny_dit)
        try:
            with bench_dit.forward_conditioned_as(tiny_dit, compiled):
                out = tiny_dit.forward_windowed(x, 321.0)
        except Exception as e:  # noqa: BLE001 — torch._inductor raises many types when it cannot compile
            if 'compile' in type(e).__name__.lower() or 'inductor' in repr(e).lower():
                pytest.skip(f'inductor cannot compile here: {str(e).splitlines()[0][:200]}')
            raise
    assert 'forward_conditioned' not in vars(tiny_dit)                  # the eager method is back
    assert (out - eager).abs().max() <= 1e-5


def test_bf16_dit_is_close_to_fp32(tiny_dit):
    """The DiT under bf16 autocast on CPU: bf16 output, within bf16 rounding of fp32."""
    x = torch.randn(1, 20, 4, 8, 8)
    with torch.no_grad():
        ref = tiny_dit(x, 500.0)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = tiny_dit(x, 500.0)
    assert y.dtype == torch.bfloat16
    assert (y.float() - ref).abs().max() < 0.02 * ref.abs().max()


def test_step_and_stage_timers():
    """StepTimer as a sampler's per-step callback: one time per step of every run, each from the step before."""
    device = torch.device('cpu')
    timer, steps = measure.StageTimer(device), measure.StepTimer(device)
    with timer('a'):
        steps.start()
        steps.step({'i': 0})
        steps.step({'i': 1})
    with timer('a'):
        pass
    assert timer.stages['a']['calls'] == 2 and len(steps.seconds()) == 2
    steps.start()
    steps.step()
    assert len(steps.seconds()) == 3 and all(v >= 0 for v in steps.seconds())
    times = measure.time_interleaved({'x': lambda: None, 'y': lambda: None}, device, repeats=2, warmup=0)
    assert set(times) == {'x', 'y'} and all(m >= b >= 0 for m, b in times.values())


# ---- no host-device sync in the step loop (checked on the meta device: it has no data to sync) -----------
class HostTransfers(TorchDispatchMode):
    """Records host reads of device tensors (.item(), nonzero) and host->device copies of non-scalars."""

    def __init__(self, device='meta'):
        super().__init__()
        self.device, self.events = device, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        aten = torch.ops.aten
        if func in (aten._local_scalar_dense.default, aten.nonzero.default) and args[0].device.type == self.device:
            self.events.append(f'{func} on {tuple(args[0].shape)}')
        elif func is aten.copy_.default and args[0].device != args[1].device and args[1].numel() > 1:
            blocking = '' if (len(args) > 2 and args[2]) or kwargs.get('non_blocking') else 'blocking '
            self.events.append(f'{blocking}copy {args[1].device}->{args[0].device} {tuple(args[1].shape)}')
        elif func is aten._to_copy.default and kwargs.get('device') is not None and args[0].numel() > 1 \
                and torch.device(kwargs['device']) != args[0].device:
            blocking = '' if kwargs.get('non_blocking') else 'blocking '
            self.events.append(f"{blocking}copy {args[0].device}->{kwargs['device']} {tuple(args[0].shape)}")
        return func(*args, **kwargs)


@pytest.mark.parametrize('scheduler', ['EulerA', 'DDIM', 'DPMS'])
def test_sampler_loop_has_no_host_device_sync(tiny_cfg, scheduler):
    """The DiT and the sampler on the meta device: a sync (.item(), nonzero, a blocking host copy) would fail or show.

    Allowed: Euler-ancestral's non-blocking copy of each step's noise (from pinned memory on CUDA).
    """
    from diffusion.samplers import get_sampler
    model = VideoDiT.from_config(tiny_cfg.model).eval().to('meta').set_attn_backend('math')
    x, cond = torch.randn(1, 4, 6, 12, 12, device='meta'), torch.randn(1, 16, 6, 12, 12, device='meta')
    model.forward_windowed(torch.cat([x, cond], 1), 1.0)                   # fills the pos-embed / tile caches
    counts, timer = [], measure.StepTimer(torch.device('meta'))
    for steps, callback in ((2, None), (4, None), (4, timer.step)):    # the benchmark's per-step callback too
        timer.start()
        with HostTransfers() as seen:
            out = get_sampler(scheduler)(lambda v, t: model.forward_windowed(v, t), x, cond, steps,
                                         torch.Generator().manual_seed(0), False, callback=callback)
        assert out.device.type == 'meta' and out.shape == x.shape
        assert all(e.startswith('copy cpu->meta (6, 4, 12, 12)') for e in seen.events), seen.events
        counts.append(len(seen.events))
    assert counts == ([2, 4, 4] if scheduler == 'EulerA' else [0, 0, 0]), counts
    assert len(timer.runs[-1]) == 4 + 1                                  # start and one mark per step


@pytest.mark.parametrize('spacing', ['linspace', 'leading', 'trailing'])
def test_euler_ancestral_loop_equals_diffusers_step(spacing):
    """Our loop (noise drawn first) is diffusers' scale_model_input/step bit for bit, same generator draws."""
    from diffusers import EulerAncestralDiscreteScheduler
    from diffusion.samplers import sample_diffusers
    noise, cond = torch.randn(2, 4, 3, 6, 6), torch.randn(2, 16, 3, 6, 6)
    eps_fn = lambda v, t: torch.tanh(v[:, :4] * 0.7 + v[:, 4:8] * 0.1) + t[:, None, None, None, None] / 1000
    make = lambda: EulerAncestralDiscreteScheduler(timestep_spacing=spacing)
    ours = sample_diffusers(eps_fn, noise, cond, make(), 5, torch.Generator().manual_seed(3), progress=False)
    sched, g = make(), torch.Generator().manual_seed(3)
    fold = lambda v: v.permute(0, 2, 1, 3, 4).reshape(-1, *v.shape[1:2], *v.shape[3:])
    unfold = lambda v: v.reshape(2, 3, *v.shape[1:]).permute(0, 2, 1, 3, 4)
    sched.set_timesteps(5)
    lat = fold(noise) * sched.init_noise_sigma
    for t in sched.timesteps:
        inp = unfold(sched.scale_model_input(lat, t))
        eps = eps_fn(torch.cat([inp, cond], 1), t.float().expand(2))
        lat = sched.step(fold(eps), t, lat, generator=g).prev_sample
    assert torch.equal(ours, unfold(lat))


# ---- seams: chunk / tile boundaries against whole runs ---------------------------------------------------
def test_seam_errors_on_a_known_step():
    """A step of 1 at the cut: boundary and jump errors 1, nothing elsewhere; a smooth ramp of the same height
    spreads it (jump 0.25 per neighbour pair over 4 pairs)."""
    ref = torch.zeros(1, 1, 10, 2, 2)
    step = ref.clone()
    step[:, :, 5:] = 1.0
    r = seams.seam_errors(step, ref, {2: [5]})
    assert (r['boundary_err'], r['jump_err'], r['jump_interior']) == (1.0, 1.0, 0.0) and r['interior_err'] == 1.0
    ramp = ref.clone()
    ramp[:, :, 3:7] = torch.tensor([0.25, 0.5, 0.75, 1.0]).view(1, 1, 4, 1, 1)
    ramp[:, :, 7:] = 1.0
    r = seams.seam_errors(ramp, ref, {2: [5]})
    assert r['jump_err'] == 0.25 and r['jump_interior'] == 0.25
    tiles = torch.zeros(1, 1, 1, 6, 6)
    tiles[..., 3:, :] = 0.5                                                # a seam between rows 2 and 3 only
    r = seams.seam_errors(tiles, torch.zeros_like(tiles), {3: [3], 4: [3]})
    assert r['jump_err'] == 0.5 and r['jump_interior'] == 0.0 and r['boundary_err'] == 0.5


def test_seams_json_on_a_real_clip(tmp_path, shared_videos):
    """Rows for every overlap and both tile blends; a clip of one decoder chunk has no seam, equals the whole decode."""
    out = tmp_path / 'seams.json'
    clip = str(shared_videos / 'carphone_pristine.mp4')
    r = benchmark.main(['seams', '--config', TINY, '--inputs', clip, '--frames', '6', '--size', '96',
                        '--device', 'cpu', '--json', str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    vae, dit = r['vae_temporal'], r['dit_tiles']
    assert vae['decode_chunk'] == 4 and vae['decode_overlap'] == 2 and vae['decoder_calls_ratio'] == 1.0
    assert [(row['setting'], row.get('decoder_calls')) for row in r['rows'] if row['part'] == 'vae_temporal'] == [
        ('overlap=0', 2), ('overlap=1', 2), ('overlap=2', 2), ('overlap=3', 3)]   # 6 frames: [0,4)+[4,6) / ...
    for key in ('boundary_err', 'interior_err', 'jump_err'):
        assert finite_number(vae[f'{key}_no_overlap']) and finite_number(vae[f'{key}_overlap'])
        assert finite_number(dit[f'{key}_overwrite']) and finite_number(dit[f'{key}_smooth'])
    assert dit['tile'] == 8 and {row['tiles'] for row in r['rows'] if row['part'] == 'dit_tiles'} == {6}
    short = benchmark.main(['seams', '--config', TINY, '--inputs', clip, '--frames', '4', '--size', '96',
                            '--device', 'cpu'])['vae_temporal']
    assert short['boundary_err_no_overlap'] is None and short['interior_err_no_overlap'] == 0.0   # one chunk = whole


def test_recon_processes_side_by_side(tmp_path):
    """--processes 2: one process of 2 threads, then 2 of 1 on the same synthetic clip; the main process of the
    split gathers rank 1's share exactly: 8 frames at 64² give 3 DiT windows of one 8x8 tile (rank 1: the
    second, 4 channels x 4 frames x 8 x 8 fp32 per step) and 3 SVD chunks of 4 frames overlapping by 2 (rank 1:
    the second, 4 frames x 3 x 64 x 64 fp32); the projection is for the released model."""
    r = benchmark.main(['recon', '--config', TINY, '--random-init', '--processes', '2', '--threads', '1',
                        '--frames', '8', '--size', '64', '--steps', '1', '--warmup', '0', '--device', 'cpu',
                        '--no-metrics', '--json', str(tmp_path / 'p.json')])
    assert r['processes'] == 2 and r['reference']['env']['threads'] == 2 and r['split']['env']['threads'] == 1
    assert 'split' not in r['reference']
    dit, svd = 4 * 4 * 8 * 8 * 4, 4 * 3 * 64 * 64 * 4
    assert r['split']['split'] == {'processes': 2, 'dit_gathered_bytes_per_step': dit,
                                   'gathered_bytes_per_video': dit + svd}
    assert r['end_to_end_ratio'] > 0 and json.loads((tmp_path / 'p.json').read_text())['processes'] == 2
    one_minute = r['projection'][-1]
    assert (one_minute['frames'], one_minute['calls_per_step']) == (1800, 449)
