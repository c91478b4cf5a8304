"""Other video autoencoders (models/autoencoders.py): tiny random diffusers instances saved with save_pretrained,
loaded back through the registry; T frames in, T frames out, the compression read off the model."""
import json

import pytest
import torch

from models.autoencoders import AUTOENCODERS, frames_for, load_autoencoder, pad_frames
from models.weights import MissingWeightsError, WeightsFormatError

# Tiny instances: (registry name, diffusers class keywords, expected compression)
TINY = {
    'sd': (dict(block_out_channels=(8, 8), down_block_types=('DownEncoderBlock2D',) * 2,
                up_block_types=('UpDecoderBlock2D',) * 2, latent_channels=4, norm_num_groups=4,
                layers_per_block=1), '1×2×2, 4 ch'),
    'svd': (dict(block_out_channels=(32,) * 4, down_block_types=('DownEncoderBlock2D',) * 4, latent_channels=4,
                 layers_per_block=1), '1×8×8, 4 ch'),
    'cogvideox': (dict(block_out_channels=(8,) * 4, latent_channels=4, layers_per_block=1, norm_num_groups=4),
                  '4×8×8, 4 ch'),
    'hunyuanvideo': (dict(block_out_channels=(8,) * 4, latent_channels=4, layers_per_block=1, norm_num_groups=4),
                     '4×8×8, 4 ch'),
    'ltx-video': (dict(block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4, latent_channels=8,
                       layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 5), '8×32×32, 8 ch'),
    'wan2.1': (dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, latents_mean=[0.1] * 4,
                    latents_std=[2.0] * 4), '4×8×8, 4 ch'),
    'cosmos': (dict(encoder_block_out_channels=(8,) * 4, decode_block_out_channels=(8,) * 4, latent_channels=4,
                    num_layers=1, attention_resolutions=(), resolution=64, latents_mean=None, latents_std=None),
               '8×8×8, 4 ch'),
    'easyanimate': (dict(block_out_channels=(8,) * 4, latent_channels=4, layers_per_block=1, norm_num_groups=4),
                    '4×8×8, 4 ch'),
}


def save_tiny(name, folder):
    """A seeded random instance of the registry entry's diffusers class, saved as a diffusers folder."""
    import diffusers
    torch.manual_seed(0)
    kw, _ = TINY[name]
    getattr(diffusers, AUTOENCODERS[name].cls)(**kw).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope='module')
def tiny_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp('autoencoders')
    return {name: save_tiny(name, root / name) for name in TINY}


def test_every_registry_entry_has_a_tiny_instance():
    assert set(TINY) == set(AUTOENCODERS)


@pytest.mark.parametrize('t, f, want', [(1, 4, 1), (5, 4, 5), (6, 4, 9), (10, 4, 13), (17, 8, 17), (10, 8, 17),
                                        (7, 1, 7)])
def test_frame_count_rule(t, f, want):
    assert frames_for(t, f) == want


def test_pad_repeats_the_last_frame():
    v = torch.arange(3.).view(1, 1, 3, 1, 1)
    assert pad_frames(v, 5).flatten().tolist() == [0, 1, 2, 2, 2]


@pytest.mark.parametrize('name', sorted(TINY))
@pytest.mark.parametrize('frames', [1, 6, 10])
def test_t_frames_in_t_frames_out(name, frames, tiny_folders, one_torch_thread):
    ae = load_autoencoder(name, tiny_folders[name])
    assert ae.compression == TINY[name][1]
    s = ae.spatial_factor
    unit = max(s, 16)                                 # sizes the model's spatial factor divides, 2:3
    video = torch.rand(1, 3, frames, 2 * unit, 3 * unit) * 2 - 1
    z = ae.encode(video)
    assert z.shape[1] == ae.channels
    assert z.shape[2] == (frames if ae.time_factor == 1 else (frames_for(frames, ae.time_factor) - 1)
                          // ae.time_factor + 1)
    assert z.shape[-2:] == (video.shape[-2] // s, video.shape[-1] // s)
    out = ae.decode(z, frames)
    assert out.shape == video.shape and out.dtype == torch.float32
    assert out.abs().max() <= 1


def test_latent_statistics_are_applied(tiny_folders):
    """Wan normalises with its per-channel mean and std: the scaled latent is (z - 0.1) / 2."""
    ae = load_autoencoder('wan2.1', tiny_folders['wan2.1'])
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    raw = ae.model.encode(video).latent_dist.mode()
    assert torch.allclose(ae.encode(video), (raw - 0.1) / 2.0, atol=1e-6)


def test_encoding_is_deterministic(tiny_folders):
    ae = load_autoencoder('cogvideox', tiny_folders['cogvideox'])
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    assert torch.equal(ae.encode(video), ae.encode(video))


def test_size_not_a_multiple_is_refused(tiny_folders):
    ae = load_autoencoder('hunyuanvideo', tiny_folders['hunyuanvideo'])
    with pytest.raises(ValueError, match='multiples of 8'):
        ae.encode(torch.zeros(1, 3, 5, 20, 16))


def test_missing_folder_names_it_and_the_source(tmp_path):
    with pytest.raises(MissingWeightsError) as e:
        load_autoencoder('wan2.1', tmp_path / 'nothing')
    msg = str(e.value)
    assert 'nothing' in msg and 'Wan-AI/Wan2.1-T2V-1.3B-Diffusers' in msg and '\n' not in msg


def test_pipeline_folder_with_vae_subfolder(tiny_folders, tmp_path):
    import shutil
    shutil.copytree(tiny_folders['easyanimate'], tmp_path / 'pipe' / 'vae')
    assert load_autoencoder('easyanimate', tmp_path / 'pipe').compression == '4×8×8, 4 ch'


def test_wrong_class_is_refused(tiny_folders):
    with pytest.raises(WeightsFormatError, match='AutoencoderKLCogVideoX'):
        load_autoencoder('hunyuanvideo', tiny_folders['cogvideox'])
    cfg = json.loads((tiny_folders['cogvideox'] / 'config.json').read_text())
    assert cfg['_class_name'] == 'AutoencoderKLCogVideoX'


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match='cascadev, svd, sd, cogvideox'):
        load_autoencoder('magic', '.')
