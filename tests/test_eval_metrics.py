"""tools/eval.py outputs with tOF and VMAF: strict summary.json, --vmaf, --protocol, the release clip's numbers."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import recon
from tools import eval as ev
from tools.evaluation import metrics
from tools.evaluation import tables
from tools.evaluation.clips import load_frames
from tools.evaluation.errors import EvalError
from tools.evaluation.evaluate import evaluate
from tools.evaluation.report import write_report
from tools.evaluation.scoring import frame_metrics, video_row
from tools.recon import batch
from tools.recon.settings import RunSettings
from tools.video.read import read_video
from tools.video.write import write_video


@pytest.fixture(scope='module')
def clips(small_clips, tmp_path_factory):
    """ref/{carphone,bunny}.mp4 (lossless) and noisy/<name>.mp4 (σ 0.03 on [0, 1])."""
    root = tmp_path_factory.mktemp('evalm')
    g = torch.Generator().manual_seed(0)
    for name, clip, fps in small_clips(5, 4):
        write_video(root / 'ref' / f'{name}.mp4', clip, fps, crf=0)
        write_video(root / 'noisy' / f'{name}.mp4', (clip + 0.06 * torch.randn(clip.shape, generator=g)).clamp(-1, 1),
                    fps)
    return root


@pytest.fixture(autouse=True)
def no_lpips_weights(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))


def strict_json(path):
    def reject(token):
        raise AssertionError(f'{path}: {token} is not JSON')
    return json.loads(path.read_text(), parse_constant=reject)


def test_vmaf_and_tof_in_every_output(clips, tmp_path):
    out = tmp_path / 'o'
    assert ev.main(['--ref', str(clips / 'ref'), '--rec', f'noisy={clips / "noisy"}', '--rec', f'same={clips / "ref"}',
                    '--out', str(out), '--vmaf', '--quiet', '--report', str(tmp_path / 'r')]) == 0
    doc = strict_json(out / 'summary.json')
    assert doc['format'] == 'cascadev-eval-summary' and doc['version'] == 1 and doc['protocol'] is None
    assert doc['metrics'] == ['psnr', 'ssim', 'lpips', 'flicker', 'tof', 'vmaf']
    assert doc['vmaf']['model'] == 'vmaf_v0.6.1' and doc['vmaf']['libvmaf'] and doc['vmaf']['ffmpeg_version']
    assert 'LPIPS unavailable' in doc['lpips']
    noisy, same = doc['methods']['noisy'], doc['methods']['same']
    assert noisy['videos'] == 2 and noisy['frames'] == 9 and noisy['identical'] is False
    for key in ('psnr', 'ssim', 'flicker', 'tof', 'vmaf'):
        assert type(noisy[key]) is float, key
    assert noisy['lpips'] is None
    assert same['psnr'] is None and same['identical'] is True and same['tof'] == 0 and same['flicker'] == 0
    assert tables.metric_value(same, 'psnr') == math.inf
    assert same['vmaf'] > noisy['vmaf'] + 3 and noisy['tof'] > 0  # 98.8 vs 92.5
    assert len(doc['videos']) == 4 and {v['method'] for v in doc['videos']} == {'noisy', 'same'}

    frames = tables.read_table(out / 'per_frame.csv')
    rows = [f for f in frames if f['method'] == 'noisy' and f['video'] == 'carphone']
    assert rows[0]['tof'] == '' and all(float(f['tof']) > 0 for f in rows[1:])
    assert all(0 < float(f['vmaf']) <= 100 for f in rows)
    video = next(v for v in doc['videos'] if v['method'] == 'noisy' and v['video'] == 'carphone')
    assert video['vmaf'] == pytest.approx(np.mean([float(f['vmaf']) for f in rows]), abs=1e-5)
    assert video['tof'] == pytest.approx(np.mean([float(f['tof']) for f in rows[1:]]), abs=1e-5)
    summary = (out / 'summary.md').read_text()
    assert '| tOF ↓ | VMAF ↑ |' in summary and 'VMAF: libvmaf' in summary
    page = (tmp_path / 'r' / 'index.html').read_text()
    assert '<th>VMAF ↑</th>' in page and '<th>tOF ↓</th>' in page


def test_without_vmaf_the_column_is_empty_and_noted(clips, tmp_path):
    result = evaluate(clips / 'ref' / 'bunny.mp4', {'n': clips / 'noisy'}, tmp_path / 'o', lpips=False,
                         progress=False, log=lambda s: None)
    doc = strict_json(result['files']['summary_json'])
    assert doc['vmaf'] is None and doc['methods']['n']['vmaf'] is None and doc['methods']['n']['tof'] > 0
    assert 'VMAF not computed (pass --vmaf)' in doc['notes']
    assert all(f['vmaf'] == '' for f in tables.read_table(result['files']['per_frame']))


def test_summary_json_is_strict_for_inf_and_nan():
    summary = {'m': {'videos': 1, 'frames': 2, 'psnr': math.inf, 'ssim': 1.0, 'lpips': math.nan, 'flicker': 0.0,
                     'tof': 0.0, 'vmaf': None}}
    text = tables.summary_json(summary, [], 'setup', [])
    doc = json.loads(text, parse_constant=lambda t: pytest.fail(f'{t} in summary.json'))
    assert doc['methods']['m'] == {'videos': 1, 'frames': 2, 'psnr': None, 'identical': True, 'ssim': 1.0,
                                   'lpips': None, 'flicker': 0.0, 'tof': 0.0, 'vmaf': None}


def test_bad_summary_json_is_a_one_line_error(tmp_path):
    path = tmp_path / 'summary.json'
    path.write_text('{"psnr": Infinity}')
    with pytest.raises(EvalError, match='summary.json: not valid JSON') as e:
        tables.load_summary(path)
    assert '\n' not in str(e.value)


def test_vmaf_unavailable_is_a_usage_error(clips, tmp_path, monkeypatch, capsys):
    def missing():
        raise metrics.VMAFUnavailable('VMAF unavailable: /x/ffmpeg has no libvmaf filter (`ffmpeg -filters`); ...')
    monkeypatch.setattr(metrics, 'vmaf_check', missing)
    assert ev.main(['--ref', str(clips / 'ref'), '--rec', str(clips / 'noisy'), '--out', str(tmp_path / 'o'),
                    '--vmaf', '--quiet']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: --vmaf: VMAF unavailable') and '\n' not in err
    assert not (tmp_path / 'o').exists()


def test_protocol_preset_sets_frame_flags_and_explicit_flags_win():
    args = ev.parse_args(['--ref', 'r', '--rec', 'x', '--protocol', 'cascadev-inter4k'])
    assert (args.size, args.square, args.frame_stride, args.num_frames) == (1024, True, 1, None)
    args = ev.parse_args(['--ref', 'r', '--rec', 'x', '--protocol', 'cascadev-inter4k', '--size', '512',
                          '--frame-stride', '2'])
    assert (args.size, args.square, args.frame_stride) == (512, True, 2)
    assert ev.parse_args(['--ref', 'r', '--rec', 'x']).size is None


def test_protocol_run_is_recorded_and_warns_on_fps(clips, tmp_path, capsys):
    """The preset compares with the original's preprocessing (short edge --size, centre square)."""
    from tools.video.frames import plan
    ref, info = read_video(clips / 'ref' / 'bunny.mp4')
    square = plan(*ref.shape[-2:], size=64, square=True, preprocess='cascadev').reference(ref)    # (3, T, 64, 64)
    g = torch.Generator().manual_seed(1)
    write_video(tmp_path / 'rec' / 'bunny.mp4', (square + 0.06 * torch.randn(square.shape, generator=g)).clamp(-1, 1),
                info.fps)
    out = tmp_path / 'o'
    assert ev.main(['--ref', str(clips / 'ref' / 'bunny.mp4'), '--rec', str(tmp_path / 'rec'), '--out', str(out),
                    '--protocol', 'cascadev-inter4k', '--size', '64', '--no-lpips', '--quiet']) == 0
    doc = strict_json(out / 'summary.json')
    assert doc['protocol'] == 'cascadev-inter4k' and '--protocol cascadev-inter4k --size 64 --square' in doc['setup']
    assert {(v['height'], v['width']) for v in doc['videos']} == {(64, 64)}
    err = capsys.readouterr().err
    assert err.count('assumes 30 fps clips') == 1 and '25 fps' in err  # Big Buck Bunny is 25 fps


def test_release_clip_numbers(shared_videos):
    """side_by_side_3.mp4: left half the original, right half the released model's output (8 frames, 1024²).
    PSNR and SSIM equal what the code gave before tOF/VMAF were added; the README quotes all four."""
    video = load_frames(shared_videos / 'side_by_side_3.mp4')
    assert video.shape == (8, 1024, 2048, 3)
    ref, rec = video[:, :, :1024], video[:, :, 1024:]
    per, version = frame_metrics(ref, rec, vmaf=True)
    row = video_row('released', 'side_by_side_3', per, ref.shape[1:3], 'a', 'b')
    assert row['psnr'] == pytest.approx(29.18482674259854, abs=1e-9)
    assert row['ssim'] == pytest.approx(0.8889090413138688, abs=1e-9)
    assert row['flicker'] == pytest.approx(0.003724373355299151, abs=1e-12)
    assert row['vmaf'] == pytest.approx(64.88, abs=0.01) and version
    assert row['tof'] == pytest.approx(2.4006, abs=0.001)


def test_report_does_not_import_eval(repo_root):
    code = 'import sys, tools.report; assert "tools.eval" not in sys.modules, "tools.report imports tools.eval"'
    proc = subprocess.run([sys.executable, '-c', code], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]


def test_report_reads_strict_summary(clips, tmp_path):
    result = evaluate(clips / 'ref', {'same': clips / 'ref'}, tmp_path / 'o', lpips=False, progress=False,
                         log=lambda s: None)
    page = write_report(tmp_path / 'r', result['out_dir']).read_text()
    assert '<td>same</td><td>—</td><td>inf</td>' in page  # PSNR null + identical -> inf
    assert '<td>2</td><td>9</td></tr>' in page  # videos, frames


def test_recon_eval_passes_vmaf_through(monkeypatch, tmp_path):
    """recon.py --eval [--vmaf]: the batch's evaluation gets vmaf from the flags."""
    seen = {}
    monkeypatch.setattr(batch, 'evaluate', lambda *a, **k: seen.update(k) or {'skipped': [], 'dropped': []})
    for flags, vmaf in ((['--eval', '--vmaf'], True), (['--eval'], False)):
        args = recon.build_parser().parse_args(['--input', 'x.mp4', '--output', str(tmp_path), *flags])
        settings = RunSettings.from_flags(args)
        assert batch.run_eval({'x': 'x.mp4'}.values(), tmp_path, 'auto', settings.vmaf) == 0
        assert seen['vmaf'] is vmaf and seen['out_dir'] == tmp_path / '.eval'
