"""Reconstruct videos with CascadeV: read -> encode -> preview -> refine (DiT) -> SVD decode, one process.

    python recon.py --config configs/s1024.effn-f32.py --input VIDEOS --output OUT [options]
    python recon.py --config configs/s1024.effn-f32.py --decode-from OUT/NAME/latent.safetensors --output OUT2
    accelerate launch recon.py ...          # one process per GPU, the video list sharded across them

Writes OUT/NAME/{latent.safetensors, preview.mp4, rec.mp4, cmp.mp4, cmp.png, done.json} per video (NAME is
the file stem). Outputs keep the source's displayed size (or the plan's crop: --square, --preprocess cascadev),
its pixel aspect ratio (SAR) and its frame times; done.json records the frame plan (tools/video/frames.py) that
tools/eval.py reuses, and the settings that shape the outputs. The per-video loop is the library's
(tools/recon/reconstruct.py); this file parses flags and runs the batch: resume, sharding, done.json.

Reruns: every file goes through a temp name and a rename; done.json is written last, so a video with a
done.json is complete. A rerun skips it if its done.json 'settings' equal this run's, and otherwise redoes it,
printing one line that names the settings that differ; a video that is redone (or --overwrite) has its old
files removed first. A bad file is reported as "PATH: reason" and skipped; the run ends with "k/N failed".
Exit codes: 0 all done, 1 some videos failed, 2 usage errors (bad flags or config, unknown or absent device,
missing weights, output inside the input folder; before any work), 130 interrupted (Ctrl-C; a rerun resumes).
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from tools.config import ConfigError, add_cfg_options, load_config
from tools.files import write_text_atomic
from tools.video.frames import PREPROCESS

OUTPUT_FILES = ('latent.safetensors', 'preview.mp4', 'rec.mp4', 'cmp.mp4', 'cmp.png')
DONE = 'done.json'
DEFAULT_CONFIG = 'configs/s1024.effn-f32.py'
REPO_ROOT = Path(__file__).resolve().parent


class UsageError(ValueError):
    """A flag or path the run cannot start with; the message is one line naming it and the fix."""


def build_parser():
    from diffusion.samplers import SAMPLERS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=str(REPO_ROOT / DEFAULT_CONFIG),
                   help=f'model config (default: {DEFAULT_CONFIG})')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--input', nargs='+', metavar='PATH', help='video files and/or folders of videos')
    src.add_argument('--decode-from', nargs='+', metavar='LATENT',
                     help='latent.safetensors files (or folders of them) saved by an earlier run: decode '
                          'without the source videos')
    p.add_argument('--output', required=True, help='output folder (one sub-folder per video)')
    g = p.add_argument_group('frames')
    g.add_argument('--num-frames', type=int, default=None, help='frames per video (default: all)')
    g.add_argument('--frame-stride', type=int, default=1, help='use every S-th frame (default 1)')
    g.add_argument('--start', type=int, default=0, help='first frame (default 0)')
    g.add_argument('--size', type=int, default=None,
                   help="resize the short side to SIZE before encoding, 0 = native size (default: the config's "
                        "data.sample_size, 1024 for s1024.effn-f32); outputs are resized back to the source size")
    g.add_argument('--square', action='store_true', help='center-crop a square first (as the original recon did)')
    g.add_argument('--preprocess', choices=PREPROCESS, default='default',
                   help="default: the full frame, padded to 32 and restored to the source size; cascadev: the "
                        "original's blur + OpenCV resize + crop to multiples of 32, outputs at that crop")
    g.add_argument('--fps', type=float, default=None,
                   help="write at this constant rate (default: each frame at its source time; constant-rate "
                        "sources play at source fps / frame stride)")
    g.add_argument('--lossless', action='store_true',
                   help='lossless video files (for exact metrics; larger, and fewer players handle them)')
    g.add_argument('--upscale', action='store_true',
                   help="outputs at the model's resolution (short side --size, the source's aspect ratio) instead "
                        "of resized back to the source: the cascade as a super-resolution stage")
    g.add_argument('--interp', type=int, default=1, metavar='K',
                   help='interpolate the latent K x in time before refinement: K*(T-1)+1 frames at K x the frame '
                        'rate, the source frames at multiples of K (default 1: the source rate)')
    g = p.add_argument_group('sampling')
    g.add_argument('--preview-only', action='store_true', help='fast mode: previewer only, no DiT and no SVD decode')
    g.add_argument('--scheduler', choices=list(SAMPLERS), default=None,
                   help='sampler (default: sampling.scheduler of the config, EulerA)')
    g.add_argument('--steps', type=int, default=None, help='sampler steps (default: sampling.steps, 8)')
    g.add_argument('--seed', type=int, default=None,
                   help="seed (default: sampling.seed, 42); each video's noise comes from (seed, video name)")
    g = p.add_argument_group('hardware and run')
    g.add_argument('--device', default=None, help="cpu | cuda | cuda:N | auto (default: the config's device)")
    g.add_argument('--dtype', choices=('auto', 'fp32', 'fp16', 'bf16'), default=None,
                   help="stage precision (default: the config's dtype, auto = bf16 on CUDA GPUs with native bf16, "
                        "else fp32: bf16 on a CPU is emulated and much slower); the DiT runs under autocast")
    g.add_argument('--compile', action='store_true', help='torch.compile the DiT (pays off on long runs on GPU)')
    g.add_argument('--chunk-frames', type=int, default=16,
                   help='frames read/decoded/written at a time (memory flat in clip length; default 16)')
    g.add_argument('--max-memory', default=None, metavar='SIZE',
                   help="peak memory budget, e.g. 24GB, 2.5GB: chunk frames, DiT tiles per call, the SVD decode "
                        "chunk/tiles and the encoder look-ahead are chosen to fit it and the plan is printed "
                        "(default: none on CPU, the free device memory on CUDA); CPU: process RSS, CUDA: max "
                        "allocated + context")
    g.add_argument('--overwrite', action='store_true',
                   help='redo videos whose outputs are already complete (their old files are removed first)')
    g.add_argument('--no-metrics', action='store_true',
                   help='skip the in-loop PSNR/SSIM of done.json (tools/eval.py scores the files anyway)')
    g.add_argument('--eval', action='store_true', help='after the batch, run tools/eval.py on the outputs')
    g.add_argument('--dit-checkpoint', default=None, metavar='PATH',
                   help="DiT weights (a training checkpoint's model.safetensors, a .pth): weights.dit=PATH")
    g.add_argument('--vmaf', action='store_true', help='with --eval: also compute VMAF (tools/eval.py --vmaf)')
    add_cfg_options(g)
    return p


# ---- inputs, outputs and sharding (no torch needed) --------------------------------------------------

def shard(items, rank, world):
    """The items process `rank` of `world` handles: every world-th one of the sorted list (no overlap, none lost)."""
    return sorted(items)[rank::world]


def collect_videos(inputs):
    """--input paths -> {name: path}, name = file stem; one-line UsageError for missing paths or stem clashes."""
    from tools.video.read import VideoReadError, list_videos
    found = {}
    for item in inputs:
        try:
            paths = list_videos(item)
        except VideoReadError as e:
            raise UsageError(f'--input {e}') from None
        for path in paths:
            name = Path(path).stem
            other = found.get(name)
            if other is not None and os.path.realpath(other) != os.path.realpath(path):
                raise UsageError(f"--input: {other} and {path} are both named '{name}', so both would write "
                                 f"OUTPUT/{name}/; rename one or reconstruct them in separate runs")
            found[name] = str(path)
    return found


def collect_latents(items):
    """--decode-from files/folders -> {name: path} with the name stored in each latent's metadata (a single
    safe folder name, else the file is refused: tools.recon.latents.safe_name)."""
    from tools.recon.latents import LatentError, read_latent_meta
    files = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files += sorted(p.rglob('*.safetensors'))
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f'--decode-from {item}: no such file or folder; pass a latent.safetensors written '
                             f'by recon.py or a folder holding them')
    if not files:
        raise UsageError(f"--decode-from {' '.join(items)}: no .safetensors files found")
    found = {}
    for f in files:
        try:
            name = read_latent_meta(f)['name']
        except LatentError as e:
            raise UsageError(f'--decode-from {e}') from None
        if name in found:
            raise UsageError(f"--decode-from: {found[name]} and {f} both hold video '{name}'; decode them in "
                             f"separate runs")
        found[name] = str(f)
    return found


def check_output_dir(output, inputs):
    """Refuse an output folder equal to or inside a folder given as --input (a rerun would list its outputs
    among the inputs' neighbours); a file input's folder may hold the outputs (OUTPUT/NAME/ per video)."""
    out = Path(output).resolve()
    for item in inputs:
        folder = Path(item).resolve()
        if folder.is_dir() and (out == folder or folder in out.parents):
            raise UsageError(f'--output {output}: is inside the input folder {item}; input folders are never '
                             f'written to, so pick an output folder outside it (e.g. outputs/recon)')
    if out.exists() and not out.is_dir():
        raise UsageError(f'--output {output}: is a file; pass a folder')


def is_complete(out_dir):
    """A video is complete when its done.json exists and lists files that all exist (settings_change says
    whether they are this run's)."""
    done = Path(out_dir) / DONE
    if not done.is_file():
        return False
    try:
        files = json.loads(done.read_text())['files']
    except (ValueError, KeyError, TypeError):
        return False
    return all((Path(out_dir) / f).is_file() for f in files)


def validate_args(args):
    checks = [(args.num_frames is not None and args.num_frames < 1, '--num-frames', 'must be >= 1 (or omitted: all)'),
              (args.frame_stride < 1, '--frame-stride', 'must be >= 1'),
              (args.start < 0, '--start', 'must be >= 0'),
              (args.size is not None and args.size < 0, '--size', 'must be >= 0 (0 keeps the native size)'),
              (args.preprocess == 'cascadev' and args.size is not None and 0 < args.size < 32, '--size',
               'must be >= 32 with --preprocess cascadev (its crop is to multiples of 32), or 0 for the native size'),
              (args.steps is not None and args.steps < 1, '--steps', 'must be >= 1'),
              (args.fps is not None and not (args.fps > 0 and math.isfinite(args.fps)), '--fps', 'must be > 0'),
              (args.chunk_frames < 1, '--chunk-frames', 'must be >= 1'),
              (args.interp < 1, '--interp', 'must be >= 1 (1: the source frame rate)'),
              (args.vmaf and not args.eval, '--vmaf', 'needs --eval (VMAF is computed by the evaluation)')]
    for bad, flag, rule in checks:
        if bad:
            raise UsageError(f'{flag} {getattr(args, flag[2:].replace("-", "_"))}: {rule}')
    if args.max_memory is not None:
        from tools.recon.memory import parse_size
        try:
            args.max_memory = parse_size(args.max_memory)
        except ValueError as e:
            raise UsageError(f'--max-memory {e}') from None


# ---- one video ----------------------------------------------------------------------------------------

# flags whose effect a latent fixes when it is encoded: (flag, args attribute, ReconSettings field)
LATENT_FIXED = (('--num-frames', 'num_frames', 'num_frames'), ('--start', 'start', 'start'),
                ('--frame-stride', 'frame_stride', 'stride'), ('--size', 'size', 'size'),
                ('--square', 'square', 'square'), ('--preprocess', 'preprocess', 'preprocess'),
                ('--upscale', 'upscale', 'upscale'))


def ignored_by_latent(args):
    """With --decode-from the latent fixes which frames and what geometry: say so for each such flag given."""
    defaults = build_parser().parse_args(['--decode-from', 'x', '--output', 'x'])
    given = [flag for flag, attr, _ in LATENT_FIXED if getattr(args, attr) != getattr(defaults, attr)]
    if given:
        print(f"note: {' '.join(given)} ignored with --decode-from: the latent's frames and geometry were fixed "
              f"when it was encoded", file=sys.stderr)


def settings_of(args):
    """The output-shaping flags as tools.recon.reconstruct.ReconSettings."""
    from tools.recon.reconstruct import ReconSettings
    return ReconSettings(num_frames=args.num_frames, start=args.start, stride=args.frame_stride, size=args.size,
                         square=args.square, preprocess=args.preprocess, scheduler=args.scheduler, steps=args.steps,
                         seed=args.seed, preview_only=args.preview_only, upscale=args.upscale, interp=args.interp,
                         fps=args.fps, lossless=args.lossless)


def settings_change(out_dir, expected):
    """How the complete run in out_dir differs from `expected` (done.json 'settings'): '' if it does not,
    else 'KEY OLD -> NEW, ...' (one line)."""
    try:
        old = json.loads((Path(out_dir) / DONE).read_text()).get('settings') or {}
    except (OSError, ValueError, AttributeError):
        old = {}
    if not old:
        return 'its settings are not recorded (an older recon.py)'
    diff = [f'{k} {old.get(k, "unrecorded")} -> {v}' for k, v in expected.items() if old.get(k, object()) != v]
    return ', '.join(diff)


def clear_outputs(out_dir, keep=None):
    """Remove an earlier run's files (done.json first, so the folder never looks complete), except `keep`."""
    keep = Path(keep).resolve() if keep else None
    for f in (DONE,) + OUTPUT_FILES:
        path = Path(out_dir) / f
        if path.is_file() and path.resolve() != keep:
            path.unlink()


def fit_memory(pipe, name, src, args, settings, cfg, decode_from):
    """Chunk frames, DiT tiles per call, SVD decode chunk/tiles and encoder look-ahead for one video under
    --max-memory (CUDA: the free device memory by default), printed (tools/recon/memory.py); the SVD tile size is
    set on pipe.vae. -> tools.recon.memory.MemoryPlan. PlanError (one line) when nothing fits."""
    from models.weights import dtype_name
    from tools.video.frames import FramePlan
    from tools.recon.memory import Workload, bytes_in_use, default_budget, gb, plan_memory
    if decode_from:
        from tools.recon.latents import read_latent_meta
        meta = read_latent_meta(src)
        frame_plan, n = FramePlan.from_dict(meta['plan']), meta['num_frames']
    else:
        from tools.recon.reconstruct import source_plan
        frame_plan = source_plan(src, settings)[0]
        n = frame_plan.num_frames
    budget = args.max_memory if args.max_memory is not None else default_budget(pipe.device)
    w = Workload.from_plan(frame_plan, settings.interp * (n - 1) + 1, cfg, refine=not settings.preview_only,
                           metrics=not args.no_metrics, original=not decode_from, device=pipe.device.type,
                           dtype=dtype_name(pipe.dtype))
    memory_plan = plan_memory(w, budget, base=bytes_in_use(pipe.device), chunk_frames=args.chunk_frames)
    if pipe.vae is not None:
        pipe.vae.tile_size = memory_plan.settings.vae_tile
    print(f'{name}: {memory_plan.line()} ({f"budget {gb(budget)}" if budget else "no --max-memory"})', flush=True)
    return memory_plan


def process(pipe, name, src, out_dir, args, settings, record, decode_from, cfg):
    """All outputs of one video (or one saved latent); done.json last. -> the done.json dict."""
    from tools.recon.reconstruct import reconstruct
    t0 = time.time()
    memory_plan = fit_memory(pipe, name, src, args, settings, cfg, decode_from)
    mem = memory_plan.settings
    clear_outputs(out_dir, keep=src if decode_from else None)      # nothing of another run is taken for ours
    source = dict(latent_file=src) if decode_from else dict(video=src)
    info = reconstruct(pipe, out_dir, name=name, settings=settings, chunk_frames=mem.chunk_frames,
                       vae_chunk=mem.vae_chunk, tile_batch=mem.dit_tile_batch, lookahead=mem.lookahead,
                       metrics=not args.no_metrics, progress=args.progress, warn=tqdm_write,
                       meta_extra={'config': record['config'], 'output_fps': args.fps}, **source)
    meta, timings = info.pop('meta'), info.pop('timings')
    if decode_from and meta.get('config') != record['config']:
        tqdm_write(f"warning: {src}: encoded with {meta.get('config')}, decoded with {record['config']}")
    plan = meta['plan']
    done = {'name': name, 'source': meta['source'], **info, 'start': meta['start'],
            'frame_stride': meta['frame_stride'], 'size': plan['size'], 'square': plan['square'],
            'preprocess': plan['preprocess'], 'upscale': settings.upscale, 'interp': settings.interp, 'plan': plan,
            'config': record['config'], 'device': str(pipe.device), 'dtype': record['dtype'],
            'settings': record, 'memory_plan': memory_plan.to_dict(), 'stage_seconds': timings,
            'seconds': round(time.time() - t0, 2)}
    write_text_atomic(out_dir / DONE, json.dumps(done, indent=1) + '\n')
    return done


def tqdm_write(message):
    from tqdm.auto import tqdm
    tqdm.write(message)


def summary_line(done):
    parts = [f"{done['name']}: {done['frames']} frames {done['height']}x{done['width']} @ {done['fps']:.4g} fps"]
    for k, m in done['metrics'].items():
        ssim = f" SSIM {m['ssim']:.4f}" if m['ssim'] is not None else ''
        parts.append(f"{k} PSNR {m['psnr']:.2f} dB{ssim}")
    parts.append(f"{done['seconds']:.1f} s")
    return ' | '.join(parts)


def failure_line(src, e):
    """'PATH: reason' in one line (VideoReadError messages already start with the path)."""
    reason = str(e).strip().splitlines()[0] if str(e).strip() else ''
    if type(e).__name__ not in ('VideoReadError', 'ValueError', 'NonFiniteError', 'LatentError', 'PlanError'):
        reason = f'{type(e).__name__}: {reason}' if reason else type(e).__name__
    return reason if reason.startswith(str(src)) else f'{src}: {reason}'


def remove_if_empty(folder):
    try:
        folder.rmdir()
    except OSError:
        pass


# ---- main -----------------------------------------------------------------------------------------------

def distributed_state(device=None):
    """(rank, world, device or None) from accelerate's PartialState under a launcher, else (0, 1, None)."""
    if int(os.environ.get('WORLD_SIZE', '1')) > 1:
        import torch
        from accelerate import PartialState
        state = PartialState(cpu=str(device) == 'cpu' or not torch.cuda.is_available())
        return state.process_index, state.num_processes, state.device
    return 0, 1, None


def main(argv=None):
    """Run recon; -> exit code (0 ok, 1 some videos failed, 2 usage error or missing weights, 130 Ctrl-C)."""
    args = build_parser().parse_args(argv)
    from models.weights import MissingWeightsError, check_weights, resolve_device, resolve_dtype
    try:
        validate_args(args)
        cfg = load_config(args.config, args.cfg_options)
        cfg.weights.dit = args.dit_checkpoint or cfg.weights.dit
        args.scheduler = args.scheduler or cfg.sampling.scheduler
        args.steps = args.steps or cfg.sampling.steps
        args.seed = cfg.sampling.seed if args.seed is None else args.seed
        decode_from = args.decode_from is not None
        if decode_from:
            ignored_by_latent(args)
        args.size = cfg.data.sample_size if args.size is None else args.size
        items = collect_latents(args.decode_from) if decode_from else collect_videos(args.input)
        if not decode_from:
            check_output_dir(args.output, args.input)
        stages = ('previewer',) if decode_from else ('compressor', 'previewer')
        stages += () if args.preview_only else ('dit', 'vae')
        rank, world, dist_device = distributed_state(args.device or cfg.get('device', 'auto'))
        device = args.device or cfg.get('device', 'auto')
        if dist_device is not None and device in ('auto', 'cuda'):
            device = dist_device
        try:
            device = resolve_device(device)
        except ValueError as e:
            raise UsageError(f'--device: {e}') from None
        dtype = resolve_dtype(args.dtype or cfg.get('dtype', 'auto'), device)
        check_weights(cfg, stages)
    except (UsageError, ConfigError, MissingWeightsError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    from tools.recon.reconstruct import output_settings
    settings = settings_of(args)
    record = {**output_settings(settings, cfg, dtype), 'max_memory': args.max_memory}   # bytes; the plan: done.json
    if decode_from:                          # the latent's own plan shapes the frames: record that, not flags
        record.update({field: 'latent' for _, _, field in LATENT_FIXED})
    main_process = rank == 0
    output = Path(args.output)
    mine = shard(items, rank, world)
    todo = []
    for n in mine:
        expected = {**record, 'decode_from': str(Path(items[n]).resolve())} if decode_from else record
        change = settings_change(output / n, expected) if is_complete(output / n) else None
        if args.overwrite or change is None:
            todo.append(n)
        elif change:
            print(f'{n}: {output / n} holds a run with other settings ({change}); redoing it')
            todo.append(n)
        else:
            print(f'{n}: complete in {output / n}, skipped (--overwrite redoes it)')
    failures, completed = [], []
    if todo:
        try:
            run_batch(todo, items, output, args, cfg, device, dtype, stages, settings, record, decode_from,
                      main_process, failures, completed)
        except KeyboardInterrupt:
            print(f'\ninterrupted: {len(mine) - len(todo) + len(completed)}/{len(mine)} videos complete in {output}; '
                  f'rerun the same command to resume (complete videos are skipped, the interrupted one is redone)',
                  file=sys.stderr)
            return 130
    if world > 1:
        from accelerate import PartialState
        from accelerate.utils import gather_object
        failures = gather_object(failures)              # every rank learns the batch's failures
        PartialState().wait_for_everyone()
    code = 1 if failures else 0
    remove_if_empty(output)                              # a batch that wrote nothing leaves no folder
    if main_process:
        if failures:
            print(f'{len(failures)}/{len(items)} failed:\n  ' + '\n  '.join(failures), file=sys.stderr)
        else:
            print(f'{len(items)}/{len(items)} done in {output}')
        if args.eval and not decode_from:
            code = max(code, run_eval(args, items, output))
    return code


def run_batch(todo, items, output, args, cfg, device, dtype, stages, settings, record, decode_from, main_process,
              failures, completed):
    """Build the pipeline once and process `todo`; the names done and the failures (one line each) are
    appended to `completed` and `failures` as they happen."""
    import torch
    from tqdm.auto import tqdm

    from models.pipeline import CascadeV
    from tools.recon.memory import release_freed_memory_to_os
    args.progress = main_process and sys.stderr.isatty()
    with torch.no_grad():
        pipe = CascadeV.from_config(cfg, device=device, dtype=dtype, compile=args.compile, stages=stages)
        if pipe.device.type == 'cpu':
            release_freed_memory_to_os()      # the RSS follows the live buffers, flat in clip length
        bar = tqdm(todo, desc='videos', unit='video', disable=not main_process or None)
        for name in bar:
            rec = {**record, 'decode_from': str(Path(items[name]).resolve())} if decode_from else record
            try:
                done = process(pipe, name, items[name], output / name, args, settings, rec, decode_from, cfg)
                bar.write(summary_line(done))
                completed.append(name)
            except KeyboardInterrupt:
                remove_if_empty(output / name)
                remove_if_empty(output)
                raise
            except Exception as e:        # a bad file, or one no plan fits --max-memory, must not stop the batch
                failures.append(failure_line(items[name], e))
                bar.write(f'failed: {failures[-1]}')
                remove_if_empty(output / name)


def run_eval(args, items, output):
    """tools/eval.py on the outputs against the inputs, each through the frame plan in its done.json; -> 0 or 1."""
    from tools.eval import EvalError, evaluate
    try:
        result = evaluate(sorted(items.values()), str(output), out_dir=output / 'eval', device=args.device or 'auto',
                          vmaf=args.vmaf)
    except EvalError as e:
        print(f'eval: error: {e}', file=sys.stderr)
        return 1
    return 1 if result['skipped'] else 0


if __name__ == '__main__':
    sys.exit(main())
