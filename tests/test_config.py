"""tools/config.py: loading, `_base_` inheritance, `--cfg-options` overrides and one-line errors for bad keys."""
import argparse
from pathlib import Path

import pytest

from diffusion.samplers import SAMPLERS
from models.dit import ATTN_BACKENDS, TILE_BLENDS
from models.weights import DTYPES, STAGES
from tools.config import KEYS, TABLE, ConfigError, add_cfg_options, keys_help, load_config, parse_cfg_options
from tools.video.frames import TRANSFORMS

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'


@pytest.fixture(scope='module')
def s1024_path(repo_root):
    return str(repo_root / 'configs' / 's1024.effn-f32.py')


@pytest.fixture(scope='module')
def tiny_path(repo_root):
    return str(repo_root / 'configs' / 'tiny.py')


def _one_line(e):
    msg = str(e.value)
    assert '\n' not in msg, msg
    return msg


def test_released_config(s1024_path):
    cfg = load_config(s1024_path)
    assert cfg.model.depth == 28 and len(cfg.model.attn_strides) == 28
    assert cfg.model.attn_strides[0] == [1, 4] and cfg.model.attn_strides[1] == [4, 1]
    assert cfg.model.attn_strides[8] is None and cfg.model.attn_strides[-1] is None
    assert (cfg.model.input_size, cfg.model.hidden_size, cfg.model.num_heads) == (128, 1152, 16)
    assert cfg.model.pe_interpolation == 2.0
    # values that only the _base_ files define
    assert cfg.model.patch_size == 2 and cfg.model.in_channels == 20 and cfg.model.learn_sigma is True
    assert cfg.diffusion.num_timesteps == 1000 and cfg.sampling.scheduler == 'EulerA'
    assert (cfg.data.num_frames_per_video, cfg.data.time_stride, cfg.data.sample_size) == (8, 4, 1024)
    assert cfg.config_path == s1024_path


def test_tiny_inherits_from_released(tiny_cfg, s1024_path):
    big = load_config(s1024_path)
    assert tiny_cfg.model.depth == 4 and len(tiny_cfg.model.attn_strides) == 4
    assert tiny_cfg.random_init is True and tiny_cfg.sampling.steps == 2
    # not set in tiny.py: inherited unchanged
    for key in ('sr_scale', 'scale_factor', 'init_seed', 'device', 'dtype'):
        assert tiny_cfg[key] == big[key], key
    assert tiny_cfg.sr_scale == 4 and tiny_cfg.scale_factor == pytest.approx(0.13025)
    assert tiny_cfg.model.patch_size == big.model.patch_size and tiny_cfg.model.in_channels == 20
    assert tiny_cfg.sampling.scheduler == big.sampling.scheduler and tiny_cfg.sampling.seed == big.sampling.seed
    assert tiny_cfg.weights.to_dict() == big.weights.to_dict()
    assert tiny_cfg.optimizer.type == big.optimizer.type and tiny_cfg.optimizer.betas == big.optimizer.betas
    # tiny's own training settings: a demo that learns in 60 steps (README "Without weights")
    assert (tiny_cfg.optimizer.lr, tiny_cfg.lr_schedule.warmup_steps, tiny_cfg.train.max_steps) == (5e-4, 20, 60)
    # partially overridden dicts keep the other keys
    assert tiny_cfg.data.sample_size == 64 and tiny_cfg.data.random_flip is True
    assert tiny_cfg.vae.decode_chunk == 4 and tiny_cfg.vae.encode_chunk == big.vae.encode_chunk
    assert tiny_cfg.vae.config.latent_channels == 4 and big.vae.config.to_dict() == {}


def test_overrides_of_every_type(tiny_path):
    cfg = load_config(tiny_path, [
        'train.max_steps=3',                         # int (replacing an int)
        'train.ema_decay=0.999',                     # float (replacing None)
        'model.attn_strides=[[2,2],None,[1,1],None]',  # list with None
        'data.random_flip=false',                    # bool, lower case
        'model.learn_sigma=True',                    # bool, Python spelling
        'sampling.scheduler=DDIM',                   # bare string
        "device='cpu'",                              # quoted string
        'vae.config.layers_per_block=2',             # nested key
        'optimizer.lr=1',                            # int accepted where a float is expected
        'data.cached_latents=None',
    ])
    assert cfg.train.max_steps == 3 and cfg.train.ema_decay == 0.999
    assert cfg.model.attn_strides == [[2, 2], None, [1, 1], None]
    assert cfg.data.random_flip is False and cfg.model.learn_sigma is True
    assert cfg.sampling.scheduler == 'DDIM' and cfg.device == 'cpu'
    assert cfg.vae.config.layers_per_block == 2 and cfg.vae.config.latent_channels == 4  # sibling kept
    assert cfg.optimizer.lr == 1 and cfg.data.cached_latents is None
    assert cfg.train.batch_size == 1  # untouched


def test_override_as_dict_and_empty_dict(tiny_path):
    cfg = load_config(tiny_path, {'train.max_steps': 7, 'sampling.steps': 3})
    assert cfg.train.max_steps == 7 and cfg.sampling.steps == 3 and cfg.train.batch_size == 1
    cfg = load_config(tiny_path, {'train': {'log_every': 5}})  # a nested dict merges into the section
    assert cfg.train.log_every == 5 and cfg.train.max_steps == 60                 # the rest of tiny's train kept
    # `vae.config={}` means "read config.json from weights.vae": it must empty the dict, not merge into it
    assert load_config(tiny_path, ['vae.config={}']).vae.config.to_dict() == {}


@pytest.mark.parametrize('item, value', [
    ('data.video_list=[a.txt,b.txt]', ['a.txt', 'b.txt']),            # the mmcv/mmengine list form
    ("data.video_list=['a.txt','b.txt']", ['a.txt', 'b.txt']),        # quoted items
    ('data.video_list=a.txt,b.txt', ['a.txt', 'b.txt']),              # bare commas
    ('data.video_list=[a.txt]', ['a.txt']),
    ('model.attn_strides=[[1,4],None,[-1,1],(2,2)]', [[1, 4], None, [-1, 1], (2, 2)]),   # nested lists, tuples
    ('train.ema_decay=None', None),
    ('data.random_flip=False', False),
    ('data.random_flip=true', True),
    ('train.max_steps=12', 12),
    ('optimizer.lr=1e-4', 1e-4),
    ('data.transform=resize_crop', 'resize_crop'),
    ('data.eval_video=a=b.mp4', 'a=b.mp4'),                            # split on the first '=' only
])
def test_cfg_options_forms(item, value):
    parser = add_cfg_options(argparse.ArgumentParser())
    parsed = parser.parse_args(['--cfg-options', item]).cfg_options
    key = item.split('=', 1)[0]
    assert parsed == {key: value} and parse_cfg_options([item]) == parsed


def test_cfg_options_on_a_real_config(tiny_path):
    parser = add_cfg_options(argparse.ArgumentParser())
    args = parser.parse_args(['--cfg-options', 'data.video_list=[a.txt,b.txt]', 'optimizer.auto_lr=None',
                              'vae.sample_posterior=False', 'train.load_from=None'])
    cfg = load_config(tiny_path, args.cfg_options)
    assert list(cfg.data.video_list) == ['a.txt', 'b.txt'] and cfg.optimizer.auto_lr is None
    assert cfg.vae.sample_posterior is False and cfg.train.load_from is None
    assert parser.parse_args([]).cfg_options == {}
    with pytest.raises(ConfigError, match=r"'train.max_steps': expected KEY=VALUE"):
        parse_cfg_options(['train.max_steps'])


def test_cfg_options_without_equals_is_a_usage_error(capsys):
    parser = add_cfg_options(argparse.ArgumentParser(prog='x'))
    with pytest.raises(SystemExit) as e:
        parser.parse_args(['--cfg-options', 'train.max_steps'])
    assert e.value.code == 2 and 'expected KEY=VALUE' in capsys.readouterr().err


def test_released_training_recipe(s1024_path):
    cfg = load_config(s1024_path)
    assert cfg.data.transform == 'crop' and cfg.vae.sample_posterior is True
    assert cfg.optimizer.lr == 2e-5 and cfg.optimizer.auto_lr.to_dict() == {'rule': 'sqrt', 'base_batch_size': 256}
    assert cfg.train.load_from == 'pretrained/s1024.effn-f32.pth' and cfg.train.batch_size == 4
    assert cfg.optimizer.type == 'CAME' and cfg.train.grad_clip == 0.01 and cfg.data.random_flip is True
    assert list(cfg.data.video_list) == ['data/train.txt']           # set in the released config itself
    text = open(s1024_path).read()
    assert 'video_list=' in text and 'debug' not in text
    for key in ('debug_nan_steps', 'debug_rank_dump'):               # no test hooks in user configs
        assert key not in cfg.train


@pytest.mark.parametrize('override, needle', [
    ({'data.transform': 'resize'}, 'data.transform'),
    ({'optimizer.auto_lr': {'rule': 'cube', 'base_batch_size': 256}}, 'optimizer.auto_lr'),
    ({'optimizer.auto_lr': {'rule': 'sqrt', 'base_batch_size': 0}}, 'optimizer.auto_lr'),
    ({'random_init': ['dit', 'unet']}, 'random_init'),
])
def test_training_keys_validated(s1024_path, override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(s1024_path, override)
    assert needle in _one_line(e) and s1024_path in str(e.value)


def test_unknown_override_key(tiny_path):
    with pytest.raises(ConfigError) as e:
        load_config(tiny_path, ['train.max_step=3'])
    msg = _one_line(e)
    assert 'train.max_step' in msg and tiny_path in msg


@pytest.mark.parametrize('override, key', [
    ('model.depth=four', 'model.depth'),
    ('model.depth=True', 'model.depth'),      # a bool is not an int here
    ('optimizer.lr=fast', 'optimizer.lr'),
    ('sampling.steps=2.5', 'sampling.steps'),
    ('random_init=1', 'random_init'),
])
def test_override_with_wrong_type(tiny_path, override, key):
    with pytest.raises(ConfigError) as e:
        load_config(tiny_path, [override])
    msg = _one_line(e)
    assert key in msg and tiny_path in msg


def test_wrong_type_in_a_config_file(tmp_path, tiny_path):
    bad = tmp_path / 'bad_type.py'
    bad.write_text(f"_base_ = [{tiny_path!r}]\nmodel = dict(hidden_size='64')\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(bad))
    msg = _one_line(e)
    assert 'model.hidden_size' in msg and str(bad) in msg and 'int' in msg


def test_child_config_inherits_through_absolute_base(tmp_path, tiny_path):
    child = tmp_path / 'child.py'
    child.write_text(f"_base_ = [{tiny_path!r}]\ntrain = dict(max_steps=2)\n")
    cfg = load_config(str(child))
    assert cfg.train.max_steps == 2 and cfg.model.depth == 4 and cfg.sr_scale == 4


@pytest.mark.parametrize('overrides, needle', [
    (['model.depth=5'], 'model.attn_strides has 4 entries but model.depth is 5'),
    (['model.attn_strides=[[1,2],None]'], 'model.attn_strides has 2 entries'),
    (['model.attn_strides=[[0,2],None,None,None]'], 'model.attn_strides[0]'),
    (['model.attn_strides=[[1,2,3],None,None,None]'], 'model.attn_strides[0]'),
    (['model.attn_strides=[1,2,None,None]'], 'model.attn_strides[0]'),      # ints, not pairs
    (['model.attn_strides=[[True,2],None,None,None]'], 'model.attn_strides[0]'),
    (['sampling.scheduler=Euler'], 'sampling.scheduler'),
])
def test_invalid_values(tiny_path, overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(tiny_path, overrides)
    msg = _one_line(e)
    assert needle in msg and tiny_path in msg


def test_attn_strides_none_is_full_attention(tiny_path):
    assert load_config(tiny_path, ['model.attn_strides=None']).model.attn_strides is None


def test_attn_strides_minus_one_is_one_window_per_position(tiny_path):
    from models.dit import VideoDiT
    cfg = load_config(tiny_path, ['model.attn_strides=[[-1,1],[1,-1],None,[-1,-1]]'])
    assert VideoDiT.from_config(cfg.model).windows == [(1, 4, 4), (4, 1, 1), (None, None, None), (1, 1, 1)]
    with pytest.raises(ConfigError, match=r'attn_strides\[0\]'):
        load_config(tiny_path, ['model.attn_strides=[[-2,1],None,None,None]'])


def test_missing_required_key(tmp_path):
    cfg = tmp_path / 'incomplete.py'
    cfg.write_text("model = dict(depth=2)\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(cfg))
    msg = _one_line(e)
    assert str(cfg) in msg and 'missing' in msg


def test_missing_file(tmp_path):
    path = str(tmp_path / 'nope.py')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert path in _one_line(e) and 'not found' in str(e.value)


@pytest.mark.parametrize('text', ["model = dict(depth=\n", "_base_ = ['./does_not_exist.py']\n"])
def test_unparsable_file(tmp_path, text):
    path = tmp_path / 'broken.py'
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert str(path) in _one_line(e)


# ---- the key table: every key the configs use, checked once, choices from their owners -------------------------

@pytest.mark.parametrize('path', sorted(p for p in CONFIGS.rglob('*.py') if '_base_' not in p.parts),
                         ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_file_loads(path):
    assert load_config(str(path)).config_path == str(path)


def _leaves(values, prefix=''):
    for name, value in values.items():
        key = prefix + name
        if key in TABLE:
            yield key, value
        if isinstance(value, dict) and any(k.startswith(key + '.') for k in TABLE):
            yield from _leaves(value, key + '.')


def test_table_defaults_are_the_base_files(tmp_path):
    base = tmp_path / 'bases.py'
    base.write_text(f"_base_ = {[str(p) for p in sorted((CONFIGS / '_base_').glob('*.py'))]!r}\n")
    values = dict(_leaves(load_config(str(base)).to_dict()))
    values.pop('config_path')                                         # set by load_config, not a file
    assert len(TABLE) == len(KEYS)                                    # one entry per key
    assert {k.key: k.default for k in KEYS if k.key in values} == values
    assert sorted(set(TABLE) - set(values)) == ['config_path', 'model.attn_backend']   # set by code / VideoDiT
    assert TABLE['model.attn_backend'].default == 'sdpa'


def test_choices_are_their_owners_constants():
    assert TABLE['sampling.scheduler'].choices is SAMPLERS and TABLE['sampling.tile_blend'].choices is TILE_BLENDS
    assert TABLE['random_init'].choices is STAGES and TABLE['data.transform'].choices is TRANSFORMS
    assert TABLE['model.attn_backend'].choices is ATTN_BACKENDS
    assert TABLE['dtype'].choices == ('auto', *DTYPES)
    assert TABLE['train.mixed_precision'].choices == ('no', 'fp16', 'bf16')


def test_help_lists_every_key_with_its_choices():
    text = ' '.join(add_cfg_options(argparse.ArgumentParser()).format_help().split())
    assert keys_help() in text
    for k in KEYS:
        assert k.key.rpartition('.')[2] in keys_help(), k.key
    assert 'sampling.{scheduler (EulerA|DDIM|DPMS), steps, seed, tile_blend (smooth|overwrite)}' in text
    assert 'train.{batch_size, max_steps,' in text and 'mixed_precision (no|fp16|bf16)' in text


@pytest.mark.parametrize('text, message', [
    ("train = dict(max_stpes=3)\n", "unknown key 'train.max_stpes'; did you mean 'train.max_steps'?"),
    ("trian = dict(max_steps=3)\n", "unknown key 'trian'; did you mean 'train'?"),
    ("model = dict(dpeth=4)\n", "unknown key 'model.dpeth'; did you mean 'model.depth'?"),
    ("sr_scael = 4\n", "unknown key 'sr_scael'; did you mean 'sr_scale'?"),
    ("frobnicate = 1\n", "unknown key 'frobnicate'; the known keys are listed under --cfg-options in --help"),
    ("model = dict(hidden_size='64')\n", "model.hidden_size = '64' (str); use an integer"),
    ("train = 3\n", "train = 3 (int); use a dict of train.* keys"),
])
def test_bad_key_in_a_config_file(tmp_path, tiny_path, text, message):
    bad = tmp_path / 'bad.py'
    bad.write_text(f"_base_ = [{tiny_path!r}]\n{text}")
    with pytest.raises(ConfigError) as e:
        load_config(str(bad))
    assert _one_line(e) == f"{bad}: {message}"


@pytest.mark.parametrize('overrides, message', [
    (['train.max_stpes=3'], "--cfg-options key 'train.max_stpes' is unknown; did you mean 'train.max_steps'?"),
    (['trian.max_steps=3'], "--cfg-options key 'trian.max_steps' is unknown; did you mean 'train.max_steps'?"),
    ({'train': {'lgo_every': 3}}, "--cfg-options key 'train.lgo_every' is unknown; did you mean 'train.log_every'?"),
    (['zzz=1'], "--cfg-options key 'zzz' is unknown; the known keys are listed under --cfg-options in --help"),
    (['train.max_steps=abc'], "train.max_steps = 'abc' (str); use an integer or None"),
    (['train.max_steps=2.5'], "train.max_steps = 2.5 (float); use an integer or None"),
    (['train.batch_size=0'], "train.batch_size = 0; use a value >= 1"),
    (['train.joint_training=1.5'], "train.joint_training = 1.5; use a value in [0, 1]"),
    (['data.random_flip=yes'], "data.random_flip = 'yes' (str); use True or False"),
    (['model.depth=True'], "model.depth = True (bool); use an integer"),
    (['random_init=1'], "random_init = 1 (int); use True, False or a list"),
    (['train.mixed_precision=fp8'], "train.mixed_precision = 'fp8'; use no, fp16 or bf16"),
    (['dtype=fp8'], "dtype = 'fp8'; use auto, fp32, fp16 or bf16"),
    (['sampling.scheduler=Euler'], "sampling.scheduler = 'Euler'; use EulerA, DDIM or DPMS"),
    (['sampling.tile_blend=foo'], "sampling.tile_blend = 'foo'; use smooth or overwrite"),
    (['data.transform=resize'], "data.transform = 'resize'; use crop or resize_crop"),
    (['model.attn_backend=flash'], "model.attn_backend = 'flash'; use sdpa, math or xformers"),
    (['random_init=[dit,unet]'],
     "random_init = ['dit', 'unet']; 'unet' is not one of dit, compressor, previewer or vae"),
    (['optimizer.auto_lr.rule=cube'], "optimizer.auto_lr.rule = 'cube'; use sqrt or linear"),
    (['optimizer.auto_lr.base_batch_size=0'], "optimizer.auto_lr.base_batch_size = 0; use a value >= 1"),
    (['optimizer.auto_lr={}'],
     "required key 'optimizer.auto_lr.rule' is missing; add it (configs/_base_/ sets 'sqrt')"),
    (['optimizer.auto_lr=None', 'optimizer.auto_lr.rule=linear'],
     "--cfg-options optimizer.auto_lr=None and optimizer.auto_lr.rule='linear' contradict each other "
     "(optimizer.auto_lr is then not a dict); give only one of them"),
    (['model.attn_strides=[[1,3],None,None,None]'],
     "model.attn_strides[0]=[1, 3] must be [ts, xs] with ts dividing lats_per_vid=4 and xs dividing the token grid "
     "4 (or -1: one window per frame / token); change the stride"),
    (['model.attn_strides=[[3,1],None,None,None]'], "model.attn_strides[0]=[3, 1] must be [ts, xs] with ts dividing "
     "lats_per_vid=4 and xs dividing the token grid 4 (or -1: one window per frame / token); change the stride"),
    (['model.patch_size=3'], "model.input_size = 8 is not a multiple of model.patch_size = 3; change one of them"),
    (['model.num_heads=0'], "model.num_heads = 0; use a value >= 1"),
])
def test_bad_override_one_line(tiny_path, overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(tiny_path, overrides)
    assert _one_line(e) == f"{tiny_path}: {message}"


def test_required_key_message(tmp_path):
    path = tmp_path / 'incomplete.py'
    path.write_text("model = dict(depth=2)\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert _one_line(e) == f"{path}: required key 'model.input_size' is missing; add it (configs/_base_/ sets 128)"


def test_known_keys_absent_from_the_file_may_be_set(tiny_path, tmp_path):
    cfg = load_config(tiny_path, ['model.attn_backend=math', 'optimizer.auto_lr=None', 'train.grad_clip=None'])
    assert cfg.model.attn_backend == 'math' and cfg.optimizer.auto_lr is None and cfg.train.grad_clip is None
    assert load_config(tiny_path, ['vae.config.anything=1']).vae.config.anything == 1   # vae.config: any arguments
    saved = tmp_path / 'config.py'                                  # a run's saved config (config_path included)
    cfg.dump(str(saved))
    again = load_config(str(saved))
    assert again.config_path == str(saved) and again.model.attn_backend == 'math'


def test_keys_below_a_none_in_the_file_build_that_dict(tmp_path, tiny_path):
    path = tmp_path / 'fixed_lr.py'
    path.write_text(f"_base_ = [{tiny_path!r}]\noptimizer = dict(auto_lr=None)\n")
    assert load_config(str(path)).optimizer.auto_lr is None
    cfg = load_config(str(path), ['optimizer.auto_lr.rule=linear', 'optimizer.auto_lr.base_batch_size=8'])
    assert cfg.optimizer.auto_lr.to_dict() == {'rule': 'linear', 'base_batch_size': 8}
    assert load_config(str(path), {'optimizer.auto_lr': {'rule': 'sqrt', 'base_batch_size': 2}}
                       ).optimizer.auto_lr.base_batch_size == 2
    with pytest.raises(ConfigError) as e:                            # half a dict: the missing key is named
        load_config(str(path), ['optimizer.auto_lr.rule=linear'])
    assert _one_line(e) == (f"{path}: required key 'optimizer.auto_lr.base_batch_size' is missing; add it "
                            f"(configs/_base_/ sets 256)")
