"""Metrics against known values: identical clips, σ=0.05 noise on real frames, scikit-image, LPIPS loading."""
import json
import math
import subprocess

import numpy as np
import pytest
import torch

from tools.evaluation import metrics
from tools.video.read import read_video
from tools.video.write import to_uint8


@pytest.fixture(scope='module')
def carphone(shared_videos):
    """6 real uint8 frames (6, 144, 176, 3)."""
    video, _ = read_video(shared_videos / 'carphone_pristine.mp4', num_frames=6)
    return to_uint8(video)


def add_noise(frames, sigma, seed=0):
    """Gaussian noise of std `sigma` on the [0, 1] scale, clipped and quantised back to uint8."""
    noise = np.random.default_rng(seed).normal(0.0, sigma, frames.shape)
    return np.clip(np.round((frames / 255.0 + noise) * 255), 0, 255).astype(np.uint8)


def test_identical_clips(carphone):
    assert torch.isinf(metrics.psnr(carphone, carphone)).all()
    assert metrics.mean_psnr(metrics.psnr(carphone, carphone)) == math.inf
    assert torch.allclose(metrics.ssim(carphone, carphone), torch.ones(6, dtype=torch.float64), atol=1e-12)
    assert metrics.flicker(carphone, carphone).shape == (5,)
    assert (metrics.flicker(carphone, carphone) == 0).all()


def test_noise_psnr_matches_exact_value(carphone):
    noisy = add_noise(carphone, 0.05)
    err = carphone.astype(np.float64) / 255 - noisy.astype(np.float64) / 255
    expected = 10 * np.log10(1 / np.mean(err ** 2, axis=(1, 2, 3)))  # from the same uint8 frames
    got = metrics.psnr(carphone, noisy).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    assert 25.5 < got.mean() < 26.5, got  # 20·log10(1/0.05) = 26.02 dB before clipping and rounding
    assert metrics.mean_psnr(got) == pytest.approx(got.mean(), abs=1e-12)
    assert (metrics.flicker(carphone, noisy) > 0.01).all()
    assert (metrics.ssim(carphone, noisy) < 0.9).all()


def test_psnr_ssim_match_scikit_image(carphone):
    skm = pytest.importorskip('skimage.metrics')
    rng = np.random.default_rng(1)
    random = rng.integers(0, 256, (3, 37, 53, 3), dtype=np.uint8)  # odd size: the valid-window crop matters
    cases = [(random, add_noise(random, 0.1, seed=2)), (carphone[:3], add_noise(carphone[:3], 0.03, seed=3))]
    for ref, rec in cases:
        psnr, ssim = metrics.psnr(ref, rec).numpy(), metrics.ssim(ref, rec).numpy()
        for i in range(len(ref)):
            a, b = ref[i] / 255.0, rec[i] / 255.0
            assert abs(psnr[i] - skm.peak_signal_noise_ratio(a, b, data_range=1.0)) < 1e-4
            want = skm.structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                             use_sample_covariance=False, data_range=1.0)
            assert abs(ssim[i] - want) < 1e-4, (ssim[i], want)


def test_flicker_ignores_static_error_and_chunks_agree():
    ref = np.random.default_rng(4).integers(20, 200, (5, 16, 16, 3), dtype=np.uint8)
    rec = ref + 10  # same error in every frame: no temporal artefact
    assert (metrics.flicker(ref, rec) == 0).all()
    assert torch.allclose(metrics.psnr(ref, rec), torch.full((5,), 20 * math.log10(255 / 10), dtype=torch.float64))
    blinking = rec.copy()
    blinking[::2] = ref[::2]  # error switches on and off every frame
    assert torch.allclose(metrics.flicker(ref, blinking), torch.full((4,), 10 / 255, dtype=torch.float64))
    for fn in (metrics.psnr, metrics.ssim, metrics.flicker):
        assert torch.allclose(fn(ref, blinking, chunk=2), fn(ref, blinking), rtol=0, atol=1e-12)


def test_bad_input_is_rejected():
    a = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match='equal shape'):
        metrics.psnr(a, a[:, :8])
    with pytest.raises(ValueError, match='uint8 frames'):
        metrics.ssim(a.astype(np.float32), a.astype(np.float32))
    with pytest.raises(ValueError, match='at least 11x11'):
        metrics.ssim(a[:, :8, :8], a[:, :8, :8])


def test_lpips_unavailable_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    with pytest.raises(metrics.LPIPSUnavailable) as e:
        metrics.load_lpips()
    msg = str(e.value)
    assert metrics.ALEXNET_FILE in msg and str(tmp_path / 'torch' / 'hub' / 'checkpoints') in msg
    assert '\n' not in msg


def test_lpips_loads_local_backbone(tmp_path, monkeypatch, carphone):
    """A random-weight AlexNet in torchvision's file format stands in for the ImageNet one (shapes only)."""
    pytest.importorskip('lpips')
    torchvision = pytest.importorskip('torchvision')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    path = metrics.alexnet_weights_path()
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    model = metrics.load_lpips()
    conv = getattr(model.net.slice2, '3').weight
    assert torch.equal(conv, torch.load(path, weights_only=True)['features.3.weight'])
    frames = carphone[:2, :64, :64]
    same = metrics.lpips_distance(model, frames, frames)
    diff = metrics.lpips_distance(model, frames, add_noise(frames, 0.2))
    assert same.shape == diff.shape == (2,)
    assert torch.allclose(same, torch.zeros(2, dtype=torch.float64), atol=1e-6) and (diff > 0).all()


def test_tof_zero_for_identical_and_grows_with_shift(carphone):
    """tOF is exactly 0 for identical clips; a copy that slides k px more each frame moves k px/frame differently."""
    assert metrics.tof(carphone, carphone).shape == (5,)
    assert (metrics.tof(carphone, carphone) == 0).all()
    means = []
    for k in (1, 2, 4):
        sliding = np.stack([np.roll(f, k * t, axis=1) for t, f in enumerate(carphone)])
        means.append(metrics.tof(carphone, sliding).mean().item())
        assert abs(means[-1] - k) < 0.6, (k, means[-1])  # |Δu| = k px, Δv = 0
    assert means[0] < means[1] < means[2]
    still = np.concatenate([carphone[:1], carphone[:-1]])  # one frame late: the motion of the wrong pair
    assert metrics.tof(carphone, still).mean() > 0.5
    with pytest.raises(ValueError, match='equal shape'):
        metrics.tof(carphone, carphone[:, :64])


def lossless_mkv(path, frames):
    """uint8 RGB frames -> FFV1 .mkv in RGB (lossless), through imageio-ffmpeg's ffmpeg; checked by decoding."""
    exe = metrics.ffmpeg_exe()
    t, h, w = frames.shape[:3]
    subprocess.run([exe, '-hide_banner', '-loglevel', 'error', '-y', '-f', 'rawvideo', '-pix_fmt', 'rgb24',
                    '-s', f'{w}x{h}', '-framerate', '25', '-i', '-', '-c:v', 'ffv1', '-pix_fmt', 'bgr0', str(path)],
                   input=np.ascontiguousarray(frames).tobytes(), check=True)
    back = subprocess.run([exe, '-hide_banner', '-loglevel', 'error', '-i', str(path), '-f', 'rawvideo',
                           '-pix_fmt', 'rgb24', '-'], capture_output=True, check=True).stdout
    assert np.array_equal(np.frombuffer(back, np.uint8).reshape(frames.shape), frames)


def direct_libvmaf(tmp_path, ref, rec):
    """Per-frame VMAF from a plain `ffmpeg -i rec.mkv -i ref.mkv -lavfi libvmaf` run on lossless files."""
    lossless_mkv(tmp_path / 'ref.mkv', ref)
    lossless_mkv(tmp_path / 'rec.mkv', rec)
    subprocess.run([metrics.ffmpeg_exe(), '-hide_banner', '-loglevel', 'error', '-i', 'rec.mkv', '-i', 'ref.mkv',
                    '-lavfi', f'libvmaf=model=version={metrics.VMAF_MODEL}:log_fmt=json:log_path=direct.json',
                    '-f', 'null', '-'], cwd=tmp_path, check=True)
    frames = json.loads((tmp_path / 'direct.json').read_text())['frames']
    return np.array([f['metrics']['vmaf'] for f in sorted(frames, key=lambda f: f['frameNum'])])


@pytest.mark.parametrize('case', ['blurred', 'identical'])
def test_vmaf_matches_direct_libvmaf_run(carphone, tmp_path, case):
    cv2 = pytest.importorskip('cv2')
    info = metrics.vmaf_check()
    assert info['model'] == 'vmaf_v0.6.1' and info['ffmpeg_version']
    rec = np.stack([cv2.GaussianBlur(f, (0, 0), 1.5) for f in carphone]) if case == 'blurred' else carphone.copy()
    ours, version = metrics.vmaf(carphone, rec)
    direct = direct_libvmaf(tmp_path, carphone, rec)
    assert ours.shape == direct.shape == (6,) and version
    assert np.abs(ours.numpy() - direct).max() < 0.5, (ours, direct)
    if case == 'identical':
        assert ours.mean() > 95  # libvmaf's own ceiling: 100 on most frames
    else:
        assert 10 < ours.mean() < 80  # σ 1.5 px blur on 176x144: clearly visible
