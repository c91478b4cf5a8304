"""recon.py / recon.sh end to end on real clips (tiny config, random weights, CPU)."""
import contextlib
import io
import json
import os
import shutil
import subprocess

import pytest
import torch

import recon
import tools.recon.reconstruct
import tools.recon.render
from models.pipeline import CascadeV
from models.weights import STAGES
from tools import eval as ev
from tools.evaluation.tables import read_table
from tools.recon import batch, per_video
from tools.recon.latents import load_latent
from tools.recon.records import DONE, OUTPUT_FILES
from tools.video.frames import FramePlan, plan, resize_short_side
from tools.video.read import probe_video, read_video
from tools.video.write import to_uint8, write_video

TINY_OPTS = []                     # --cfg-options applied to configs/tiny.py in these tests
FRAMES = 5                         # > lats_per_vid (4) of the tiny config: two overlapping DiT windows


@pytest.fixture(scope='module')
def tiny(repo_root):
    """Flags every tiny run shares."""
    opts = ['--cfg-options', *TINY_OPTS] if TINY_OPTS else []
    return ['--config', str(repo_root / 'configs' / 'tiny.py'), '--steps', '2', *opts]


@pytest.fixture(scope='module', autouse=True)
def shared_pipelines():
    """Build the tiny pipeline once per module: recon.main() calls CascadeV.from_config on every run, and
    every stage's random weights depend only on the config, so runs asking for fewer stages share them."""
    cache, build = {}, CascadeV.from_config.__func__

    def cached(cls, cfg, device='cpu', dtype='fp32', compile=False, stages=STAGES):
        key = (cfg.pretty_text, str(device), str(dtype), compile)
        if key not in cache:
            cache[key] = build(cls, cfg, device=device, dtype=dtype, compile=compile, stages=STAGES)
        full = cache[key]
        return cls(cfg, device=full.device, dtype=full.dtype, **{s: getattr(full, s) for s in stages})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CascadeV, 'from_config', classmethod(cached))
        yield cache


def run(argv):
    """recon.main(argv) in-process -> (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = recon.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def frames_of(path):
    return read_video(path)[0]


@pytest.fixture(scope='module')
def clips(tmp_path_factory, shared_videos):
    """Input folder: carphone (144x176, 29.97 fps) and demo scaled to 256 px wide (144x256, 24 fps): neither
    size is a multiple of 32, and demo's latent needs several DiT tiles."""
    folder = tmp_path_factory.mktemp('clips')
    os.symlink(shared_videos / 'carphone_pristine.mp4', folder / 'carphone_pristine.mp4')
    demo, info = read_video(shared_videos / 'demo.mp4', num_frames=FRAMES)
    write_video(folder / 'demo.mp4', resize_short_side(demo, 144), info.fps)
    return folder


@pytest.fixture(scope='module')
def runs(clips, tiny, tmp_path_factory):
    """Each clip alone, both in one batch, and carphone decoded again from its saved latent."""
    out = tmp_path_factory.mktemp('out')
    common = [*tiny, '--size', '0', '--num-frames', FRAMES]
    res = {name: run([*common, '--input', clips / f'{name}.mp4', '--output', out / name])
           for name in ('carphone_pristine', 'demo')}
    res['batch'] = run([*common, '--input', clips, '--output', out / 'batch'])
    latent = out / 'carphone_pristine' / 'carphone_pristine' / 'latent.safetensors'
    res['decoded'] = run([*tiny, '--decode-from', latent, '--output', out / 'decoded'])
    return out, res


@pytest.mark.parametrize('name,size', [('carphone_pristine', (144, 176)), ('demo', (144, 256))])
def test_outputs_match_the_input(runs, clips, name, size):
    out, res = runs
    code, stdout, _ = res[name]
    assert code == 0 and f'{name}: {FRAMES} frames' in stdout and 'refined PSNR' in stdout
    folder = out / name / name
    assert sorted(os.listdir(folder)) == sorted(OUTPUT_FILES + (DONE,))   # no temp files left
    src = probe_video(clips / f'{name}.mp4')
    for f in ('rec.mp4', 'preview.mp4'):
        info = probe_video(folder / f)
        assert (info.num_frames, info.height, info.width) == (FRAMES, *size) == (FRAMES, src.height, src.width)
        assert info.fps == pytest.approx(src.fps, abs=1e-3)
    assert probe_video(folder / 'cmp.mp4').width == 3 * size[1]      # original | preview | refined
    from PIL import Image
    assert Image.open(folder / 'cmp.png').size == (4 * size[1], 3 * size[0])   # 4 frames x 3 rows
    done = json.loads((folder / 'done.json').read_text())
    assert done['frames'] == FRAMES and done['scheduler'] == 'EulerA' and done['steps'] == 2
    assert set(done['metrics']) == {'preview', 'refined'} and done['metrics']['refined']['psnr'] > 0


def test_latent_file_round_trips(runs, clips, shared_pipelines):
    out, _ = runs
    latent, meta = load_latent(out / 'carphone_pristine' / 'carphone_pristine' / 'latent.safetensors')
    assert latent.shape == (16, FRAMES, 5, 6) and latent.dtype == torch.float32        # 160x192 padded / 32
    assert meta.name == 'carphone_pristine' and meta.config == 'tiny.py'
    assert meta.source == str((clips / 'carphone_pristine.mp4').resolve())
    assert meta.fps == pytest.approx(29.97, abs=1e-2) and meta.num_frames == FRAMES
    frame_plan = plan(144, 176, num_frames=FRAMES)
    assert meta.plan == frame_plan and meta.plan.to_dict()['pad'] == [8, 8, 8, 8]
    pipe = next(iter(shared_pipelines.values()))
    frames = read_video(clips / 'carphone_pristine.mp4', num_frames=FRAMES)[0]
    torch.testing.assert_close(pipe.encode(frame_plan.to_model(frames)[None])[0], latent, rtol=0, atol=0)


def test_decode_from_reproduces_rec_exactly(runs):
    out, res = runs
    code, stdout, _ = res['decoded']
    assert code == 0, res['decoded']
    first, again = out / 'carphone_pristine' / 'carphone_pristine', out / 'decoded' / 'carphone_pristine'
    digests = [json.loads((d / 'done.json').read_text())['frames_sha256'] for d in (first, again)]
    assert digests[0] == digests[1] and set(digests[0]) == {'rec.mp4', 'preview.mp4'}   # the frames written
    assert not (again / 'latent.safetensors').exists()           # the source video was never needed
    assert probe_video(again / 'cmp.mp4').width == 2 * 176         # preview | refined


def test_batch_gives_each_video_its_single_output(runs):
    out, res = runs
    code, stdout, _ = res['batch']
    assert code == 0 and '2/2 done' in stdout
    for name in ('carphone_pristine', 'demo'):
        digests = [json.loads((d / 'done.json').read_text())['frames_sha256']
                   for d in (out / 'batch' / name, out / name / name)]
        assert digests[0] == digests[1]


@pytest.mark.xfail(strict=False, reason='libx264 output for identical frames varied between encodes of small '
                   'frames (2 of 30 for 144x176), depending on memory state; the frames handed to the writer are '
                   'identical (frames_sha256, tested above)')
def test_reproduced_mp4s_decode_to_identical_frames(runs):
    out, _ = runs
    first = out / 'carphone_pristine' / 'carphone_pristine'
    for again in (out / 'decoded' / 'carphone_pristine', out / 'batch' / 'carphone_pristine'):
        for f in ('rec.mp4', 'preview.mp4'):
            torch.testing.assert_close(frames_of(again / f), frames_of(first / f), rtol=0, atol=0)


def test_resized_input_comes_back_at_source_size(clips, tiny, tmp_path):
    code, _, err = run([*tiny, '--input', clips / 'carphone_pristine.mp4', '--output', tmp_path,
                        '--size', '96', '--num-frames', '2', '--scheduler', 'DPMS'])
    assert code == 0, err
    info = probe_video(tmp_path / 'carphone_pristine' / 'rec.mp4')
    assert (info.num_frames, info.height, info.width) == (2, 144, 176)
    latent, meta = load_latent(tmp_path / 'carphone_pristine' / 'latent.safetensors')
    assert latent.shape == (16, 2, 3, 4) and meta.plan.to_dict()['resized'] == [96, 117]   # padded to 96x128


def test_preview_only_square_resume_and_overwrite(clips, tiny, tmp_path):
    argv = [*tiny, '--input', clips / 'carphone_pristine.mp4', '--output', tmp_path, '--preview-only',
            '--square', '--size', '64', '--num-frames', '2', '--frame-stride', '2', '--eval']
    code, _, err = run(argv)
    assert code == 0, err
    folder = tmp_path / 'carphone_pristine'
    assert sorted(os.listdir(folder)) == ['cmp.mp4', 'cmp.png', 'done.json', 'latent.safetensors', 'preview.mp4']
    info = probe_video(folder / 'preview.mp4')
    assert (info.num_frames, info.height, info.width) == (2, 144, 144)          # the centre square, source px
    assert info.fps == pytest.approx(29.97 / 2, abs=1e-2)                      # stride 2 plays in real time
    assert (tmp_path / '.eval' / 'summary.md').is_file()                       # --eval ran tools/eval.py
    stamp = {f: os.stat(folder / f).st_mtime_ns for f in os.listdir(folder)}
    code, stdout, _ = run(argv)                                                # rerun: complete -> skipped
    assert code == 0 and 'skipped' in stdout
    assert stamp == {f: os.stat(folder / f).st_mtime_ns for f in os.listdir(folder)}
    code, _, _ = run([*argv[:-1], '--overwrite'])
    assert code == 0 and os.stat(folder / 'done.json').st_mtime_ns != stamp['done.json']


def test_bad_files_are_skipped_and_listed(clips, tiny, tmp_path, shared_videos):
    folder = tmp_path / 'in'
    folder.mkdir()
    shutil.copy(shared_videos / 'carphone_pristine.mp4', folder / 'good.mp4')
    (folder / 'empty.mp4').write_bytes(b'')
    (folder / 'notes.mp4').write_text('this is not a video\n')
    data = (shared_videos / 'carphone_pristine.mp4').read_bytes()
    (folder / 'truncated.mp4').write_bytes(data[:len(data) // 3])
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}
    code, _, err = run([*tiny, '--input', folder, '--output', tmp_path / 'out', '--preview-only',
                        '--num-frames', '2'])
    assert code == 1
    assert '3/4 failed' in err
    for bad in ('empty.mp4', 'notes.mp4', 'truncated.mp4'):
        assert f'{folder / bad}: ' in err
        assert not (tmp_path / 'out' / bad[:-4]).exists()
    assert batch.is_complete(tmp_path / 'out' / 'good')
    assert before == {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}
    code, _, err = run([*tiny, '--input', folder / 'notes.mp4', '--output', tmp_path / 'only_bad', '--preview-only'])
    assert code == 1 and '1/1 failed' in err and not (tmp_path / 'only_bad').exists()   # no empty folders left


def missing_weight_opts(tmp_path):
    return ['--cfg-options', f'weights.dit={tmp_path}/w/dit.pth', f'weights.compressor={tmp_path}/w/e.safetensors',
            f'weights.previewer={tmp_path}/w/p.safetensors', f'weights.vae={tmp_path}/w/svd_vae']


def test_missing_weights_exit_2_before_any_work(clips, repo_root, tmp_path):
    code, _, err = run(['--config', repo_root / 'configs' / 's1024.effn-f32.py', '--input', clips,
                        '--output', tmp_path / 'out', *missing_weight_opts(tmp_path)])
    assert code == 2
    assert f'{tmp_path}/w/dit.pth' in err and 'bash pretrained/download.sh' in err
    assert not (tmp_path / 'out').exists()


def test_recon_sh_missing_weights_exit_2(clips, repo_root, tmp_path):
    proc = subprocess.run(['bash', str(repo_root / 'recon.sh'), str(clips), str(tmp_path / 'out'),
                           *missing_weight_opts(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert 'missing weights' in proc.stderr and 'bash pretrained/download.sh' in proc.stderr
    assert not (tmp_path / 'out').exists()


def test_usage_errors_exit_2(clips, tiny, tmp_path, shared_videos):
    before = sorted(os.listdir(clips))
    code, _, err = run([*tiny, '--input', clips, '--output', clips / 'out'])
    assert code == 2 and 'inside the input folder' in err and sorted(os.listdir(clips)) == before
    code, _, err = run([*tiny, '--input', clips, '--output', clips])
    assert code == 2 and 'inside the input folder' in err
    code, _, err = run([*tiny, '--input', clips, '--output', clips / 'out', '--vmaf'])
    assert code == 2 and '--vmaf' in err and 'needs --eval' in err
    code, _, err = run([*tiny, '--input', clips, '--output', tmp_path, '--num-frames', '0'])
    assert code == 2 and '--num-frames 0' in err
    clash = tmp_path / 'clash'
    clash.mkdir()
    os.symlink(shared_videos / 'carphone_pristine.mp4', clash / 'a.mp4')
    os.symlink(shared_videos / 'bigbuckbunny.mp4', clash / 'a.mov')
    code, _, err = run([*tiny, '--input', clash, '--output', tmp_path / 'o'])
    assert code == 2 and "both named 'a'" in err
    from safetensors.torch import save_file
    save_file({'x': torch.zeros(1)}, str(tmp_path / 'other.safetensors'))
    code, _, err = run([*tiny, '--decode-from', tmp_path / 'other.safetensors', '--output', tmp_path / 'o'])
    assert code == 2 and 'no CascadeV latent metadata' in err
    assert not (tmp_path / 'o').exists()
    with pytest.raises(SystemExit):                      # argparse: --input and --decode-from exclude each other
        run([*tiny, '--input', clips, '--decode-from', 'x.safetensors', '--output', tmp_path])


@pytest.mark.parametrize('n, world', [(0, 2), (1, 3), (5, 2), (9, 4)])
def test_processes_claiming_one_batch_do_each_video_once(n, world, tmp_path):
    """`world` walkers (threads: a claim is per open file, so they exclude each other as processes do) run the
    claim loop over one list at once: every video is done by exactly one of them, and none is left busy once
    their outcomes are merged."""
    import threading
    from types import SimpleNamespace
    from tools.recon.lock import FolderBusy, claim
    from tools.recon.schedule import Outcomes, claim_videos, merge_outcomes
    names = [f'v{i:02d}' for i in range(n)]

    def attempt(name):
        try:
            with claim(tmp_path / name):
                if (tmp_path / name / 'done').exists():
                    return 'skipped', f'{name}: skipped'
                (tmp_path / name / 'done').write_text(threading.current_thread().name)
                return 'done', f'{name}: done'
        except FolderBusy as e:
            return 'busy', f'{name}: {e}'
    outs = [Outcomes() for _ in range(world)]
    jobs = [SimpleNamespace(rank=r, world=world, settings=SimpleNamespace(claim_wait=0)) for r in range(world)]
    threads = [threading.Thread(target=claim_videos, args=(jobs[r], names, attempt, outs[r]), name=str(r))
               for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [x for o in outs for x in o.done]
    assert sorted(done) == names and len(done) == len(set(done))             # no duplicate, none lost
    assert all((tmp_path / x / 'done').read_text() == str(r) for r, o in enumerate(outs) for x in o.done)
    assert merge_outcomes(outs) == ((), ())
    assert sum(o.mine for o in outs) == n


def test_run_settings_check_each_flag_and_name_what_a_latent_fixes():
    from tools.recon.settings import RunSettings, UsageError
    s = RunSettings.from_flags(recon.build_parser().parse_args(['--input', 'x.mp4', '--output', 'o']))
    assert s == RunSettings(output='o', input=('x.mp4',), cfg_options={})          # the parser's defaults are its own
    assert s.stages() == ('compressor', 'previewer', 'dit', 'vae') and s.ignored_by_latent() == []
    with pytest.raises(UsageError, match=r"^--max-memory '2\.5XB': use a size of at least 1 MB"):
        RunSettings(output='o', input=('x',), max_memory='2.5XB')
    assert RunSettings(output='o', input=('x',), max_memory='2.5GB').max_memory == 2_500_000_000
    with pytest.raises(UsageError, match=r'^--frame-stride 0: must be >= 1$'):
        RunSettings(output='o', input=('x',), frame_stride=0, max_memory='2.5XB')   # in flag order, as recon.py
    d = RunSettings.from_flags(recon.build_parser().parse_args(['--decode-from', 'l', '--output', 'o', '--size', '128',
                                                              '--square', '--steps', '2', '--preview-only']))
    assert d.ignored_by_latent() == ['--size', '--square'] and d.stages() == ('previewer',)
    assert RunSettings(output='o', input=('x',), size=128).ignored_by_latent() == []


def test_records_round_trip_and_read_the_older_layout(tmp_path):
    from tools.recon.latents import LatentError, read_latent_meta
    from tools.recon.records import DONE_FORMAT, DoneRecord, LatentMeta, RenderInfo
    p = plan(144, 176, num_frames=3, stride=2, start=1)
    meta = LatentMeta(name='v', plan=p, source='/x/v.mp4', source_fps=30.0, sar='4:3', vfr=True,
                      times=[0.0, 0.1, 0.2], config='tiny.py')
    d = meta.to_dict()
    assert (d['format'], d['num_frames'], d['start'], d['frame_stride'], d['fps']) == ('cascadev-latent-v2', 3, 1, 2, 15.0)
    assert LatentMeta.from_dict(json.loads(json.dumps(d))) == meta
    render = RenderInfo(frames=3, height=144, width=176, fps=15.0, sar=None, frame_times='constant', lossless=False,
                        files=['preview.mp4'], frames_sha256={'preview.mp4': 'ab'}, metrics={})
    assert 'scheduler' not in render.to_dict() and RenderInfo.from_dict(render.to_dict()) == render
    done = DoneRecord(name='v', source='/x/v.mp4', render=render, latent='latent.safetensors', plan=p.to_dict(),
                      settings={'size': 64})
    d = done.to_dict()
    assert d['format'] == DONE_FORMAT and d['frames'] == 3 and d['plan']['stride'] == 2
    assert not set(d) & {'start', 'frame_stride', 'size', 'square', 'preprocess'}      # each fact once: the plan's
    assert DoneRecord.from_dict(json.loads(json.dumps(d))) == done
    v1 = {**{k: v for k, v in d.items() if k != 'format'}, 'start': 1, 'frame_stride': 2, 'size': 0, 'square': False,
          'preprocess': 'default'}
    assert DoneRecord.from_dict(v1) == done
    with pytest.raises(ValueError, match='format'):
        DoneRecord.from_dict({**d, 'format': 'cascadev-done-v9'})
    from safetensors.torch import save_file
    bad = {'format': 'cascadev-latent-v2', 'name': 'v', 'plan': {'nonsense': 1}}
    save_file({'latent': torch.zeros(16, 1, 2, 2)}, str(tmp_path / 'l.safetensors'), metadata={'meta': json.dumps(bad)})
    with pytest.raises(LatentError, match='no valid frame plan'):
        read_latent_meta(tmp_path / 'l.safetensors')


def test_an_older_done_json_and_latent_still_resume_and_decode(clips, tiny, tmp_path):
    """A done.json of the older layout (no format, the plan's fields copied at the top level) is complete and
    skipped; a latent written without the config and --fps keys decodes."""
    argv = [*tiny, '--input', clips / 'carphone_pristine.mp4', '--output', tmp_path / 'a', '--preview-only',
            '--size', '64', '--num-frames', '1', '--no-metrics']
    code, _, err = run(argv)
    assert code == 0, err
    folder = tmp_path / 'a' / 'carphone_pristine'
    done = json.loads((folder / 'done.json').read_text())
    p = done.pop('plan')
    old = {**{k: v for k, v in done.items() if k != 'format'}, 'start': p['start'], 'frame_stride': p['stride'],
           'size': p['size'], 'square': p['square'], 'preprocess': p['preprocess'], 'plan': p}
    (folder / 'done.json').write_text(json.dumps(old, indent=1) + '\n')
    code, stdout, _ = run(argv)
    assert code == 0 and 'complete in' in stdout and 'skipped' in stdout
    from safetensors.torch import load_file, save_file
    meta = load_latent(folder / 'latent.safetensors')[1].to_dict()
    del meta['config'], meta['output_fps']
    save_file(load_file(str(folder / 'latent.safetensors')), str(tmp_path / 'old.safetensors'),
              metadata={'meta': json.dumps(meta)})
    code, _, err = run([*tiny, '--decode-from', tmp_path / 'old.safetensors', '--output', tmp_path / 'b',
                        '--preview-only', '--no-metrics'])
    assert code == 0 and batch.is_complete(tmp_path / 'b' / 'carphone_pristine'), err


# ---- exact output geometry, eval through recon's plan, non-finite outputs -----------------------------------

def test_odd_size_comes_back_exactly(odd_clip, tiny, tmp_path):
    code, _, err = run([*tiny, '--input', odd_clip, '--output', tmp_path, '--size', '0', '--num-frames', '5'])
    assert code == 0, err
    folder = tmp_path / 'odd'
    for f in ('rec.mp4', 'preview.mp4'):
        info = probe_video(folder / f)
        assert (info.num_frames, info.height, info.width) == (5, 143, 175)
        assert read_video(folder / f)[0].shape == (3, 5, 143, 175)
    assert probe_video(folder / 'cmp.mp4').width == 3 * 175
    done = json.loads((folder / 'done.json').read_text())
    assert (done['height'], done['width'], done['frames']) == (143, 175, 5)
    p = FramePlan.from_dict(done['plan'])
    assert (p.source, p.model, p.output, p.pad) == ((143, 175), (160, 192), (143, 175), (8, 9, 8, 9))
    assert done['frame_times'] == 'constant' and done['lossless'] is False    # a constant-rate source


EVAL_ROWS = {                      # recon.py flags -> the frames eval must compare (the plan in done.json)
    'square-size': ['--square', '--size', '64', '--num-frames', '4'],
    'stride': ['--frame-stride', '2', '--num-frames', '8'],
    'square-no-size': ['--square', '--num-frames', '4'],
    'start': ['--start', '3', '--num-frames', '4'],
    'odd': ['--num-frames', '4'],
    'cascadev': ['--preprocess', 'cascadev', '--num-frames', '4'],
}


@pytest.mark.parametrize('row', EVAL_ROWS)
def test_eval_of_a_perfect_reconstruction_is_inf(row, odd_clip, tiny, tmp_path, write_lossless):
    """recon.py FLAGS --eval runs; then preview.mp4 is replaced by the reference frames themselves (lossless):
    recon.py's eval and tools/eval.py on the folder compare them through the plan in done.json -> PSNR inf."""
    code, _, err = run([*tiny, '--input', odd_clip, '--output', tmp_path, '--preview-only', '--eval', *EVAL_ROWS[row]])
    assert code == 0 and 'eval: error' not in err and 'skipped' not in err, err
    assert (tmp_path / '.eval' / 'summary.json').is_file()
    folder = tmp_path / 'odd'
    done = json.loads((folder / 'done.json').read_text())
    p = FramePlan.from_dict(done['plan'])
    frames, _ = read_video(odd_clip, num_frames=p.num_frames, stride=p.stride, start=p.start)
    perfect = to_uint8(p.reference(frames))
    assert perfect.shape == (done['frames'], done['height'], done['width'], 3) == (p.num_frames, *p.output, 3)
    write_lossless(folder / 'preview.mp4', perfect, done['fps'])

    assert batch.run_eval([str(odd_clip)], tmp_path, device='cpu', vmaf=False) == 0
    assert ev.main(['--ref', str(odd_clip), '--rec', str(tmp_path), '--out', str(tmp_path / 'standalone'),
                    '--no-lpips', '--quiet']) == 0
    for out in (tmp_path / '.eval', tmp_path / 'standalone'):
        video = read_table(out / 'per_video.csv')[0]
        assert video['method'] == 'preview' and video['psnr'] == 'inf', (row, video)
        assert (int(video['frames']), int(video['height']), int(video['width'])) == (p.num_frames, *p.output)


@pytest.mark.parametrize('case', ['fp16-overflow', 'vae-nan'])
def test_non_finite_output_fails_that_video_only(case, clips, tiny, tmp_path, monkeypatch):
    """carphone's latent overflows fp16 in the previewer (x 1e5), or the VAE returns NaN for it: that video
    fails with one line naming the stage, the dtype and the fix, leaves no file, and demo still completes."""
    folder = tmp_path / 'in'
    folder.mkdir()
    for name in ('carphone_pristine', 'demo'):
        os.symlink(clips / f'{name}.mp4', folder / f'{name}.mp4')
    carphone_width = 3                                 # latent width at --size 64: 96 / 32 (demo: 128 / 32)
    if case == 'fp16-overflow':
        encode = CascadeV.encode
        monkeypatch.setattr(CascadeV, 'encode', lambda self, video: encode(self, video) * (
            1e5 if video.shape[-1] == 32 * carphone_width else 1))
        flags, expected = ['--dtype', 'fp16', '--preview-only'], ('the previewer output holds NaN/inf values under '
                                                                  'fp16: fp16 overflowed its range (max 65504); '
                                                                  'rerun with --dtype bf16 or fp32')
    else:
        from models.svd_vae import SVDVAE
        decode = SVDVAE._decode_frames
        monkeypatch.setattr(SVDVAE, '_decode_frames', lambda self, z, num_frames: decode(self, z, num_frames) * (
            float('nan') if z.shape[-1] == 4 * carphone_width else 1))
        flags, expected = [], ('the SVD VAE decoder output holds NaN/inf values under fp32: check the input '
                               'frames and the weights file of this stage')
    code, _, err = run([*tiny, '--input', folder, '--output', tmp_path / 'out', '--size', '64', '--num-frames', '2',
                        *flags])
    assert code == 1 and '1/2 failed' in err
    assert f'{folder / "carphone_pristine.mp4"}: {expected}\n' in err
    assert not (tmp_path / 'out' / 'carphone_pristine').exists()             # nothing left, not even the latent
    assert batch.is_complete(tmp_path / 'out' / 'demo')


class RecordingWriter:
    """Stands in for VideoWriter with the sar/lossless/times interface: records what recon hands it."""
    calls = []

    def __init__(self, path, fps, crf=18, preset='medium', pix_fmt='yuv420p', sar=None, lossless=False,
                 lookahead=None, threads=None):
        self.record = {'file': os.path.basename(str(path)), 'fps': fps, 'sar': sar, 'lossless': lossless,
                       'times': [], 'frames': 0, 'size': None, 'threads': threads}
        RecordingWriter.calls.append(self.record)

    def write(self, frames, times=None):
        """frames: uint8 (T, H, W, 3) or a (C, T, H, W) tensor, as VideoWriter takes them."""
        uint8 = frames.shape[-1] == 3
        t, size = (frames.shape[0], frames.shape[1:3]) if uint8 else (frames.shape[1], frames.shape[2:])
        self.record['frames'] += t
        self.record['size'] = tuple(size)
        self.record['times'] = None if times is None else self.record['times'] + list(times)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize('fps', [None, '12'])
def test_sar_times_and_lossless_reach_the_writer(clips, tiny, tmp_path, monkeypatch, fps):
    """A reader that reports SAR 4:3 and variable frame times: every output file gets the SAR, each frame its
    source time from the first one used (across chunks), and --lossless; --fps gives a constant rate and a note."""
    from fractions import Fraction

    import tools.video.read as vio
    from tools.recon.memory import writer_threads
    source_time = lambda i: 0.05 * i if i < 4 else 0.2 + 0.1 * (i - 4)       # 20 fps, then 10 fps
    probe, read = vio.probe_video, vio.read_frames
    fake_probe = lambda path: probe(path)._replace(sar=Fraction(4, 3), vfr=True)
    monkeypatch.setattr(vio, 'probe_video', fake_probe)
    monkeypatch.setattr(tools.recon.reconstruct, 'probe_video', fake_probe)

    def read_with_times(path, num_frames=None, stride=1, start=0, **options):
        frames, info = read(path, num_frames=num_frames, stride=stride, start=start, **options)
        times = tuple(source_time(start + k * stride) for k in range(len(frames)))
        return frames, info._replace(sar=Fraction(4, 3), vfr=True, times=times)
    monkeypatch.setattr(vio, 'read_frames', read_with_times)
    monkeypatch.setattr(tools.recon.render, 'read_frames', read_with_times)
    monkeypatch.setattr(tools.recon.render, 'VideoWriter', RecordingWriter)
    RecordingWriter.calls = []
    code, stdout, err = run([*tiny, '--input', clips / 'carphone_pristine.mp4', '--output', tmp_path, '--size', '0',
                             '--preview-only', '--lossless', '--start', '1', '--frame-stride', '2', '--num-frames', '4',
                             '--chunk-frames', '2', *(['--fps', fps] if fps else [])])
    assert code == 0, err
    calls = {c['file']: c for c in RecordingWriter.calls}
    assert set(calls) == {'preview.mp4', 'cmp.mp4'}
    expected = None if fps else [round(source_time(i) - source_time(1), 6) for i in (1, 3, 5, 7)]
    for c in calls.values():
        assert c['sar'] == Fraction(4, 3) and c['lossless'] is True and c['frames'] == 4
        assert c['threads'] == writer_threads()
        assert c['times'] == pytest.approx(expected) if expected else c['times'] is None
    assert calls['preview.mp4']['size'] == (144, 176)
    done = json.loads((tmp_path / 'carphone_pristine' / 'done.json').read_text())
    assert done['sar'] == '4:3' and done['lossless'] is True
    assert done['frame_times'] == ('constant' if fps else 'source')
    assert ('variable frame rate source written at a constant --fps 12' in stdout) == bool(fps)


# ---- reruns, errors, --decode-from settings -------------------------------------------------------------

def test_rerun_with_other_settings_redoes_the_video_and_overwrite_clears_old_files(clips, tiny, tmp_path):
    base = [*tiny, '--input', clips / 'carphone_pristine.mp4', '--output', tmp_path, '--size', '64']
    folder = tmp_path / 'carphone_pristine'
    code, _, err = run([*base, '--num-frames', '2', '--preview-only', '--no-metrics'])
    assert code == 0 and not (folder / 'rec.mp4').exists(), err
    done = json.loads((folder / 'done.json').read_text())
    assert done['metrics'] == {} and done['settings']['preview_only'] is True
    assert {'num_frames', 'start', 'stride', 'size', 'square', 'preprocess', 'scheduler', 'steps', 'seed', 'dtype',
            'preview_only', 'upscale', 'interp', 'lossless', 'fps', 'decode_overlap', 'decode_chunk', 'config',
            'dit_weights', 'tile_blend'} <= set(done['settings'])
    code, stdout, err = run([*base, '--num-frames', '2', '--no-metrics'])          # the full run is not "done"
    assert code == 0, err
    assert 'holds a run with other settings (preview_only True -> False); redoing it' in stdout
    assert probe_video(folder / 'rec.mp4').num_frames == 2
    code, stdout, _ = run([*base, '--num-frames', '2', '--no-metrics'])
    assert code == 0 and 'skipped' in stdout
    code, stdout, err = run([*base, '--num-frames', '2', '--no-metrics', '--cfg-options', 'diffusion.beta_end=0.03'])
    assert code == 0 and 'holds a run with other settings (config_sha256 ' in stdout, err   # a config key counts
    code, _, err = run([*base, '--num-frames', '1', '--preview-only', '--overwrite', '--no-metrics'])
    assert code == 0, err
    assert sorted(os.listdir(folder)) == ['cmp.mp4', 'cmp.png', 'done.json', 'latent.safetensors', 'preview.mp4']


def test_decode_from_keeps_the_encoding_runs_fps_and_refuses_unsafe_names(clips, tiny, tmp_path):
    code, _, err = run([*tiny, '--input', clips / 'carphone_pristine.mp4', '--output', tmp_path / 'a', '--size', '64',
                        '--num-frames', '2', '--preview-only', '--fps', '10', '--no-metrics'])
    assert code == 0, err
    latent = tmp_path / 'a' / 'carphone_pristine' / 'latent.safetensors'
    code, _, err = run([*tiny, '--decode-from', latent, '--output', tmp_path / 'b', '--preview-only', '--size', '128'])
    assert code == 0, err
    assert '--size ignored with --decode-from' in err
    assert probe_video(tmp_path / 'b' / 'carphone_pristine' / 'preview.mp4').fps == pytest.approx(10)
    done = json.loads((tmp_path / 'b' / 'carphone_pristine' / 'done.json').read_text())
    assert done['settings']['size'] == 'latent' and done['plan']['size'] == 64
    from dataclasses import replace

    from tools.recon.latents import save_latent
    data, meta = load_latent(latent)
    for bad in ('../../escaped', str(tmp_path / 'abs'), '..'):
        save_latent(tmp_path / 'evil.safetensors', data, replace(meta, name=bad))
        code, _, err = run([*tiny, '--decode-from', tmp_path / 'evil.safetensors', '--output', tmp_path / 'o' / 'p'])
        assert code == 2 and 'not a single safe folder name' in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / 'o').exists() and not (tmp_path / 'escaped').exists() and not (tmp_path / 'abs').exists()


@pytest.mark.parametrize('flags,message', [
    (['--device', 'cuda:7'], 'error: --device: device '),
    (['--device', 'tpu9'], "error: --device: device 'tpu9' is unknown"),
    (['--cfg-options', 'sampling.tile_blend=foo'], "sampling.tile_blend = 'foo'; use smooth or overwrite"),
    (['--interp', '0'], '--interp 0: must be >= 1')])
def test_bad_device_blend_interp_exit_2_before_any_work(flags, message, clips, tiny, tmp_path):
    if flags[:2] == ['--device', 'cuda:7'] and torch.cuda.device_count() > 7:
        pytest.skip('this machine has a cuda:7')
    code, _, err = run([*tiny, '--input', clips, '--output', tmp_path / 'o', *flags])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / 'o').exists()


def test_ctrl_c_says_what_is_done_and_exits_130(clips, tiny, tmp_path, monkeypatch):
    real = per_video.process

    def interrupt_second(pipe, name, *rest):         # largest first: demo (64x128 model frames), then carphone
        if name == 'carphone_pristine':
            raise KeyboardInterrupt
        return real(pipe, name, *rest)
    monkeypatch.setattr(per_video, 'process', interrupt_second)
    code, _, err = run([*tiny, '--input', clips, '--output', tmp_path, '--num-frames', '1', '--preview-only',
                        '--size', '64'])
    assert code == 130
    assert 'interrupted: 1/2 videos complete' in err and 'rerun the same command to resume' in err
    assert batch.is_complete(tmp_path / 'demo') and not batch.is_complete(tmp_path / 'carphone_pristine')
