"""tools/video/frames.py: the frame plan's arithmetic, its round trips, the cascadev variant and its JSON form."""
import json

import numpy as np
import pytest
import torch

from tools.video.frames import FramePlan, cascadev_recon_preprocess, pad_to_multiple, plan


def clip(T, H, W, seed=0):
    """Random frames (3, T, H, W) on the uint8 grid of [-1, 1] (x = u/127.5 - 1), as read_video returns them."""
    u8 = torch.randint(0, 256, (3, T, H, W), generator=torch.Generator().manual_seed(seed))
    return u8.float() / 127.5 - 1


@pytest.mark.parametrize('H,W,size,square,crop,resized,pad,model,output', [
    (144, 176, 0, False, None, (144, 176), (8, 8, 8, 8), (160, 192), (144, 176)),      # pad only
    (143, 175, 0, False, None, (143, 175), (8, 9, 8, 9), (160, 192), (143, 175)),      # odd: 17 -> 8 + 9
    (144, 176, 64, False, None, (64, 78), (0, 0, 9, 9), (64, 96), (144, 176)),         # 176·64/144 = 78.2
    (144, 176, 64, True, (0, 16, 144, 144), (64, 64), (0, 0, 0, 0), (64, 64), (144, 144)),
    (143, 175, 0, True, (0, 16, 143, 143), (143, 143), (8, 9, 8, 9), (160, 160), (143, 143)),
    (1280, 720, 1024, False, None, (1820, 1024), (2, 2, 0, 0), (1824, 1024), (1280, 720)),   # portrait
])
def test_default_plan_arithmetic(H, W, size, square, crop, resized, pad, model, output):
    p = plan(H, W, size=size, square=square)
    assert (p.crop, p.resized, p.pad, p.model, p.output) == (crop, resized, pad, model, output)
    assert all(s % 32 == 0 for s in p.model)
    assert p.resized[0] + p.pad[0] + p.pad[1] == p.model[0] and p.resized[1] + p.pad[2] + p.pad[3] == p.model[1]


@pytest.mark.parametrize('H,W,size,square', [(144, 176, 0, False), (143, 175, 0, False), (143, 175, 96, False),
                                             (143, 175, 64, True), (35, 33, 0, True)])
def test_default_round_trip(H, W, size, square):
    x = clip(2, H, W)
    p = plan(H, W, size=size, square=square)
    model = p.to_model(x)
    assert model.shape == (3, 2, *p.model)
    ref = p.reference(x)
    assert ref.shape == (3, 2, *p.output)
    top, left, h, w = p.crop or (0, 0, H, W)
    assert torch.equal(ref, x[..., top:top + h, left:left + w])          # the reference is the source, cropped
    out = p.to_output(model)
    assert out.shape == ref.shape
    if not size:                                                          # padding only: the round trip is exact
        assert torch.equal(out, ref)
    else:                                                                 # resized down and back: close, not equal
        assert 0 < (out - ref).abs().mean() < 0.5
        smooth = p.to_output(pad_to_multiple(torch.zeros(3, 2, *p.resized) + 0.25)[0])
        torch.testing.assert_close(smooth, torch.full_like(ref, 0.25))     # a flat frame comes back flat
    assert pad_to_multiple(torch.zeros(1, 1, *p.resized))[1] == p.pad       # the plan's pad is the function's


def test_batched_frames_follow_the_same_plan():
    x = torch.stack([clip(2, 50, 70, seed=1), clip(2, 50, 70, seed=2)])   # (B, C, T, H, W)
    for p in (plan(50, 70, size=40), plan(50, 70, size=40, preprocess='cascadev', square=True)):
        assert torch.equal(p.to_model(x)[1], p.to_model(x[1]))
        assert torch.equal(p.reference(x)[0], p.reference(x[0]))


@pytest.mark.parametrize('size,square', [(96, False), (96, True), (0, False), (64, True), (40, False)])
def test_cascadev_plan_is_the_original_preprocessing(size, square):
    """reference == to_model == cascadev_recon_preprocess (then the central square with --square), uint8-exact."""
    x = clip(2, 143, 175, seed=3)
    u8 = ((x + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    expected = cascadev_recon_preprocess(u8, size or 143)
    if square:
        s = min(expected.shape[1:3])
        t, l = (expected.shape[1] - s) // 2, (expected.shape[2] - s) // 2
        expected = expected[:, t:t + s, l:l + s]
    p = plan(143, 175, size=size, square=square, preprocess='cascadev')
    assert p.pad == (0, 0, 0, 0) and p.model == p.output == expected.shape[1:3]
    assert all(s % 32 == 0 for s in p.model)
    ref = p.reference(x)
    got = ((ref + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    assert np.array_equal(got, expected)
    assert torch.equal(p.to_model(x), ref) and torch.equal(p.to_output(ref), ref)   # no pad: outputs at the crop


def test_cascadev_plan_numbers():
    p = plan(143, 175, size=96, preprocess='cascadev')          # 143x175 -> 96x117 -> crop 96x96 at left 10
    assert (p.resized, p.crop, p.output) == ((96, 117), (0, 10, 96, 96), (96, 96))
    p = plan(143, 175, size=0, square=True, preprocess='cascadev')   # native: 128x160, then its 128 square
    assert (p.resized, p.crop, p.output) == ((143, 175), (7, 23, 128, 128), (128, 128))


@pytest.mark.parametrize('multiple, pad, model', [(32, (8, 9, 8, 9), (160, 192)), (16, (0, 1, 0, 1), (144, 176)),
                                                  (8, (0, 1, 0, 1), (144, 176)), (1, (0, 0, 0, 0), (143, 175))])
def test_model_frames_are_padded_to_the_models_multiple_and_back(multiple, pad, model):
    """Another autoencoder's spatial factor: 143x175 padded to 144x176 for 8 and 16, not to 160x192; the
    output is the source exactly (the pad is replicated rows and columns, removed again)."""
    p = plan(143, 175, multiple=multiple)
    assert (p.pad, p.model, p.output) == (pad, model, (143, 175))
    x = torch.rand(3, 2, 143, 175) * 2 - 1
    m = p.to_model(x)
    assert tuple(m.shape[-2:]) == model and torch.equal(p.to_output(m), x)
    c = plan(143, 175, multiple=multiple, preprocess='cascadev')                       # its crop is to 32 anyway
    assert (c.crop, c.model, c.output) == ((7, 7, 128, 160), (128, 160), (128, 160))
    with pytest.raises(ValueError, match='multiple 12; need a divisor of 32'):
        plan(143, 175, multiple=12)


def test_json_round_trip_keeps_every_field():
    for p in (plan(143, 175, size=64, square=True, start=3, stride=2, num_frames=8),
              plan(143, 175, size=96, preprocess='cascadev', num_frames=5), plan(32, 32), plan(143, 175, multiple=8)):
        d = json.loads(json.dumps(p.to_dict()))
        assert FramePlan.from_dict(d) == p and d['source'] == [p.source[0], p.source[1]]
    assert set(plan(8, 8).to_dict()) == {'source', 'size', 'square', 'preprocess', 'start', 'stride', 'num_frames',
                                         'upscale', 'multiple', 'crop', 'resized', 'pad', 'model', 'output'}
    older = {k: v for k, v in plan(143, 175).to_dict().items() if k != 'multiple'}   # records made before it
    assert FramePlan.from_dict(older) == plan(143, 175)
    with pytest.raises(ValueError, match=r"unknown keys \['geometry'\]"):
        FramePlan.from_dict({**plan(8, 8).to_dict(), 'geometry': 1})


def test_bad_plans_and_frames_are_one_line_errors():
    with pytest.raises(ValueError, match="preprocess='x'; use one of default, cascadev"):
        plan(64, 64, preprocess='x')
    with pytest.raises(ValueError, match='below 32 pixels on a side; use a --size of at least 32'):
        plan(64, 64, size=16, preprocess='cascadev')
    with pytest.raises(ValueError, match='stride 0'):
        plan(64, 64, stride=0)
    p = plan(64, 80)
    with pytest.raises(ValueError, match='frames are 64x96 but the plan is for 64x80 sources'):
        p.to_model(clip(1, 64, 96))
    with pytest.raises(ValueError, match="model size is \\(64, 96\\)"):
        p.to_output(clip(1, 64, 80))
