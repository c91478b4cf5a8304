"""Shared pytest fixtures: repository paths, the real clips in ../shared/videos, the tiny config."""
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / 'shared'  # tests/ is in the repo; ../shared sits beside it
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `import tools`, `import models` ... from any working directory


@pytest.fixture(scope='session')
def repo_root():
    """The repository root (absolute Path)."""
    return REPO_ROOT


@pytest.fixture(scope='session')
def shared_dir():
    """../shared beside the repository; skips the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found (test data lives in ../shared beside the repository)")
    return SHARED


@pytest.fixture(scope='session')
def shared_videos(shared_dir):
    """../shared/videos (the real test clips); skips the test when it is absent."""
    videos = shared_dir / 'videos'
    if not videos.is_dir():
        pytest.skip(f"{videos} not found")
    return videos


@pytest.fixture
def one_torch_thread():
    """One CPU thread for the test, restored after it: on a busy 2-core machine two OpenMP threads made
    small-op models (EfficientNet) ~100x slower. Use with pytestmark = pytest.mark.usefixtures(...)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def carphone(shared_videos):
    """Path (str) of ../shared/videos/carphone_pristine.mp4."""
    return str(shared_videos / 'carphone_pristine.mp4')


@pytest.fixture(scope='session')
def small_clips(shared_videos):
    """small_clips(car_frames, bunny_frames) -> [(name, (3, T, H, W) float in [-1, 1], fps)]: the first frames
    of carphone (144x176) and of bigbuckbunny resized to 72x128, named 'carphone' and 'bunny'."""
    import torch

    from tools.video.read import read_video

    def load(car_frames, bunny_frames):
        car, info = read_video(shared_videos / 'carphone_pristine.mp4', num_frames=car_frames)
        bunny, binfo = read_video(shared_videos / 'bigbuckbunny.mp4', num_frames=bunny_frames)
        bunny = torch.nn.functional.interpolate(bunny, size=(72, 128), mode='bilinear', antialias=True)
        return [('carphone', car, info.fps), ('bunny', bunny, binfo.fps)]
    return load


@pytest.fixture
def tiny_cfg(repo_root):
    """A fresh Config from configs/tiny.py (tests may modify it)."""
    from tools.config import load_config
    return load_config(str(repo_root / 'configs' / 'tiny.py'))


@pytest.fixture(scope='session')
def write_lossless():
    """write(path, frames, fps): a video file whose decoded frames equal `frames`, uint8 (T, H, W, 3) of any size.

    A "perfect reconstruction" for eval tests: through VideoWriter(lossless=True) where the writer has it,
    else (today's writer) x264 RGB at crf 0 through PyAV.
    """
    def write(path, frames, fps):
        from tools.video.write import VideoWriter
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with VideoWriter(path, fps, lossless=True) as w:
            w.write(frames)
    return write


@pytest.fixture(scope='session')
def odd_clip(shared_videos, tmp_path_factory):
    """odd.mp4: carphone cropped to 143x175 (h x w, both odd), 20 frames, yuv444p (4:2:0 cannot hold odd sizes)."""
    import subprocess

    import imageio_ffmpeg
    path = tmp_path_factory.mktemp('odd') / 'odd.mp4'
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-v', 'error', '-i', str(shared_videos / 'carphone_pristine.mp4'),
                    '-vf', 'format=yuv444p,crop=175:143:0:0', '-frames:v', '20', '-c:v', 'libx264', str(path)],
                   check=True, timeout=120)
    return path
