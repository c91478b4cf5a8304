"""rFVD (tools/evaluation/fvd.py) against closed forms, its feature path with a TorchScript stand-in for I3D, and
VBench's temporal flickering (tools/evaluation/vbench.py) against its definition on real frames."""
import numpy as np
import pytest
import torch

from tools.evaluation.fvd import (FVDUnavailable, clip_features, feature_statistics, frechet_distance,
                                  load_detector, rfvd, video_clips)
from tools.evaluation.vbench import temporal_flickering


def test_frechet_distance_of_diagonal_gaussians():
    """N(m1, diag(a)) vs N(m2, diag(b)): |m1 - m2|^2 + sum(a + b - 2 sqrt(ab))."""
    m1, m2 = np.array([0., 1., 2.]), np.array([1., 1., 0.])
    a, b = np.array([1., 4., 9.]), np.array([4., 1., 1.])
    want = 1 + 0 + 4 + (1 + 4 - 4) + (4 + 1 - 4) + (9 + 1 - 6)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(want, abs=1e-9)


def test_frechet_distance_of_full_covariances():
    """Commuting covariances S and 4S (same eigenvectors): Tr(S + 4S - 2*2S) = Tr(S); identical -> 0."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    s = q @ np.diag([0.5, 1, 2, 3, 7.]) @ q.T
    mu = rng.normal(size=5)
    assert frechet_distance(mu, s, mu, 4 * s) == pytest.approx(np.trace(s), rel=1e-9)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0, abs=1e-9)


def test_statistics_of_samples_converge_to_the_closed_form():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, size=(200_000, 3))
    y = rng.normal(0, 2, size=(200_000, 3)) + np.array([1, 0, 0])
    got = frechet_distance(*feature_statistics(x), *feature_statistics(y))
    assert got == pytest.approx(1 + 3 * (1 + 4 - 4), rel=0.02)


class StandIn(torch.nn.Module):
    """The I3D call signature with a fixed linear feature: mean colour per channel and its temporal std."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = True) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=2).mean(dim=(2, 3))], dim=1)


@pytest.fixture(scope='module')
def detector(tmp_path_factory):
    path = tmp_path_factory.mktemp('i3d') / 'i3d_torchscript.pt'
    torch.jit.script(StandIn()).save(str(path))
    return load_detector(path)


def test_clips_follow_the_protocol(carphone):
    from tools.video.read import read_frames
    frames, _ = read_frames(carphone, num_frames=40)
    clips = video_clips(frames)
    assert clips.shape == (2, 3, 16, 224, 224)                 # 40 frames: clips at 0 and 16
    assert clips.min() >= -1 and clips.max() <= 1
    assert video_clips(frames[:15]).shape[0] == 0


def test_rfvd_is_zero_for_identical_sets_and_grows_with_distortion(carphone, detector):
    from tools.video.read import read_frames
    frames, _ = read_frames(carphone, num_frames=64)
    refs = [frames[:32], frames[32:]]
    assert rfvd(refs, refs, detector).value == pytest.approx(0, abs=1e-6)
    dark = [(f // 2).astype(np.uint8) for f in refs]
    darker = [(f // 4).astype(np.uint8) for f in refs]
    r1, r2 = rfvd(refs, dark, detector), rfvd(refs, darker, detector)
    assert r1.clips == 4 and 0 < r1.value < r2.value


def test_rfvd_matches_the_features_by_hand(carphone, detector):
    from tools.video.read import read_frames
    frames, _ = read_frames(carphone, num_frames=48)
    a, b = [frames[:32]], [np.flip(frames[16:48], axis=2).copy()]
    fa, fb = clip_features(video_clips(a[0]), detector), clip_features(video_clips(b[0]), detector)
    want = frechet_distance(*feature_statistics(fa), *feature_statistics(fb))
    assert rfvd(a, b, detector).value == pytest.approx(want, rel=1e-12)


def test_too_few_clips_gives_none(carphone, detector):
    from tools.video.read import read_frames
    frames, _ = read_frames(carphone, num_frames=20)
    result = rfvd([frames], [frames], detector)
    assert result.value is None and result.clips == 1


def test_missing_detector_is_one_line(tmp_path):
    with pytest.raises(FVDUnavailable) as e:
        load_detector(tmp_path / 'i3d_torchscript.pt')
    assert 'i3d_torchscript.pt' in str(e.value) and 'StyleGAN-V' in str(e.value) and '\n' not in str(e.value)
    bad = tmp_path / 'bad.pt'
    bad.write_text('<html>not a model</html>')
    with pytest.raises(FVDUnavailable, match='not a TorchScript module'):
        load_detector(bad)


def test_temporal_flickering_by_its_definition(carphone):
    """VBench: mean over frame pairs of mean |I_t+1 - I_t| (0-255), score (255 - mean) / 255."""
    from tools.video.read import read_frames
    frames, _ = read_frames(carphone, num_frames=40)
    maes = [np.abs(frames[i + 1].astype(np.float64) - frames[i]).mean() for i in range(39)]
    want = (255 - np.mean(maes)) / 255
    assert temporal_flickering(frames, chunk=7) == pytest.approx(want, abs=1e-12)
    still = np.repeat(frames[:1], 5, axis=0)
    assert temporal_flickering(still) == 1.0
    assert temporal_flickering(frames[:1]) is None
    alternating = np.stack([np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)] * 2)
    assert temporal_flickering(alternating) == 0.0
