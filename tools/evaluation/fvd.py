"""rFVD: the Fréchet distance between I3D features of reference and reconstructed clips (Unterthiner et al. 2018,
"Towards Accurate Generative Models of Video"), as TokenBench, WF-VAE and Reducio report it.

    detector = load_detector('pretrained/i3d_torchscript.pt', device)   # FVDUnavailable (one line) if missing
    result = rfvd(ref_videos, rec_videos, detector)                       # -> FVDResult(value, clips, protocol)
    sets = FeatureSets(detector)                                          # the same, gathered pair by pair

Protocol (PROTOCOL, printed in the summary): each video is cut into clips of 16 consecutive frames with stride 16
(non-overlapping; a video shorter than 16 frames gives no clip), each frame resized with its short side to 224
(bilinear, antialiased) and centre-cropped to 224×224, scaled to [-1, 1] and fed as (N, 3, 16, 224, 224) to the
StyleGAN-V TorchScript I3D detector (`detector(x, rescale=False, resize=False, return_features=True)`, 400-d
logits-layer features; the file TokenBench and StyleGAN-V use). The distance is computed in float64 with
scipy's matrix square root: ||μ₁ − μ₂||² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½). It is a distribution metric: with few
clips (below the feature dimension) the covariances are rank-deficient and the value is biased upwards, so
compare runs only at equal clip counts (the summary says how many).
"""
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

DETECTOR_FILE = 'pretrained/i3d_torchscript.pt'
DETECTOR_SOURCE = ('https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt (StyleGAN-V\'s I3D, as '
                   'TokenBench uses)')
PROTOCOL = dict(clip_frames=16, clip_stride=16, size=224, resize='short side to 224, centre crop',
                detector='StyleGAN-V I3D TorchScript, features')


class FVDUnavailable(RuntimeError):
    """rFVD cannot be computed (no detector file); the message is one line naming the file and its source."""


class FVDResult(NamedTuple):
    """value: the Fréchet distance (float; None when a side has fewer than 2 clips); clips: clips per side;
    protocol: PROTOCOL."""
    value: float | None
    clips: int
    protocol: dict


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64: ||mu1 − mu2||² + Tr(sigma1 + sigma2 −
    2 sqrtm(sigma1 sigma2)); the imaginary part sqrtm leaves from rounding is dropped. -> float >= 0 (up to
    rounding)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    with warnings.catch_warnings():                      # few samples: singular covariances, handled below
        warnings.simplefilter('ignore', linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():                   # singular product: regularise as the reference FID code does
        eps = np.eye(len(mu1)) * 1e-6
        covmean = linalg.sqrtm((sigma1 + eps) @ (sigma2 + eps))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def feature_statistics(features):
    """(N, D) features -> (mean (D,), covariance (D, D)), float64, the unbiased covariance (N − 1)."""
    f = np.asarray(features, np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def load_detector(path=DETECTOR_FILE, device='cpu'):
    """The TorchScript I3D detector at `path` on `device` (eval mode). FVDUnavailable (one line) when the file is
    missing or is not a TorchScript module."""
    path = Path(path)
    if not path.is_file():
        raise FVDUnavailable(f'{path}: not found, so rFVD is n/a; download {DETECTOR_SOURCE} to {path} '
                             f'(or pass --fvd-detector PATH)')
    try:
        with warnings.catch_warnings():                  # TorchScript is the detector's only published format
            warnings.simplefilter('ignore', FutureWarning)
            return torch.jit.load(str(path), map_location=device).eval()
    except Exception as e:                               # a truncated download, an HTML page saved under that name
        raise FVDUnavailable(f'{path}: not a TorchScript module ({type(e).__name__}), so rFVD is n/a; '
                             f'download it again from {DETECTOR_SOURCE}') from None


def video_clips(frames, clip_frames=16, stride=16, size=224):
    """uint8 (T, H, W, 3) frames -> float32 (N, 3, clip_frames, size, size) clips in [-1, 1] (N may be 0)."""
    t = frames.shape[0]
    starts = range(0, t - clip_frames + 1, stride)
    if not len(starts):
        return torch.empty(0, 3, clip_frames, size, size)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1   # (T, 3, H, W)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode='bilinear', antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top:top + size, left:left + size].clamp(-1, 1)
    return torch.stack([x[s:s + clip_frames].transpose(0, 1) for s in starts])


@torch.no_grad()
def clip_features(clips, detector, batch=8):
    """(N, 3, T, 224, 224) clips -> (N, D) float64 numpy features from the detector, `batch` clips per call."""
    device = next(iter(detector.parameters()), torch.empty(0)).device
    out = [detector(c.to(device), rescale=False, resize=False, return_features=True).double().cpu()
           for c in clips.split(batch)]
    return torch.cat(out).numpy() if out else np.empty((0, 0))


def video_features(frames, detector, batch=8):
    """uint8 (T, H, W, 3) frames -> (N, D) float64 features of its PROTOCOL clips (N = 0 for T < clip_frames),
    `batch` clips turned into float at a time (memory ~ batch clips, whatever T)."""
    length, stride = PROTOCOL['clip_frames'], PROTOCOL['clip_stride']
    starts = list(range(0, len(frames) - length + 1, stride))
    out = []
    for i in range(0, len(starts), batch):
        group = starts[i:i + batch]
        clips = video_clips(frames[group[0]:group[-1] + length], length, stride, PROTOCOL['size'])
        out.append(clip_features(clips, detector, batch))
    return np.concatenate(out) if out else np.empty((0, 0))


def _stack(features):
    """A list of (N_i, D) arrays -> one (sum N_i, D) array; (0, 0) when all are empty."""
    present = [f for f in features if len(f)]
    return np.concatenate(present) if present else np.empty((0, 0))


def features_distance(reference_features, reconstruction_features):
    """rFVD of two lists of (N_i, D) clip features -> FVDResult (value None when either side has fewer than 2
    clips; clips: the smaller side's count)."""
    feats = [_stack(reference_features), _stack(reconstruction_features)]
    n = min(len(f) for f in feats)
    if n < 2:
        return FVDResult(None, n, PROTOCOL)
    return FVDResult(frechet_distance(*feature_statistics(feats[0]), *feature_statistics(feats[1])), n, PROTOCOL)


def rfvd(references, reconstructions, detector, batch=8):
    """rFVD between two lists of uint8 (T, H, W, 3) videos (paired or not: the metric compares distributions)
    through PROTOCOL's clips -> FVDResult (value None when either side has fewer than 2 clips)."""
    return features_distance(*([video_features(v, detector, batch) for v in videos]
                               for videos in (references, reconstructions)))


class FeatureSets:
    """rFVD gathered pair by pair: per method, the clip features of the references it was compared with and of
    its reconstructions (a reference's features are computed once per key), and the videos too short for a clip.

        sets = FeatureSets(detector)
        sets.add('refined', 'v1', ref_u8, rec_u8, key='v1')     # per pair
        result, short = sets.result('refined')                   # FVDResult, [names of videos under 16 frames]
    """

    def __init__(self, detector, batch=8):
        self.detector, self.batch = detector, batch
        self.methods = {}                                 # method -> {'ref': [...], 'rec': [...], 'short': [...]}
        self._refs = {}                                   # key -> reference features

    def add(self, method, name, ref_frames, rec_frames, key=None):
        """One pair's clips, uint8 (T, H, W, 3) each (compared over the same T); key: what identifies the
        reference frames (None: computed again)."""
        entry = self.methods.setdefault(method, {'ref': [], 'rec': [], 'short': []})
        if len(rec_frames) < PROTOCOL['clip_frames']:
            entry['short'].append(name)
            return
        if key is None:
            ref = video_features(ref_frames, self.detector, self.batch)
        else:
            if key not in self._refs:
                self._refs[key] = video_features(ref_frames, self.detector, self.batch)
            ref = self._refs[key]
        entry['ref'].append(ref)
        entry['rec'].append(video_features(rec_frames, self.detector, self.batch))

    def result(self, method):
        """(FVDResult, names of its videos shorter than a clip) of one method."""
        entry = self.methods.get(method, {'ref': [], 'rec': [], 'short': []})
        return features_distance(entry['ref'], entry['rec']), entry['short']
