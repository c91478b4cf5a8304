"""tools/eval.py and tools.evaluation end to end on small real clips: both --rec layouts, labels, sizes, outputs, bad input."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tools import eval as ev
from tools.evaluation import clips as eval_clips
from tools.evaluation.evaluate import EvalSettings, evaluate
from tools.evaluation.matching import default_out_dir
from tools.evaluation.tables import read_table
from tools.video.frames import plan
from tools.video.read import VideoReadError, read_video
from tools.video.write import to_uint8, write_video


def noisy(video, sigma, seed):
    """Gaussian noise of std `sigma` on the [0, 1] scale ([-1, 1] clips: 2σ)."""
    g = torch.Generator().manual_seed(seed)
    return (video + 2 * sigma * torch.randn(video.shape, generator=g)).clamp(-1, 1)


@pytest.fixture(scope='module')
def clips(small_clips, tmp_path_factory):
    """ref/{carphone,bunny}.mp4, recon/<name>/{rec,preview}.mp4 (σ 0.02 / 0.08), flat/<name>.mp4, half/ (½ size)."""
    root = tmp_path_factory.mktemp('eval')
    for i, (name, clip, fps) in enumerate(small_clips(6, 5)):
        write_video(root / 'ref' / f'{name}.mp4', clip, fps, crf=0)
        write_video(root / 'recon' / name / 'rec.mp4', noisy(clip, 0.02, i), fps)
        write_video(root / 'recon' / name / 'preview.mp4', noisy(clip, 0.08, 10 + i), fps)
        write_video(root / 'flat' / f'{name}.mp4', noisy(clip, 0.05, 20 + i), fps)
        half = torch.nn.functional.interpolate(noisy(clip, 0.02, i), scale_factor=0.5, mode='bilinear')
        write_video(root / 'half' / f'{name}.mp4', half, fps)
    return root


@pytest.fixture(autouse=True)
def no_lpips_weights(tmp_path, monkeypatch):
    """LPIPS takes its 'unavailable' path: no AlexNet weights in this TORCH_HOME."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))


def test_recon_layout_end_to_end(clips, tmp_path, capsys):
    out = tmp_path / 'out'
    assert ev.main(['--ref', str(clips / 'ref'), '--rec', str(clips / 'recon'), '--out', str(out), '--quiet',
                    '--report', str(tmp_path / 'report')]) == 0
    assert '<table id="summary">' in (tmp_path / 'report' / 'index.html').read_text()
    printed = capsys.readouterr()
    assert '| preview |' in printed.out and '| refined |' in printed.out
    assert (printed.out + printed.err).count('LPIPS unavailable') == 1 and 'alexnet-owt-7be5be79.pth' in printed.err

    videos = read_table(out / 'per_video.csv')
    assert {(v['method'], v['video']) for v in videos} == {(m, n) for m in ('preview', 'refined')
                                                            for n in ('carphone', 'bunny')}
    assert 'mean of the per-frame PSNRs' in (out / 'per_video.csv').read_text().splitlines()[0]
    by = {(v['method'], v['video']): v for v in videos}
    for name, frames, size in (('carphone', 6, (144, 176)), ('bunny', 5, (72, 128))):
        ref, rec = by['refined', name], by['preview', name]
        assert int(ref['frames']) == frames and (int(ref['height']), int(ref['width'])) == size
        assert float(ref['psnr']) > float(rec['psnr']) + 8  # σ 0.02 vs 0.08: ~12 dB apart
        assert 0 < float(rec['ssim']) < float(ref['ssim']) < 1
        assert 0 < float(ref['flicker']) < float(rec['flicker'])
        assert ref['lpips'] == ''

    frames = read_table(out / 'per_frame.csv')
    assert len(frames) == 2 * (6 + 5)
    per = [f for f in frames if f['method'] == 'refined' and f['video'] == 'carphone']
    assert per[0]['flicker'] == '' and all(float(f['flicker']) > 0 for f in per[1:])
    assert float(by['refined', 'carphone']['psnr']) == pytest.approx(np.mean([float(f['psnr']) for f in per]),
                                                                     abs=1e-5)

    summary = (out / 'summary.md').read_text()
    assert '| model | compression | PSNR (dB) ↑ | SSIM ↑ | LPIPS ↓ | flicker ↓ |' in summary
    assert 'LPIPS unavailable: put alexnet-owt-7be5be79.pth in' in summary
    for png in ('per_frame.png', 'bars.png'):
        with Image.open(out / png) as im:
            assert im.format == 'PNG' and im.size[0] > 300 and np.asarray(im.convert('L')).std() > 5


def test_flat_dir_pattern_labels_and_frames(clips, tmp_path):
    result = evaluate(clips / 'ref', [f'noisy={clips / "flat"}', f'{clips}/recon/*/rec.mp4'], tmp_path / 'o',
                         num_frames=4, device='cpu', progress=False, log=lambda s: None)
    assert list(result['methods']) == ['noisy', 'refined']  # a */rec.mp4 pattern is named 'refined'
    assert all(s['videos'] == 2 and s['frames'] == 8 for s in result['methods'].values())
    assert 'LPIPS unavailable' in result['lpips'] and result['methods']['noisy']['lpips'] is None
    assert result['methods']['noisy']['psnr'] < result['methods']['refined']['psnr']  # σ 0.05 vs 0.02
    videos = read_table(result['files']['per_video'])
    assert {(v['height'], v['width'], v['frames']) for v in videos} == {('144', '176', '4'), ('72', '128', '4')}


def test_identical_clips_report_inf(clips, tmp_path):
    ref_list = tmp_path / 'refs.txt'
    ref_list.write_text(f"# originals\n{clips / 'ref' / 'carphone.mp4'}\n")
    result = evaluate(ref_list, {'same': clips / 'ref'}, tmp_path / 'o', lpips=False, progress=False,
                         log=lambda s: None)
    s = result['methods']['same']
    assert s['psnr'] == math.inf and s['ssim'] == pytest.approx(1, abs=1e-12) and s['flicker'] == 0
    video = read_table(result['files']['per_video'])[0]
    assert video['psnr'] == 'inf' and video['psnr_inf_frames'] == '6' and video['lpips'] == ''
    assert all(f['psnr'] == 'inf' for f in read_table(result['files']['per_frame']))
    row = next(r for r in result['files']['summary'].read_text().splitlines() if r.startswith('| same |'))
    assert row.startswith('| same | — | inf | 1.0000 | n/a | 0.00000 |') and row.endswith('| 1 | 6 |')
    assert 'bars_plot' not in result['files']


FLAG_ROWS = {   # tools/eval.py flags, recon.py's meaning, for reconstructions without a done.json
    'square-size': ['--square', '--size', '64'],
    'stride': ['--frame-stride', '2', '--num-frames', '8'],
    'square-no-size': ['--square', '--num-frames', '6'],
    'start': ['--start', '3', '--num-frames', '4'],
    'odd': [],
    'cascadev': ['--preprocess', 'cascadev', '--size', '64', '--num-frames', '6'],
}


@pytest.mark.parametrize('row', FLAG_ROWS)
def test_perfect_reconstruction_scores_inf_through_the_flags(row, odd_clip, tmp_path, write_lossless):
    """A reconstruction equal to what recon.py's plan shows (selected frames, crop, the original's preprocessing)
    scores inf: selection applies to the reference only and nothing is resized (143x175 stays 143x175)."""
    flags = ev.parse_args(['--ref', 'r', '--rec', 'x', *FLAG_ROWS[row]])
    p = plan(143, 175, size=flags.size or 0, square=flags.square, preprocess=flags.preprocess, start=flags.start,
             stride=flags.frame_stride, num_frames=flags.num_frames or 20)
    frames, info = read_video(odd_clip, num_frames=p.num_frames, stride=p.stride, start=p.start)
    write_lossless(tmp_path / 'rec' / 'odd.mp4', to_uint8(p.reference(frames)), info.fps)
    assert ev.main(['--ref', str(odd_clip), '--rec', str(tmp_path / 'rec'), '--out', str(tmp_path / 'o'),
                    '--no-lpips', '--quiet', *FLAG_ROWS[row]]) == 0
    video = read_table(tmp_path / 'o' / 'per_video.csv')[0]
    assert video['psnr'] == 'inf' and video['psnr_inf_frames'] == str(p.num_frames), (row, video)
    assert (int(video['height']), int(video['width'])) == p.output


def test_settings_object_and_options_agree(clips, tmp_path):
    """evaluate(settings=EvalSettings(...)) and evaluate(**options) are one thing; options override settings;
    an unknown option is a TypeError naming it."""
    base = EvalSettings(num_frames=2, lpips=True, progress=False)
    a = evaluate(clips / 'ref', clips / 'recon', tmp_path / 'a', settings=base, lpips=False, log=lambda s: None)
    b = evaluate(clips / 'ref', clips / 'recon', tmp_path / 'b', num_frames=2, lpips=False, progress=False,
                 log=lambda s: None)
    assert a['methods'] == b['methods'] and a['lpips'] == 'LPIPS disabled (--no-lpips)'
    assert base.lpips is True  # the caller's settings are not changed
    with pytest.raises(TypeError, match='bogus'):
        evaluate(clips / 'ref', clips / 'recon', tmp_path / 'c', bogus=1)


def test_reference_read_once_per_plan_and_failures_remembered(clips, monkeypatch):
    calls = []
    real = eval_clips.load_frames
    monkeypatch.setattr(eval_clips, 'load_frames', lambda *a, **k: calls.append(a) or real(*a, **k))
    reads = eval_clips.ReferenceReads(str(clips / 'ref' / 'bunny.mp4'))
    whole, first4 = plan(72, 128, num_frames=5), plan(72, 128, num_frames=4)
    assert reads.frames(whole).shape == (5, 72, 128, 3) and reads.frames(whole) is reads.frames(whole)
    assert reads.frames(first4).shape == (4, 72, 128, 3) and len(calls) == 2
    too_long = plan(72, 128, num_frames=50)
    for _ in range(2):
        with pytest.raises(VideoReadError):
            reads.frames(too_long)
    assert len(calls) == 3


def test_smaller_reconstruction_is_resized_with_one_warning(clips, tmp_path):
    logs = []
    result = evaluate(clips / 'ref', {'half': clips / 'half'}, tmp_path / 'o', lpips=False, progress=False,
                         log=logs.append)
    assert sum('resized to the reference' in s for s in logs) == 1
    assert result['methods']['half']['videos'] == 2 and 20 < result['methods']['half']['psnr'] < 40


def test_default_out_dir_is_inside_first_rec(clips):
    assert default_out_dir(str(clips / 'recon')) == clips / 'recon' / '.eval'
    assert default_out_dir([f'p={clips}/recon/*/preview.mp4']) == clips / 'recon' / '.eval'
    assert default_out_dir({'x': clips / 'flat'}) == clips / 'flat' / '.eval'


@pytest.mark.parametrize('args, expected', [
    (['--ref', 'missing_dir', '--rec', 'REF'], 'missing_dir: no such file or folder'),
    (['--ref', 'REF', '--rec', 'missing_rec'], 'missing_rec: no such folder or video'),
    (['--ref', 'REF', '--rec', 'ROOT/*/*/rec.mp4'], "exactly one '*'"),
    (['--ref', 'REF', '--rec', 'ROOT/recon/*/nothing.mp4'], 'matches no files'),
    (['--ref', 'REF', '--rec', 'a=ROOT/flat', '--rec', 'a=ROOT/half'], "label 'a' is used twice"),
    (['--ref', 'ROOT/recon/bunny', '--rec', 'ROOT/flat'], 'no reconstruction matches a --ref video by name'),
])
def test_bad_input_one_line_error(clips, capsys, args, expected):
    args = [a.replace('REF', str(clips / 'ref')).replace('ROOT', str(clips)) for a in args]
    assert ev.main(args + ['--quiet', '--no-lpips', '--out', str(clips / 'bad_out')]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and expected in err and '\n' not in err
    assert not (clips / 'bad_out').exists()


def test_bad_flags(capsys):
    for args, expected in ((['--preprocess', 'cascadev'], '--preprocess cascadev needs --size'),
                           (['--size', '-1'], '--size -1'), (['--num-frames', '0'], '--num-frames 0'),
                           (['--start', '-2'], '--start -2'), (['--frame-stride', '0'], '--frame-stride 0')):
        with pytest.raises(SystemExit) as e:
            ev.main(['--ref', 'r', '--rec', 'x'] + args)
        assert e.value.code == 2 and expected in capsys.readouterr().err


def test_unreadable_video_is_skipped_and_reported(clips, tmp_path, capsys):
    rec = tmp_path / 'rec'
    rec.mkdir()
    (rec / 'carphone.mp4').write_bytes((clips / 'flat' / 'carphone.mp4').read_bytes())
    (rec / 'bunny.mp4').write_text('not a video\n')
    assert ev.main(['--ref', str(clips / 'ref'), '--rec', str(rec), '--out', str(tmp_path / 'o'), '--quiet',
                    '--no-lpips']) == 1
    err = capsys.readouterr().err
    assert 'bunny.mp4' in err and 'could not be read' in err
    assert len(read_table(tmp_path / 'o' / 'per_video.csv')) == 1
    assert 'skipped (unreadable)' in (tmp_path / 'o' / 'summary.md').read_text()


def test_script_runs_from_any_directory(repo_root, tmp_path):
    proc = subprocess.run([sys.executable, str(repo_root / 'tools' / 'eval.py'), '--help'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and '--rec' in proc.stdout


def test_lpips_column_filled_when_backbone_present(clips, tmp_path, monkeypatch):
    """A random AlexNet in torchvision's file format stands in for the ImageNet weights (plumbing only)."""
    torchvision = pytest.importorskip('torchvision')
    pytest.importorskip('lpips')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'th'))
    from tools.evaluation.metrics import alexnet_weights_path
    alexnet_weights_path().parent.mkdir(parents=True)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), alexnet_weights_path())
    result = evaluate(clips / 'ref' / 'bunny.mp4', {'r': clips / 'recon'}, tmp_path / 'o', num_frames=2,
                         progress=False, log=lambda s: None)
    assert result['lpips'] is None and result['methods']['r']['lpips'] > 0
    assert all(float(f['lpips']) > 0 for f in read_table(result['files']['per_frame']))
    assert 'unavailable' not in result['files']['summary'].read_text()
