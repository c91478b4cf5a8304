"""tools/eval.py compares autoencoders as the CascadeV release does: methods named after the autoencoder in each
done.json, a compression column in the paper's layout, the published rows with --protocol, VBench flicker of the
methods and of the references, and rFVD through a TorchScript stand-in detector (or n/a without one)."""
import contextlib
import io
import json
import math
import shutil

import numpy as np
import pytest
import torch

import recon
from tools import eval as ev
from tools.evaluation.evaluate import evaluate
from tools.evaluation.fvd import load_detector, rfvd
from tools.evaluation.published import PUBLISHED
from tools.evaluation.vbench import temporal_flickering
from tools.video.read import read_frames
from tools.video.write import VideoWriter

HEADER = ('| model | compression | PSNR (dB) ↑ | SSIM ↑ | LPIPS ↓ | flicker ↓ | tOF ↓ | VMAF ↑ | VBench flicker | '
          'rFVD ↓ | videos | frames |')
CASCADEV = '1×32×32, 16 ch'
COG = {'name': 'cogvideox', 'class': 'AutoencoderKLCogVideoX', 'weights': '/weights/cogvideox',
       'compression': '4×8×8, 16 ch', 'notes': []}


def perturbed(frames, sigma, seed):
    """uint8 frames plus Gaussian noise of std `sigma` (0..255 scale), rounded and clipped."""
    noise = np.random.default_rng(seed).normal(0, sigma, frames.shape)
    return np.clip(np.round(frames + noise), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def folders(carphone, repo_root, tmp_path_factory, write_lossless):
    """cascadev/: a real tiny recon.py run on carphone's first 6 frames (preview.mp4, rec.mp4, done.json);
    cog/: that folder as another autoencoder's (its done.json given an `autoencoder` entry, rec.mp4 the
    original with noise, no preview); plain/: a folder of NAME.mp4 without done.json."""
    root = tmp_path_factory.mktemp('compare')
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = recon.main(['--config', str(repo_root / 'configs' / 'tiny.py'), '--input', carphone,
                           '--num-frames', '6', '--output', str(root / 'cascadev'), '--device', 'cpu',
                           '--no-metrics'])
    assert code == 0
    frames, info = read_frames(carphone, num_frames=6)
    video = root / 'cog' / 'carphone_pristine'
    shutil.copytree(root / 'cascadev' / 'carphone_pristine', video)
    done = json.loads((video / 'done.json').read_text())
    (video / 'done.json').write_text(json.dumps({**done, 'autoencoder': COG}))
    (video / 'preview.mp4').unlink()
    write_lossless(video / 'rec.mp4', perturbed(frames, 3, 0), info.fps)
    write_lossless(root / 'plain' / 'carphone_pristine.mp4', perturbed(frames, 8, 1), info.fps)
    return root


@pytest.fixture(autouse=True)
def no_lpips_weights(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))


def table_rows(markdown):
    """The summary table of summary.md: its header and the rows below it, up to the first blank line."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('| model |'))
    end = lines.index('', start)
    return lines[start], lines[start + 2:end]


def test_methods_are_named_by_their_autoencoder_with_its_compression(folders, carphone, tmp_path):
    result = evaluate(carphone, [str(folders / 'cascadev'), str(folders / 'cog'), f"mine={folders / 'cog'}",
                                 str(folders / 'plain')], tmp_path / 'o', num_frames=6, lpips=False, device='cpu',
                      progress=False, report_dir=tmp_path / 'r', log=lambda s: None)
    want = {'preview': CASCADEV, 'refined': CASCADEV, 'cogvideox': '4×8×8, 16 ch', 'mine': '4×8×8, 16 ch',
            'plain': None}
    assert {m: s['compression'] for m, s in result['methods'].items()} == want
    doc = json.loads(result['files']['summary_json'].read_text())
    assert {m: s['compression'] for m, s in doc['methods'].items()} == want
    assert list(doc['methods']) == list(want)
    assert doc['published'] is None and doc['fvd'] is None
    cog, refined = doc['methods']['cogvideox'], doc['methods']['refined']
    assert cog['psnr'] > 35 > 20 > refined['psnr']          # σ 3 noise vs a tiny model's random weights
    assert cog['psnr'] == doc['methods']['mine']['psnr']

    header, rows = table_rows(result['files']['summary'].read_text())
    assert header == HEADER
    assert [r.split(' | ')[:2] for r in rows] == [['| ' + m, c or '—'] for m, c in want.items()] + [
        ['| reference', '—']]
    assert not any('(published)' in r for r in rows)
    page = (tmp_path / 'r' / 'index.html').read_text()
    assert '<th>model</th><th>compression</th><th>PSNR (dB) ↑</th>' in page
    assert '<td>cogvideox</td><td>4×8×8, 16 ch</td>' in page and '<td>refined</td><td>1×32×32, 16 ch</td>' in page
    assert '<tr class="other"><td>reference</td><td>—</td>' in page


def test_vbench_flicker_of_methods_and_of_the_references(folders, carphone, tmp_path):
    result = evaluate(carphone, [str(folders / 'cog'), str(folders / 'plain')], tmp_path / 'o', num_frames=6,
                      lpips=False, device='cpu', progress=False, log=lambda s: None)
    frames, _ = read_frames(carphone, num_frames=6)
    ref = result['reference']
    assert ref['videos'] == 1 and ref['frames'] == 6
    assert ref['vbench_flicker'] == pytest.approx(temporal_flickering(frames), abs=1e-12)
    rec, _ = read_frames(folders / 'cog' / 'carphone_pristine' / 'rec.mp4')
    assert result['methods']['cogvideox']['vbench_flicker'] == pytest.approx(temporal_flickering(rec), abs=1e-12)
    noisier = result['methods']['plain']['vbench_flicker']
    assert noisier < result['methods']['cogvideox']['vbench_flicker'] < ref['vbench_flicker']   # noise σ 8 > 3 > 0
    doc = json.loads(result['files']['summary_json'].read_text())
    assert doc['reference']['vbench_flicker'] == pytest.approx(ref['vbench_flicker'], abs=1e-15)
    assert doc['reference']['per_video'] == {'carphone_pristine': doc['reference']['vbench_flicker']}
    _, rows = table_rows(result['files']['summary'].read_text())
    assert rows[-1].startswith('| reference | — | — |') and f"| {ref['vbench_flicker']:.5f} |" in rows[-1]


def test_protocol_lists_the_published_rows_beside_the_measured_ones(folders, carphone, tmp_path):
    specs = [str(folders / 'cascadev'), str(folders / 'cog')]
    plain = evaluate(carphone, specs, tmp_path / 'a', lpips=False, device='cpu', progress=False,
                     log=lambda s: None)
    result = evaluate(carphone, specs, tmp_path / 'b', lpips=False, device='cpu', progress=False,
                      protocol='cascadev-inter4k', report_dir=tmp_path / 'r', log=lambda s: None)
    assert result['methods'] == plain['methods']                       # measured numbers are unchanged
    doc = json.loads(result['files']['summary_json'].read_text())
    assert doc['published']['rows'] == PUBLISHED['cascadev-inter4k']['rows']
    assert 'github.com/bytedance/CascadeV' in doc['published']['source']
    assert list(doc['methods']) == ['preview', 'refined', 'cogvideox']  # published rows are not methods
    summary = result['files']['summary'].read_text()
    _, rows = table_rows(summary)
    assert rows[:3] == [r for r in rows if not r.startswith('| reference') and '(published)' not in r]
    dashes = ' | —' * 7 + ' |'                                        # flicker ... frames: not published
    assert rows[4:] == [f'| {m} (published) | {c} | {p} | {q} | {l}' + dashes for m, c, p, q, l in (
        ('Open-Sora-Plan v1.1', '4×8×8', '25.7282', '0.8000', '0.1030'),
        ('EasyAnimate v3', '4×8×8', '28.8666', '0.8505', '0.0818'),
        ('StableCascade', '1×32×32', '24.3336', '0.6896', '0.1395'),
        ('CascadeV', '1×32×32', '23.7320', '0.6742', '0.1786'))]
    assert 'they were not measured here' in summary
    # the pairs here are 144x176 carphone frames, not the protocol's 1024x1024: said once, in the notes
    assert summary.count('pairs here were compared at 144x176, so they are not comparable with them') == 1
    assert 'not comparable' not in plain['files']['summary'].read_text()
    page = (tmp_path / 'r' / 'index.html').read_text()
    assert '<tr class="other"><td>CascadeV (published)</td><td>1×32×32</td><td>23.7320</td>' in page
    assert 'not measured here' in page


class StandIn(torch.nn.Module):
    """I3D's call signature: (N, 3, 16, 224, 224) in [-1, 1] -> (N, 6) mean colour and temporal std."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = True) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=2).mean(dim=(2, 3))], dim=1)


def write(path, frames, fps):
    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(path, fps) as w:
        w.write(frames)


@pytest.fixture(scope='module')
def long_clips(carphone, tmp_path_factory):
    """ref/carphone.mp4 (32 frames: 2 rFVD clips); noisy/ (σ 4), same/ (the reference file), short/ (10 frames);
    i3d.pt, a TorchScript StandIn."""
    root = tmp_path_factory.mktemp('fvd')
    frames, info = read_frames(carphone, num_frames=32)
    write(root / 'ref' / 'carphone.mp4', frames, info.fps)
    write(root / 'noisy' / 'carphone.mp4', perturbed(frames, 4, 2), info.fps)
    (root / 'same').mkdir()
    shutil.copy(root / 'ref' / 'carphone.mp4', root / 'same' / 'carphone.mp4')
    write(root / 'short' / 'carphone.mp4', perturbed(frames[:10], 4, 3), info.fps)
    path = root / 'i3d.pt'
    torch.jit.script(StandIn()).save(str(path))
    return root


def without_rfvd(doc, methods=('noisy', 'short')):
    """summary.json's numbers that rFVD must not change: those methods less rFVD, their videos, the reference."""
    rows = {m: {k: v for k, v in doc['methods'][m].items() if k not in ('rfvd', 'rfvd_clips')} for m in methods}
    return rows, [v for v in doc['videos'] if v['method'] in methods], doc['reference']


def test_rfvd_through_a_detector_and_without_one(long_clips, tmp_path, capsys):
    recs = ['--rec', str(long_clips / 'noisy'), '--rec', str(long_clips / 'short')]
    base = ['--ref', str(long_clips / 'ref'), '--no-lpips', '--quiet', '--device', 'cpu']
    assert ev.main([*base, *recs, '--out', str(tmp_path / 'none')]) == 0
    missing = tmp_path / 'absent' / 'i3d_torchscript.pt'
    capsys.readouterr()
    assert ev.main([*base, *recs, '--out', str(tmp_path / 'missing'), '--fvd', '--fvd-detector', str(missing)]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if 'i3d_torchscript.pt' in line]
    assert len(lines) == 1 and 'StyleGAN-V' in lines[0] and 'rFVD is n/a' in lines[0]
    assert ev.main([*base, *recs, '--rec', str(long_clips / 'same'), '--out', str(tmp_path / 'real'), '--fvd',
                    '--fvd-detector', str(long_clips / 'i3d.pt')]) == 0
    printed = capsys.readouterr().out
    docs = {k: json.loads((tmp_path / k / 'summary.json').read_text()) for k in ('none', 'missing', 'real')}
    assert without_rfvd(docs['missing']) == without_rfvd(docs['none']) == without_rfvd(docs['real'])
    assert all(s['rfvd'] is None for s in docs['missing']['methods'].values())
    assert docs['missing']['fvd']['unavailable'] == lines[0].removeprefix('warning: ')

    real = docs['real']['methods']
    frames, _ = read_frames(long_clips / 'ref' / 'carphone.mp4')
    noisy, _ = read_frames(long_clips / 'noisy' / 'carphone.mp4')
    want = rfvd([frames], [noisy], load_detector(long_clips / 'i3d.pt')).value
    assert math.isfinite(real['noisy']['rfvd']) and real['noisy']['rfvd'] >= 0
    assert real['noisy']['rfvd'] == pytest.approx(want, rel=1e-9) and want > 1e-6
    assert real['same']['rfvd'] == pytest.approx(0, abs=1e-6)
    assert real['short']['rfvd'] is None and real['noisy']['rfvd_clips'] == 2 and real['short']['rfvd_clips'] == 0
    fvd = docs['real']['fvd']
    assert fvd['unavailable'] is None and fvd['protocol']['clip_frames'] == 16 and fvd['clips']['same'] == 2
    assert any(n.startswith('short: rFVD n/a') and 'shorter than 16 frames' in n for n in docs['real']['notes'])
    assert 'rFVD: clips of 16 frames, stride 16, short side to 224, centre crop 224×224' in printed
    _, rows = table_rows((tmp_path / 'real' / 'summary.md').read_text())
    assert f"| {real['noisy']['rfvd']:.2f} | 1 | 32 |" in rows[0]


def test_fvd_detector_without_fvd_is_a_usage_error(long_clips, capsys):
    with pytest.raises(SystemExit) as e:
        ev.main(['--ref', str(long_clips / 'ref'), '--rec', str(long_clips / 'same'), '--fvd-detector', 'x.pt'])
    assert e.value.code == 2 and '--fvd-detector needs --fvd' in capsys.readouterr().err
