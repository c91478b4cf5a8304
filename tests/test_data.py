"""Training data (tools/training/data.py): video lists, clips from the real test videos, bad files, resumable batches."""
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tools.training.data import (BadSamples, ClipSampler, DataError, VideoClips, build_dataset, build_loader,
    collect_videos, derive_seed, frames_to_clip, load_clip, random_clip, read_frames)
from tools.video.lists import VideoListError, read_video_list

GOLDEN_PREPROCESS = Path(os.environ.get('GOLDEN_PREPROCESS_FILE', Path(__file__).resolve().parents[2] / 'shared'
                                        / 'golden' / 'golden_preprocess_a.safetensors'))


@pytest.fixture
def videos(shared_videos):
    return {name: str(shared_videos / f'{name}.mp4') for name in ('carphone_pristine', 'demo', 'side_by_side_3')}


@pytest.fixture
def cfg(tiny_cfg):
    tiny_cfg.data.num_workers = 0
    return tiny_cfg


def test_txt_json_and_folder_lists(tmp_path, videos, shared_videos):
    sub = tmp_path / 'lists'
    sub.mkdir()
    (sub / 'train.txt').write_text(f"# comment\n../v/a.mp4\n\n{videos['demo']}\n")
    (sub / 'paths.json').write_text(json.dumps(['b.mp4', videos['carphone_pristine']]))
    (sub / 'objs.json').write_text(json.dumps([{'path': 'c.mp4', 'caption': 'x'}]))
    assert read_video_list(sub / 'train.txt') == [str(sub / '../v/a.mp4'), videos['demo']]
    assert read_video_list(sub / 'paths.json') == [str(sub / 'b.mp4'), videos['carphone_pristine']]
    assert read_video_list(sub / 'objs.json') == [str(sub / 'c.mp4')]
    folder = read_video_list(shared_videos)
    assert videos['carphone_pristine'] in folder and all(p.endswith('.mp4') for p in folder)
    both = collect_videos([str(sub / 'objs.json'), videos['demo']])
    assert both == [str(sub / 'c.mp4'), videos['demo']]


@pytest.mark.parametrize('content, name, words', [
    ('{"path": "a.mp4"}', 'l.json', ['top level is a dict']),
    ('[1, 2]', 'l.json', ['entry 0']),
    ('[oops', 'l.json', ['not valid JSON']),
    ('a.mp4', 'l.csv', ["extension '.csv'"]),
])
def test_bad_lists_give_one_line(tmp_path, content, name, words):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(VideoListError) as e:
        read_video_list(path)
    msg = str(e.value)
    assert '\n' not in msg and str(path) in msg and all(w in msg for w in words)
    with pytest.raises(DataError) as e:                        # training reports the same line
        collect_videos([str(path)])
    assert str(e.value) == msg


def test_missing_and_empty_lists(tmp_path):
    with pytest.raises(DataError, match='does not exist'):
        collect_videos([str(tmp_path / 'nope.txt')])
    with pytest.raises(DataError, match='data.video_list is empty'):
        collect_videos([])


def test_clip_shape_range_and_seeding(cfg, videos):
    ds = VideoClips([videos['carphone_pristine']], cfg.data)
    a, b = ds[(0, 123)], ds[(0, 123)]
    S, T = cfg.data.sample_size, cfg.data.num_frames_per_video
    assert a['video'].shape == (3, T, S, S) and a['video'].dtype == torch.float32
    assert a['video'].min() >= -1 and a['video'].max() <= 1 and a['video'].std() > 0.05
    assert torch.equal(a['video'], b['video']) and a['bad'] == []
    others = [ds[(0, s)]['video'] for s in range(1, 6)]
    assert any(not torch.equal(a['video'], o) for o in others)   # starts / flips vary with the seed


def _to_unit(frames):
    """RGB uint8 (T, H, W, 3) -> (3, T, H, W) with the original's mapping (x/255 − 0.5)/0.5."""
    return ((torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 255) - 0.5) / 0.5


def test_training_transform_matches_the_original_golden_cases():
    """data.transform='crop' (+ flip, + the [-1, 1] mapping) against every training case of the golden file,
    rebuilt from its metadata alone."""
    if not GOLDEN_PREPROCESS.is_file():
        pytest.skip(f'{GOLDEN_PREPROCESS} not found (set GOLDEN_PREPROCESS_FILE or put ../shared beside the repo)')
    from safetensors import safe_open
    with safe_open(str(GOLDEN_PREPROCESS), 'np') as f:
        cases = [c for c in json.loads(f.metadata()['meta'])['cases'] if c['path'] == 'train']
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert cases
    for case in cases:
        src, want = tensors[case['src']], _to_unit(tensors[case['key']])
        for flip in (False, True):
            got = frames_to_clip(src, case['resolution'], 'crop', flip=flip)
            assert got.shape == (3, *case['shape'][:3]) and got.dtype == torch.float32
            assert torch.equal(got, want.flip(-1) if flip else want), (case['key'], flip)
        assert got.min() >= -1 and got.max() <= 1


def test_crop_is_native_scale_and_pads_with_black(cfg, videos):
    path = videos['carphone_pristine']                                  # 176 x 144
    frames = read_frames(path, 4, cfg.data.time_stride, 3)
    clip = load_clip(path, cfg.data, 3, False)                          # sample_size 64, transform 'crop'
    assert torch.equal(clip, _to_unit(frames[:, 40:104, 56:120]))      # centred window, no resize
    assert torch.equal(load_clip(path, cfg.data, 3, True), clip.flip(-1))   # the whole clip mirrored
    cfg.data.sample_size = 160                                          # wider than the 144 rows: zero pad
    big = load_clip(path, cfg.data, 3, False)
    assert big.shape == (3, 4, 160, 160)
    assert (big[:, :, :8] == -1).all() and (big[:, :, -8:] == -1).all()        # (160 − 144) / 2 black rows
    assert torch.equal(big[:, :, 8:152], _to_unit(frames[:, :, 8:168]))
    cfg.data.update(sample_size=64, transform='resize_crop')            # short side 144 -> 64 first
    small = load_clip(path, cfg.data, 3, False)
    assert small.shape == clip.shape and (small - clip).abs().mean() > 0.05
    cfg.data.transform = 'zoom'
    with pytest.raises(DataError, match='data.transform'):
        load_clip(path, cfg.data, 3, False)


def test_clip_start_is_uniform_over_the_originals_range(cfg, tmp_path):
    """Starts cover [0, N − stride·frames] inclusive (RECIPE.md §12): frame k of the test video has grey k·20."""
    import av
    path = tmp_path / 'ramp.mp4'
    with av.open(str(path), 'w') as out:
        stream = out.add_stream('libx264', rate=8, options={'crf': '0'})
        stream.width = stream.height = 32
        stream.pix_fmt = 'yuv444p'
        for k in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), k * 20, np.uint8), format='rgb24')
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    cfg.data.update(sample_size=16, random_flip=False)                  # 4 frames at stride 2 need 8 of 10
    starts = set()
    for seed in range(40):
        clip, start, _ = random_clip(str(path), cfg.data, seed)
        grey = ((clip.mean(dim=(0, 2, 3)) * 0.5 + 0.5) * 255 / 20).round().int().tolist()
        assert grey == [start, start + 2, start + 4, start + 6]
        starts.add(start)
    assert starts == {0, 1, 2}
    cfg.data.time_stride = 3                                            # needs 12 > 10: too short
    with pytest.raises(Exception, match='too short'):
        random_clip(str(path), cfg.data, 0)


def test_bad_files_are_replaced_and_logged_once(cfg, videos, tmp_path, caplog):
    text = tmp_path / 'notes.mp4'
    text.write_text('not a video')
    empty = tmp_path / 'empty.mp4'
    empty.write_bytes(b'')
    cfg.data.time_stride = 3  # side_by_side_3 has 8 frames; 4 frames at stride 3 need 12: too short
    ds = VideoClips([videos['carphone_pristine'], str(text), str(empty), videos['side_by_side_3']], cfg.data)
    bad = BadSamples(total=4, max_fraction=0.9)
    for seed in range(3):
        for index in (1, 2, 3):
            item = ds[(index, seed)]
            assert item['path'] == videos['carphone_pristine'] and item['video'].shape[1] == 4
            assert item['bad'] and all(p != videos['carphone_pristine'] for p, _ in item['bad'])
            with caplog.at_level(logging.WARNING, logger='cascadev.data'):
                bad.add(item['bad'])
    reasons = dict(bad.seen)
    assert set(reasons) == {str(text), str(empty), videos['side_by_side_3']}
    assert 'too short' in reasons[videos['side_by_side_3']] and 'empty' in reasons[str(empty)]
    logged = [r.message for r in caplog.records if 'skipping bad video' in r.message]
    assert len(logged) == 3  # once per file, however often it was drawn


def test_too_many_bad_files_stop_with_the_list(tmp_path):
    report = tmp_path / 'bad_videos.txt'
    bad = BadSamples(total=10, max_fraction=0.2, report_path=report)
    bad.add([('a.mp4', 'empty'), ('b.mp4', 'empty')])  # 2 of 10 = 0.2: still allowed
    with pytest.raises(DataError) as e:
        bad.add([('c.mp4', 'truncated')])
    msg = str(e.value)
    assert '\n' not in msg and '3 of 10' in msg and 'a.mp4, b.mp4, c.mp4' in msg and str(report) in msg
    assert report.read_text().splitlines() == ['a.mp4\tempty', 'b.mp4\tempty', 'c.mp4\ttruncated']


def test_missing_files_count_as_bad(cfg, videos, tmp_path):
    (tmp_path / 'list.txt').write_text(f"{videos['carphone_pristine']}\ngone1.mp4\ngone2.mp4\n")
    cfg.data.video_list = [str(tmp_path / 'list.txt')]
    dataset, missing, total, held_out = build_dataset(cfg)
    assert dataset.paths == [videos['carphone_pristine']] and total == 3 and held_out is None
    assert [p for p, _ in missing] == [str(tmp_path / 'gone1.mp4'), str(tmp_path / 'gone2.mp4')]
    with pytest.raises(DataError, match='2 of 3 videos'):
        BadSamples(total, cfg.data.max_bad_fraction).add(missing)
    (tmp_path / 'list.txt').write_text("gone1.mp4\n")
    with pytest.raises(DataError, match='none of the 1 listed videos exists'):
        build_dataset(cfg)


def test_hold_out_last(cfg, videos):
    cfg.data.video_list = [videos['carphone_pristine'], videos['demo']]
    dataset, _, total, held_out = build_dataset(cfg, hold_out_last=True)
    assert held_out == videos['demo'] and dataset.paths == [videos['carphone_pristine']] and total == 2


def test_sampler_is_a_pure_function_of_seed_epoch_and_position():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]
    full = take(ClipSampler(10, 2, seed=3), 12)            # 5 batches per epoch: 2 epochs and a bit
    assert take(ClipSampler(10, 2, seed=3, start=7), 5) == full[7:]
    epoch0 = sorted(i for b in full[:5] for i, _ in b)
    assert epoch0 == list(range(10))                         # every item once per epoch
    assert [i for b in full[:5] for i, _ in b] != [i for b in full[5:10] for i, _ in b]
    assert full != take(ClipSampler(10, 2, seed=4), 12)
    # two ranks split each global batch; together they see what one rank with the global batch sees
    r0, r1 = take(ClipSampler(10, 2, seed=3, rank=0, world_size=2), 4), \
        take(ClipSampler(10, 2, seed=3, rank=1, world_size=2), 4)
    single = take(ClipSampler(10, 4, seed=3), 4)
    assert [a + b for a, b in zip(r0, r1)] == single
    # a list shorter than one global batch is tiled: one batch per epoch
    tiny = take(ClipSampler(1, 3, seed=0), 2)
    assert [i for i, _ in tiny[0]] == [0, 0, 0] and len({s for _, s in tiny[0]}) == 3


def test_loader_workers_give_the_same_batches(cfg, videos):
    cfg.data.video_list = [videos['carphone_pristine']]
    cfg.train.batch_size = 2
    dataset, *_ = build_dataset(cfg)
    batches = {}
    for workers in (0, 1):
        cfg.data.num_workers = workers
        loader, _ = build_loader(dataset, cfg, start=3)
        it = iter(loader)
        batches[workers] = [next(it) for _ in range(2)]
        del it
    for a, b in zip(batches[0], batches[1]):
        assert torch.equal(a['video'], b['video']) and a['path'] == b['path']


def test_derive_seed_is_stable():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    assert 0 <= derive_seed(2 ** 70, -1) < 2 ** 63
