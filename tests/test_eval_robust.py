"""tools/eval.py keeps every clip it can score: metrics n/a where they cannot apply (tiny or one-frame clips),
a clip whose scoring fails dropped alone, lengths that differ noted both ways, the output folders and the
device checked before any work, exit codes, and recon.py --eval's folder beside a video named `eval`."""
import json
import os
import shutil
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from tools import eval as ev
from tools import report as report_cli
from tools.evaluation import evaluate as evaluate_module
from tools.evaluation import metrics
from tools.evaluation.clips import load_frames
from tools.evaluation.evaluate import evaluate
from tools.evaluation.tables import read_table
from tools.recon.records import DONE, OUTPUT_FILES

SIZES = {'big': 64, 'mid': 16, 'tiny': 8}   # square clips scaled from carphone, 4 frames; 'one': 64x64, 1 frame


def ffmpeg_clip(source, path, side, frames):
    """carphone scaled to side x side, `frames` frames, x264 yuv444p at qp 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-v', 'error', '-i', str(source), '-vf',
                    f'scale={side}:{side},format=yuv444p', '-frames:v', str(frames), '-c:v', 'libx264', '-qp', '0',
                    str(path)], check=True, timeout=120)


def perturbed(frames, seed):
    """uint8 frames plus integer noise in -8..8, clipped."""
    noise = np.random.default_rng(seed).integers(-8, 9, frames.shape)
    return np.clip(frames.astype(np.int16) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def sized(shared_videos, tmp_path_factory):
    """ref/{big,mid,tiny,one}.mp4 and rec/ (lossless perturbed copies) -> (root, {name: (ref u8, rec u8)})."""
    from tools.video.write import VideoWriter
    root = tmp_path_factory.mktemp('sized')
    pairs = {}
    for i, (name, side, frames) in enumerate([*((n, s, 4) for n, s in SIZES.items()), ('one', 64, 1)]):
        ffmpeg_clip(shared_videos / 'carphone_pristine.mp4', root / 'ref' / f'{name}.mp4', side, frames)
        ref = load_frames(root / 'ref' / f'{name}.mp4')
        (root / 'rec').mkdir(exist_ok=True)
        with VideoWriter(root / 'rec' / f'{name}.mp4', 25, lossless=True) as w:
            w.write(perturbed(ref, i))
        rec = load_frames(root / 'rec' / f'{name}.mp4')
        assert np.array_equal(rec, perturbed(ref, i)) and ref.shape == (frames, side, side, 3)
        pairs[name] = (ref, rec)
    return root, pairs


@pytest.fixture(autouse=True)
def no_lpips_weights(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))


def test_small_clips_get_na_cells_and_the_others_their_numbers(sized, tmp_path, capsys):
    root, pairs = sized
    out = tmp_path / 'o'
    assert ev.main(['--ref', str(root / 'ref'), '--rec', f'm={root / "rec"}', '--out', str(out), '--vmaf',
                    '--quiet', '--report', str(tmp_path / 'r')]) == 0
    err = capsys.readouterr().err
    for line in (f"{root / 'ref' / 'tiny.mp4'}: ssim n/a: SSIM needs frames of at least 11x11 pixels",
                 f"{root / 'ref' / 'tiny.mp4'}: tof n/a: tOF needs frames of at least 16x16 pixels",
                 f"{root / 'ref' / 'mid.mp4'}: vmaf n/a: VMAF needs frames of at least 17x17 pixels",
                 f"{root / 'ref' / 'one.mp4'}: flicker n/a: flicker needs at least 2 frames"):
        assert err.count(line) == 1, (line, err)
    assert f"{root / 'ref' / 'big.mp4'}:" not in err

    videos = {v['video']: v for v in read_table(out / 'per_video.csv')}
    ref, rec = pairs['big']
    big = videos['big']
    assert float(big['psnr']) == pytest.approx(metrics.psnr(ref, rec).mean().item(), abs=1e-6)
    assert float(big['ssim']) == pytest.approx(metrics.ssim(ref, rec).mean().item(), abs=1e-6)
    assert float(big['flicker']) == pytest.approx(metrics.flicker(ref, rec).mean().item(), abs=1e-6)
    assert float(big['tof']) == pytest.approx(metrics.tof(ref, rec).mean().item(), abs=1e-6)
    assert float(big['vmaf']) == pytest.approx(metrics.vmaf(ref, rec)[0].mean().item(), abs=1e-5)
    cells = {n: [v[k] == '' for k in ('ssim', 'flicker', 'tof', 'vmaf')] for n, v in videos.items()}
    assert cells == {'big': [False] * 4, 'mid': [False, False, False, True], 'tiny': [True, False, True, True],
                     'one': [False, True, True, False]}
    assert all(float(v['psnr']) > 25 for v in videos.values())

    doc = json.loads((out / 'summary.json').read_text())
    m = doc['methods']['m']
    assert m['videos'] == 4 and m['counts'] == {'psnr': 4, 'ssim': 3, 'lpips': 0, 'flicker': 3, 'tof': 2, 'vmaf': 2,
                                                'vbench_flicker': 3}
    ssims = [float(v['ssim']) for v in videos.values() if v['ssim']]
    assert m['ssim'] == pytest.approx(np.mean(ssims), abs=1e-6)
    assert any('tiny.mp4: ssim n/a' in n for n in doc['notes'])
    row = next(line for line in (out / 'summary.md').read_text().splitlines() if line.startswith('| m |'))
    assert row.count('(3 of 4)') == 3 and row.count('(2 of 4)') == 2 and '| n/a |' in row   # SSIM, flicker,
    # VBench flicker; tOF, VMAF
    page = (tmp_path / 'r' / 'index.html').read_text()
    assert page.count(' (2 of 4)</td>') == 2 and page.count(' (3 of 4)</td>') == 3


def test_a_clip_whose_scoring_fails_is_dropped_alone(sized, tmp_path, capsys, monkeypatch):
    root, pairs = sized
    real = metrics.tof

    def tof(ref, rec):
        if np.shape(ref)[1] == 16:
            raise RuntimeError('flow failed\nsecond line')
        return real(ref, rec)
    monkeypatch.setattr(metrics, 'tof', tof)
    out = tmp_path / 'o'
    assert ev.main(['--ref', str(root / 'ref'), '--rec', f'm={root / "rec"}', '--out', str(out), '--quiet',
                    '--no-lpips']) == 1
    err = capsys.readouterr().err
    assert f"dropped: {root / 'rec' / 'mid.mp4'}: scoring failed (RuntimeError: flow failed)" in err
    assert 'second line' not in err and '1 failed' in err
    assert {v['video'] for v in read_table(out / 'per_video.csv')} == {'big', 'tiny', 'one'}
    ref, rec = pairs['big']
    big = next(v for v in read_table(out / 'per_video.csv') if v['video'] == 'big')
    assert float(big['tof']) == pytest.approx(real(ref, rec).mean().item(), abs=1e-6)
    assert 'dropped:' in (out / 'summary.md').read_text()


def test_lpips_na_under_alexnets_smallest_input(sized, tmp_path, monkeypatch):
    """A random AlexNet in torchvision's file format stands in for the ImageNet weights (plumbing only)."""
    torchvision = pytest.importorskip('torchvision')
    pytest.importorskip('lpips')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'th'))
    metrics.alexnet_weights_path().parent.mkdir(parents=True)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), metrics.alexnet_weights_path())
    root, _ = sized
    result = evaluate([root / 'ref' / 'big.mp4', root / 'ref' / 'mid.mp4'], {'m': root / 'rec'}, tmp_path / 'o',
                      device='cpu', progress=False, log=lambda s: None)
    videos = {v['video']: v for v in read_table(result['files']['per_video'])}
    assert float(videos['big']['lpips']) > 0 and videos['mid']['lpips'] == ''
    assert result['methods']['m']['counts']['lpips'] == 1
    assert any('mid.mp4: lpips n/a: LPIPS needs frames of at least 31x31 pixels' in n for n in result['notes'])


@pytest.fixture(scope='module')
def lengths(shared_videos, tmp_path_factory):
    """ref/car.mp4 (16 frames), short/car.mp4 (its first 12), long/car.mp4 (20: its 16 and 4 more), lossless."""
    from tools.video.write import VideoWriter
    root = tmp_path_factory.mktemp('lengths')
    frames = load_frames(shared_videos / 'carphone_pristine.mp4', num_frames=20)
    for folder, n in (('ref', 16), ('short', 12), ('long', 20)):
        (root / folder).mkdir()
        with VideoWriter(root / folder / 'car.mp4', 30, lossless=True) as w:
            w.write(frames[:n])
    return root


def test_lengths_that_differ_are_noted_both_ways(lengths, tmp_path):
    logs = []
    result = evaluate(lengths / 'ref', [f'short={lengths / "short"}', f'long={lengths / "long"}'], tmp_path / 'o',
                      lpips=False, progress=False, log=logs.append)
    for name, n, compared in (('short', 12, 12), ('long', 20, 16)):
        line = f"{lengths / name / 'car.mp4'}: {n} frames vs 16 in {lengths / 'ref' / 'car.mp4'}; the first " \
               f"{compared} are compared"
        assert [s for s in logs if s.startswith('warning')].count(f'warning: {line}') == 1, logs
        assert line in result['notes'] and f'- {line}' in result['files']['summary'].read_text()
        assert result['methods'][name]['frames'] == compared
        assert result['methods'][name]['psnr'] == float('inf')        # the frames compared are the same frames


def test_output_folders_checked_before_any_scoring(sized, tmp_path, capsys, monkeypatch):
    if not os.path.exists('/proc/self'):
        pytest.skip('needs Linux /proc (a folder nobody can create files in)')
    root, _ = sized
    monkeypatch.setattr(evaluate_module, 'frame_metrics', lambda *a, **k: pytest.fail('scored before the check'))
    base = ['--ref', str(root / 'ref'), '--rec', str(root / 'rec'), '--quiet', '--no-lpips']
    for flags, flag in ((['--out', '/proc/x'], '--out /proc/x'),
                        (['--out', str(tmp_path / 'o'), '--report', '/proc/x'], '--report /proc/x'),
                        (['--out', str(root / 'rec' / 'big.mp4')], f"--out {root / 'rec' / 'big.mp4'}: is a file")):
        assert ev.main(base + flags) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f'error: {flag}') and '\n' not in err, err
    assert not (tmp_path / 'o').exists()
    assert report_cli.main([str(tmp_path), '--out', '/proc/x']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: --out /proc/x: cannot be written') and '\n' not in err


@pytest.mark.parametrize('device, expected', [('foo', "device 'foo' is unknown"), ('cuda', 'no CUDA GPU')])
def test_bad_device_is_one_line_exit_2(sized, tmp_path, capsys, device, expected):
    if device == 'cuda' and torch.cuda.is_available():
        pytest.skip('this machine has a CUDA GPU')
    root, _ = sized
    assert ev.main(['--ref', str(root / 'ref'), '--rec', str(root / 'rec'), '--out', str(tmp_path / 'o'),
                    '--device', device, '--quiet']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: --device: ') and expected in err and '\n' not in err
    assert not (tmp_path / 'o').exists()


def test_every_reconstruction_unreadable_is_failed_work(sized, tmp_path, capsys):
    """A container without streams and an audio-only file: exit 1 (failed work), the reason in one line."""
    root, _ = sized
    rec = tmp_path / 'rec'
    rec.mkdir()
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-v', 'error', '-f', 'lavfi', '-i', 'sine=d=0.3',
                    str(rec / 'big.mp4')], check=True, timeout=60)
    mvhd = bytes(4) + (0).to_bytes(8, 'big') + (1000).to_bytes(4, 'big') + bytes(4) + (0x10000).to_bytes(4, 'big') \
        + (0x100).to_bytes(2, 'big') + bytes(10) + b''.join(v.to_bytes(4, 'big') for v in (
            0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)) + bytes(24) + (2).to_bytes(4, 'big')

    def box(kind, payload):
        return (8 + len(payload)).to_bytes(4, 'big') + kind + payload
    (rec / 'mid.mp4').write_bytes(box(b'ftyp', b'isom' + bytes(4) + b'isom') + box(b'moov', box(b'mvhd', mvhd)))
    assert ev.main(['--ref', str(root / 'ref'), '--rec', str(rec), '--out', str(tmp_path / 'o'), '--quiet',
                    '--no-lpips']) == 1
    err = capsys.readouterr().err
    assert 'has no video stream (only audio)' in err and 'has no video stream (no streams at all)' in err
    last = err.strip().splitlines()[-1]
    assert last.startswith('error: --ref/--rec: no pair could be scored (2 unreadable or failed')
    assert not (tmp_path / 'o').exists()


def test_recon_eval_beside_a_video_named_eval(repo_root, carphone, tmp_path):
    """recon.py --eval on eval.mp4: OUTPUT/eval/ holds recon's files only; the evaluation is in OUTPUT/.eval/."""
    (tmp_path / 'in').mkdir()
    shutil.copyfile(carphone, tmp_path / 'in' / 'eval.mp4')
    out = tmp_path / 'out'
    proc = subprocess.run([sys.executable, str(repo_root / 'recon.py'), '--config', str(repo_root / 'configs' / 'tiny.py'),
                           '--input', str(tmp_path / 'in' / 'eval.mp4'), '--output', str(out), '--device', 'cpu',
                           '--num-frames', '2', '--eval'], capture_output=True, text=True, timeout=600,
                          cwd=repo_root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = {p.name for p in (out / 'eval').iterdir()}
    assert {'rec.mp4', DONE} <= files <= {DONE, *OUTPUT_FILES}, files
    doc = json.loads((out / '.eval' / 'summary.json').read_text())
    assert {(v['method'], v['video'], v['frames']) for v in doc['videos']} == {('refined', 'eval', 2),
                                                                             ('preview', 'eval', 2)}
