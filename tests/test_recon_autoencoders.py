"""recon.py --autoencoder: other video autoencoders (tiny random diffusers folders) through recon's frame plan,
files, done.json and resume, on a real clip of odd size with awkward lengths: T frames and size in = out."""
import contextlib
import io
import json
import shutil

import pytest

import recon
from tests.test_autoencoders import TINY, save_tiny
from tools.video.read import probe_video, read_frames

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = recon.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp('ae_weights')
    return {name: save_tiny(name, root / name) for name in TINY if name != 'svd'}


@pytest.fixture(scope='module')
def tiny(repo_root):
    return ['--config', repo_root / 'configs' / 'tiny.py', '--device', 'cpu', '--size', '0']


# (autoencoder, frames): every class, and lengths that are and are not of the form 4k+1 / 8k+1
CASES = [('wan2.1', 1), ('cogvideox', 6), ('ltx-video', 10), ('sd', 17), ('easyanimate', 6),
         ('hunyuanvideo', 10), ('cosmos', 17), ('svd', 6)]


@pytest.mark.parametrize('name, frames', CASES)
def test_t_frames_and_size_in_equal_out(name, frames, folders, tiny, odd_clip, tmp_path):
    weights = [] if name == 'svd' else ['--autoencoder-weights', folders[name]]
    code, out, err = run([*tiny, '--input', odd_clip, '--num-frames', frames, '--output', tmp_path,
                          '--autoencoder', name, *weights])
    assert code == 0, err
    folder = tmp_path / 'odd'
    info = probe_video(folder / 'rec.mp4')
    assert (info.num_frames, info.height, info.width) == (frames, 143, 175)
    done = json.loads((folder / 'done.json').read_text())
    assert done['frames'] == frames and (done['height'], done['width']) == (143, 175)
    assert done['files'] == ['latent.safetensors', 'rec.mp4', 'cmp.mp4', 'cmp.png']
    assert done['autoencoder']['name'] == name and done['settings']['autoencoder'] == name
    assert done['autoencoder']['compression'] == TINY[name][1]
    factor = int(TINY[name][1].split('×')[1])              # model frames padded to its spatial factor, not 32
    assert done['plan']['multiple'] == factor and done['plan']['model'] == [-(-143 // factor) * factor,
                                                                            -(-175 // factor) * factor]
    assert set(done['metrics']) == {'reconstruction'}
    assert 'scheduler' not in done                                   # no sampler ran
    rec, _ = read_frames(folder / 'rec.mp4')
    cmp_info = probe_video(folder / 'cmp.mp4')
    assert cmp_info.num_frames == frames and rec.shape == (frames, 143, 175, 3)


def test_rerun_skips_and_another_autoencoder_redoes(folders, tiny, carphone, tmp_path):
    argv = [*tiny, '--input', carphone, '--num-frames', 5, '--output', tmp_path]
    assert run([*argv, '--autoencoder', 'wan2.1', '--autoencoder-weights', folders['wan2.1']])[0] == 0
    code, out, _ = run([*argv, '--autoencoder', 'wan2.1', '--autoencoder-weights', folders['wan2.1']])
    assert code == 0 and 'complete' in out and 'skipped' in out
    code, out, _ = run([*argv, '--autoencoder', 'cogvideox', '--autoencoder-weights', folders['cogvideox']])
    assert code == 0 and 'autoencoder wan2.1 -> cogvideox' in out
    done = json.loads((tmp_path / 'carphone_pristine' / 'done.json').read_text())
    assert done['autoencoder']['class'] == 'AutoencoderKLCogVideoX'
    code, out, _ = run(argv)                                       # back to CascadeV: redone, not skipped
    assert code == 0 and 'autoencoder cogvideox -> cascadev' in out and 'skipped' not in out, out
    done = json.loads((tmp_path / 'carphone_pristine' / 'done.json').read_text())
    assert 'autoencoder' not in done and 'preview.mp4' in done['files']


def test_cascadev_done_json_has_no_autoencoder_keys(tiny, carphone, tmp_path):
    """A CascadeV run records what it did before --autoencoder existed: no new settings keys."""
    assert run([*tiny, '--input', carphone, '--num-frames', 2, '--output', tmp_path, '--preview-only'])[0] == 0
    done = json.loads((tmp_path / 'carphone_pristine' / 'done.json').read_text())
    assert 'autoencoder' not in done and 'autoencoder' not in done['settings']
    assert 'autoencoder_weights' not in done['settings']


@pytest.mark.parametrize('extra, message', [
    (['--autoencoder', 'wan2.1'], '--autoencoder wan2.1 needs --autoencoder-weights DIR'),
    (['--autoencoder-weights', 'x'], '--autoencoder-weights needs --autoencoder NAME'),
    (['--autoencoder', 'sd', '--autoencoder-weights', 'x', '--preview-only'], '--preview-only with --autoencoder sd'),
    (['--autoencoder', 'sd', '--autoencoder-weights', 'x', '--interp', '2'], '--interp with --autoencoder sd'),
])
def test_usage_errors(extra, message, tiny, carphone, tmp_path):
    code, out, err = run([*tiny, '--input', carphone, '--output', tmp_path / 'o', *extra])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / 'o').exists()


def test_missing_and_wrong_weights_are_one_line(folders, tiny, carphone, tmp_path):
    code, _, err = run([*tiny, '--input', carphone, '--output', tmp_path / 'o', '--autoencoder', 'ltx-video',
                        '--autoencoder-weights', tmp_path / 'nowhere'])
    assert code == 2 and 'nowhere' in err and 'Lightricks/LTX-Video' in err and len(err.strip().splitlines()) == 1
    code, _, err = run([*tiny, '--input', carphone, '--output', tmp_path / 'o', '--autoencoder', 'ltx-video',
                        '--autoencoder-weights', folders['wan2.1']])
    assert code == 2 and 'AutoencoderKLWan' in err and 'AutoencoderKLLTXVideo' in err
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('damage, message', [
    ('config', 'config.json: is not a JSON object'), ('weights', 'cannot be loaded as AutoencoderKLWan'),
    ('shapes', 'cannot be loaded as AutoencoderKLWan')])
def test_a_broken_weights_folder_is_one_line(damage, message, folders, tiny, carphone, tmp_path):
    """A truncated config.json, a folder without its weight file, weights of another size than the config:
    one line naming the folder, exit 2, nothing written."""
    broken = tmp_path / 'wan'
    shutil.copytree(folders['wan2.1'], broken)
    config = broken / 'config.json'
    if damage == 'config':
        config.write_text(config.read_text()[:20])
    elif damage == 'weights':
        for f in broken.glob('*.safetensors'):
            f.unlink()
    else:
        config.write_text(json.dumps({**json.loads(config.read_text()), 'base_dim': 16}))
    code, out, err = run([*tiny, '--input', carphone, '--output', tmp_path / 'o', '--autoencoder', 'wan2.1',
                          '--autoencoder-weights', broken])
    assert code == 2 and message in err and str(broken) in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / 'o').exists()


def test_eval_lists_each_autoencoder_with_its_compression(folders, tiny, carphone, tmp_path):
    """CascadeV and four other autoencoders reconstruct the same 3 frames; tools/eval.py names each method after
    its autoencoder and gives its compression, in summary.json and in summary.md's table."""
    from tools.evaluation.evaluate import evaluate
    argv = [*tiny, '--input', carphone, '--num-frames', 3, '--no-metrics']
    assert run([*argv, '--output', tmp_path / 'cascadev'])[0] == 0
    others = ('wan2.1', 'cogvideox', 'ltx-video', 'sd')
    for name in others:
        code, _, err = run([*argv, '--output', tmp_path / name, '--autoencoder', name,
                            '--autoencoder-weights', folders[name]])
        assert code == 0, err
    result = evaluate(str(carphone), [str(tmp_path / 'cascadev'), *(str(tmp_path / n) for n in others)],
                      tmp_path / 'eval', lpips=False, device='cpu', progress=False, log=lambda line: None)
    want = {'preview': '1×32×32, 16 ch', 'refined': '1×32×32, 16 ch', **{n: TINY[n][1] for n in others}}
    doc = json.loads(result['files']['summary_json'].read_text())
    assert {m: row['compression'] for m, row in doc['methods'].items()} == want
    table = result['files']['summary'].read_text()
    rows = [line for line in table.splitlines() if line.startswith('| ') and not line.startswith('| model')]
    for method, compression in want.items():
        assert any(r.startswith(f'| {method} | {compression} | ') for r in rows), (method, rows)


def test_decode_from_another_autoencoders_latent_is_one_line(folders, tiny, carphone, tmp_path):
    """Its latent records the autoencoder, so --decode-from says what it is instead of a shape mismatch."""
    argv = [*tiny, '--input', carphone, '--num-frames', 5, '--output', tmp_path / 'o', '--no-metrics']
    assert run([*argv, '--autoencoder', 'wan2.1', '--autoencoder-weights', folders['wan2.1']])[0] == 0
    latent = tmp_path / 'o' / 'carphone_pristine' / 'latent.safetensors'
    code, out, err = run([*tiny, '--decode-from', latent, '--output', tmp_path / 'd'])
    assert code == 2 and out == '' and len(err.strip().splitlines()) == 1
    assert err.strip() == (f"error: --decode-from {latent}: is a latent of --autoencoder wan2.1, not CascadeV's; "
                           f"--decode-from decodes CascadeV latents only: run recon.py --autoencoder wan2.1 on the "
                           f"source video again")
    assert not (tmp_path / 'd').exists()
