"""Metrics against known values: identical clips, σ=0.05 noise on real frames, scikit-image, LPIPS loading."""
import math

import numpy as np
import pytest
import torch

from tools import metrics
from tools.video_io import read_video, to_uint8


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
