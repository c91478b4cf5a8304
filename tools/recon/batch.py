"""A recon batch: inputs, resume, one pipeline for all videos, the failure policy, sharding, gathering, --eval.

    from tools.recon.batch import run
    from tools.recon.settings import RunSettings
    result = run(RunSettings(output='out', input=('videos/',)))      # prints as recon.py does; result.code

Inputs: video files and folders (collect_videos) or saved latents (collect_latents), named by the file stem
or the latent's stored name; the output folder must lie outside every input folder. Each video writes
OUTPUT/NAME/; done.json (tools.recon.records.DoneRecord) is written last, so a folder with one is complete.

Resume: a complete video is skipped when its done.json `settings` equal this run's, else redone with one line
naming the settings that differ (settings_change); --overwrite redoes it. A video redone has its old files
removed first. Failures: a video that raises is reported as "PATH: reason" (failure_line), leaves no folder,
and the batch goes on. Under a launcher (WORLD_SIZE > 1) each process takes every world-th video (shard)
and the failures are gathered, so every process returns the batch's exit code.

Errors before any work: UsageError (tools.recon.settings), tools.config.ConfigError,
models.weights.MissingWeightsError, each one line.
"""
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from models.pipeline import CascadeV
from models.weights import check_weights, dtype_name, resolve_device, resolve_dtype
from tools.evaluation.evaluate import EvalError, evaluate
from tools.files import write_text_atomic
from tools.recon.latents import LatentError, read_latent_meta
from tools.recon.memory import Workload, bytes_in_use, default_budget, gb, plan_memory, release_freed_memory_to_os
from tools.recon.records import DONE, OUTPUT_FILES, DoneRecord, RenderInfo, read_done
from tools.recon.reconstruct import output_settings, reconstruct, source_plan
from tools.recon.settings import LATENT_FIXED, UsageError
from tools.video.read import VideoReadError, list_videos

# errors whose message already says what failed (others are prefixed with their type)
PLAIN_ERRORS = ('VideoReadError', 'ValueError', 'NonFiniteError', 'LatentError', 'PlanError')


# ---- inputs, outputs, sharding -------------------------------------------------------------------------------

def shard(items, rank, world):
    """The items process `rank` of `world` handles: every world-th one of the sorted list (no overlap, none lost)."""
    return sorted(items)[rank::world]


def collect_videos(inputs):
    """--input paths -> {name: path}, name = file stem; one-line UsageError for missing paths or stem clashes."""
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
            name = read_latent_meta(f).name
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


def clear_outputs(out_dir, keep=None):
    """Remove an earlier run's files (done.json first, so the folder never looks complete), except `keep`."""
    keep = Path(keep).resolve() if keep else None
    for f in (DONE,) + OUTPUT_FILES:
        path = Path(out_dir) / f
        if path.is_file() and path.resolve() != keep:
            path.unlink()


def remove_if_empty(folder):
    try:
        folder.rmdir()
    except OSError:
        pass


# ---- resume ----------------------------------------------------------------------------------------------

def is_complete(out_dir):
    """A video is complete when its done.json exists and lists files that all exist (settings_change says
    whether they are this run's)."""
    done = read_done(out_dir)
    files = done.render.files if done is not None else None
    return isinstance(files, list) and all((Path(out_dir) / f).is_file() for f in files)


def settings_change(out_dir, expected):
    """How the complete run in out_dir differs from `expected` (done.json 'settings'): '' if it does not,
    else 'KEY OLD -> NEW, ...' (one line)."""
    done = read_done(out_dir)
    old = done.settings if done is not None and isinstance(done.settings, dict) else {}
    if not old:
        return 'its settings are not recorded (an older recon.py)'
    diff = [f'{k} {old.get(k, "unrecorded")} -> {v}' for k, v in expected.items() if old.get(k, object()) != v]
    return ', '.join(diff)


# ---- the batch ready to run --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """A batch ready to run: its RunSettings, the loaded config, the output-shaping ReconSettings, every
    video of the batch {name: path} (all processes), the resolved torch device and dtype, this process's
    rank in `world`, and `record`: what shapes the files as done.json's `settings` records it."""
    settings: object
    cfg: object
    recon: object
    items: dict
    device: object
    dtype: object
    record: dict
    rank: int = 0
    world: int = 1

    @property
    def output(self):
        return Path(self.settings.output)

    def expected(self, name):
        """done.json `settings` for video `name` (with --decode-from, also the latent file decoded)."""
        if not self.settings.decoding:
            return self.record
        return {**self.record, 'decode_from': str(Path(self.items[name]).resolve())}


def distributed_state(device=None):
    """(rank, world, device or None) from accelerate's PartialState under a launcher, else (0, 1, None)."""
    if int(os.environ.get('WORLD_SIZE', '1')) > 1:
        state = PartialState(cpu=str(device) == 'cpu' or not torch.cuda.is_available())
        return state.process_index, state.num_processes, state.device
    return 0, 1, None


def prepare(settings):
    """RunSettings -> Job: the config, the inputs, the output folder checked, device, dtype and weights.
    Nothing is written. UsageError / ConfigError / MissingWeightsError (one line) for what cannot run."""
    cfg = settings.load_config()
    ignored = settings.ignored_by_latent()
    if ignored:
        print(f"note: {' '.join(ignored)} ignored with --decode-from: the latent's frames and geometry were fixed "
              f"when it was encoded", file=sys.stderr)
    items = collect_latents(settings.decode_from) if settings.decoding else collect_videos(settings.input)
    if not settings.decoding:
        check_output_dir(settings.output, settings.input)
    device = settings.requested_device(cfg)
    rank, world, dist_device = distributed_state(device)
    if dist_device is not None and device in ('auto', 'cuda'):
        device = dist_device
    try:
        device = resolve_device(device)
    except ValueError as e:
        raise UsageError(f'--device: {e}') from None
    dtype = resolve_dtype(settings.dtype or cfg.get('dtype', 'auto'), device)
    check_weights(cfg, settings.stages())
    recon = settings.recon_settings(cfg)
    record = {**output_settings(recon, cfg, dtype), 'max_memory': settings.max_memory}   # bytes; the plan: done.json
    if settings.decoding:                    # the latent's own plan shapes the frames: record that, not flags
        record.update({field: 'latent' for _, _, field in LATENT_FIXED})
    return Job(settings, cfg, recon, items, device, dtype, record, rank, world)


def select(job, names):
    """The videos of `names` to (re)do; one line for each complete one skipped or redone with other settings."""
    todo = []
    for n in names:
        folder = job.output / n
        change = settings_change(folder, job.expected(n)) if is_complete(folder) else None
        if job.settings.overwrite or change is None:
            todo.append(n)
        elif change:
            print(f'{n}: {folder} holds a run with other settings ({change}); redoing it')
            todo.append(n)
        else:
            print(f'{n}: complete in {folder}, skipped (--overwrite redoes it)')
    return todo


# ---- one video -------------------------------------------------------------------------------------------

def fit_memory(pipe, name, src, job):
    """Chunk frames, DiT tiles per call, SVD decode chunk/tiles and encoder look-ahead for one video under
    --max-memory (CUDA: the free device memory by default), printed (tools/recon/memory.py); the SVD tile size is
    set on pipe.vae. -> tools.recon.memory.MemoryPlan. PlanError (one line) when nothing fits."""
    s, recon = job.settings, job.recon
    if s.decoding:
        frame_plan = read_latent_meta(src).plan
    else:
        frame_plan = source_plan(src, recon)[0]
    n = frame_plan.num_frames
    budget = s.max_memory if s.max_memory is not None else default_budget(pipe.device)
    w = Workload.from_plan(frame_plan, recon.interp * (n - 1) + 1, job.cfg, refine=not recon.preview_only,
                           metrics=not s.no_metrics, original=not s.decoding, device=pipe.device.type,
                           dtype=dtype_name(pipe.dtype))
    memory_plan = plan_memory(w, budget, base=bytes_in_use(pipe.device), chunk_frames=s.chunk_frames)
    if pipe.vae is not None:
        pipe.vae.tile_size = memory_plan.settings.vae_tile
    print(f'{name}: {memory_plan.line()} ({f"budget {gb(budget)}" if budget else "no --max-memory"})', flush=True)
    return memory_plan


def process(pipe, name, job, progress=False):
    """All outputs of one video (or one saved latent) in OUTPUT/name; done.json last. -> DoneRecord."""
    t0 = time.time()
    src, out_dir, decoding = job.items[name], job.output / name, job.settings.decoding
    memory_plan = fit_memory(pipe, name, src, job)
    mem = memory_plan.settings
    clear_outputs(out_dir, keep=src if decoding else None)      # nothing of another run is taken for ours
    source = dict(latent_file=src) if decoding else dict(video=src)
    record = job.expected(name)
    info = reconstruct(pipe, out_dir, name=name, settings=job.recon, chunk_frames=mem.chunk_frames,
                       vae_chunk=mem.vae_chunk, tile_batch=mem.dit_tile_batch, lookahead=mem.lookahead,
                       metrics=not job.settings.no_metrics, progress=progress, warn=tqdm.write,
                       meta_extra={'config': record['config'], 'output_fps': job.settings.fps}, **source)
    meta, timings, latent = info.pop('meta'), info.pop('timings'), info.pop('latent')
    if decoding and meta.get('config') != record['config']:
        tqdm.write(f"warning: {src}: encoded with {meta.get('config')}, decoded with {record['config']}")
    done = DoneRecord(name=name, source=meta['source'], render=RenderInfo.from_dict(info), latent=latent,
                      upscale=job.recon.upscale, interp=job.recon.interp, plan=meta['plan'], config=record['config'],
                      device=str(pipe.device), dtype=record['dtype'], settings=record,
                      memory_plan=memory_plan.to_dict(), stage_seconds=timings, seconds=round(time.time() - t0, 2))
    write_text_atomic(out_dir / DONE, json.dumps(done.to_dict(), indent=1) + '\n')
    return done


def summary_line(done):
    """One line for a DoneRecord: frames, size, fps, the in-loop scores and the seconds."""
    r = done.render
    parts = [f"{done.name}: {r.frames} frames {r.height}x{r.width} @ {r.fps:.4g} fps"]
    for k, m in r.metrics.items():
        ssim = f" SSIM {m['ssim']:.4f}" if m['ssim'] is not None else ''
        parts.append(f"{k} PSNR {m['psnr']:.2f} dB{ssim}")
    parts.append(f"{done.seconds:.1f} s")
    return ' | '.join(parts)


def failure_line(src, e):
    """'PATH: reason' in one line (VideoReadError messages already start with the path)."""
    reason = str(e).strip().splitlines()[0] if str(e).strip() else ''
    if type(e).__name__ not in PLAIN_ERRORS:
        reason = f'{type(e).__name__}: {reason}' if reason else type(e).__name__
    return reason if reason.startswith(str(src)) else f'{src}: {reason}'


# ---- the loop, gathering, the result ----------------------------------------------------------------------

@dataclass(frozen=True)
class BatchResult:
    """total: videos in the batch (all processes); mine: this process's share; done: the names reconstructed
    by this process now; failures: 'PATH: reason' lines (of every process once gathered); interrupted: Ctrl-C
    stopped the batch; code: the exit code (0 all done, 1 some failed or --eval found a problem, 130 Ctrl-C)."""
    total: int
    mine: int
    done: tuple
    failures: tuple
    interrupted: bool
    code: int


def run_videos(job, names):
    """Build the pipeline once and reconstruct `names`, one line each (summary or 'failed: ...').
    -> (names done, failure lines, interrupted)."""
    done, failures = [], []
    main_process = job.rank == 0
    progress = main_process and sys.stderr.isatty()
    try:
        with torch.no_grad():
            pipe = CascadeV.from_config(job.cfg, device=job.device, dtype=job.dtype, compile=job.settings.compile,
                                        stages=job.settings.stages())
            if pipe.device.type == 'cpu':
                release_freed_memory_to_os()      # the RSS follows the live buffers, flat in clip length
            bar = tqdm(names, desc='videos', unit='video', disable=not main_process or None)
            for name in bar:
                try:
                    bar.write(summary_line(process(pipe, name, job, progress)))
                    done.append(name)
                except KeyboardInterrupt:
                    remove_if_empty(job.output / name)
                    remove_if_empty(job.output)
                    raise
                except Exception as e:        # a bad file, or one no plan fits --max-memory, must not stop the batch
                    failures.append(failure_line(job.items[name], e))
                    bar.write(f'failed: {failures[-1]}')
                    remove_if_empty(job.output / name)
    except KeyboardInterrupt:
        return tuple(done), tuple(failures), True
    return tuple(done), tuple(failures), False


def gather_failures(failures, world):
    """Every process's failure lines, on every process (accelerate's gather_object), in rank order."""
    if world == 1:
        return tuple(failures)
    gathered = gather_object(list(failures))
    PartialState().wait_for_everyone()
    return tuple(gathered)


def run_eval(videos, output, device='auto', vmaf=False):
    """tools.evaluation on the outputs in `output` against `videos`, each through the frame plan in its
    done.json; results in output/eval. -> 0, or 1 when it fails (one line) or skips a video."""
    try:
        result = evaluate(sorted(videos), str(output), out_dir=Path(output) / 'eval', device=device, vmaf=vmaf)
    except EvalError as e:
        print(f'eval: error: {e}', file=sys.stderr)
        return 1
    return 1 if result['skipped'] else 0


def run(settings):
    """Run the batch RunSettings describe -> BatchResult; prints what recon.py prints. UsageError /
    ConfigError / MissingWeightsError (one line) before any work."""
    job = prepare(settings)
    mine = shard(job.items, job.rank, job.world)
    todo = select(job, mine)
    done, failures, interrupted = run_videos(job, todo) if todo else ((), (), False)
    if interrupted:
        print(f'\ninterrupted: {len(mine) - len(todo) + len(done)}/{len(mine)} videos complete in {job.output}; '
              f'rerun the same command to resume (complete videos are skipped, the interrupted one is redone)',
              file=sys.stderr)
        return BatchResult(len(job.items), len(mine), done, failures, True, 130)
    failures = gather_failures(failures, job.world)        # every rank learns the batch's failures
    code = 1 if failures else 0
    remove_if_empty(job.output)                              # a batch that wrote nothing leaves no folder
    if job.rank == 0:
        total = len(job.items)
        if failures:
            print(f'{len(failures)}/{total} failed:\n  ' + '\n  '.join(failures), file=sys.stderr)
        else:
            print(f'{total}/{total} done in {job.output}')
        if settings.eval and not settings.decoding:
            code = max(code, run_eval(job.items.values(), job.output, settings.device or 'auto', settings.vmaf))
    return BatchResult(len(job.items), len(mine), done, failures, False, code)

