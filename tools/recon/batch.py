"""A recon batch: inputs, resume, one pipeline for all videos, the failure policy, the summary, --eval.

    from tools.recon.batch import run
    from tools.recon.settings import RunSettings
    result = run(RunSettings(output='out', input=('videos/',)))      # prints as recon.py does; result.code

Inputs: video files and folders (collect_videos) or saved latents (collect_latents), named by the file stem
or the latent's stored name; the output folder must lie outside every input folder and be writable
(tools/recon/folders.py). Each video writes OUTPUT/NAME/ holding its claim (tools/recon/lock.py), so one
process at a time writes a folder. Every process walks the videos largest first and takes each one nobody
holds, waiting --claim-wait seconds for the rest (tools/recon/schedule.py); a video still held by another
process counts as not done (exit 1: a rerun resumes it), one whose holder was killed is taken over and redone.
done.json is written last, so a folder with one is complete.

Resume: a complete video is skipped when its done.json `settings` equal this run's, else redone with one line
naming the settings that differ (settings_change); --overwrite redoes it. A video redone has its old files
removed first. Failures: a video that raises is reported as "PATH: reason" (failure_line), leaves no folder,
and the batch goes on. Under a launcher (WORLD_SIZE > 1) the processes claim videos the same way; what each
did is gathered, and rank 0 prints the summary once and returns the batch's exit code; the other processes
return 0, so a launcher that stops every process when one exits non-zero (torchrun) never stops rank 0 while
it prints or runs --eval.

Errors before any work: UsageError (tools.recon.settings), tools.config.ConfigError,
models.weights.MissingWeightsError, each one line.
"""
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from models.autoencoders import AUTOENCODERS, autoencoder_from_config, weights_folder
from models.parallel import WorkSplit
from models.pipeline import CascadeV
from models.weights import WeightsFormatError, check_weights, resolve_device, resolve_dtype
from tools.evaluation.evaluate import EvalError, evaluate
from tools.evaluation.matching import EVAL_DIR
from tools.recon.folders import check_output_dir, is_complete, remove_if_empty, settings_change
from tools.recon.latents import LatentError, read_latent_meta
from tools.recon.memory import release_freed_memory_to_os
from tools.recon.per_video import one_video, share_video
from tools.recon.reconstruct import output_settings
from tools.recon.schedule import Outcomes, claim_videos, gather_outcomes, largest_first
from tools.recon.settings import LATENT_FIXED, UsageError
from tools.video.read import VideoReadError, list_videos

# ---- inputs ------------------------------------------------------------------------------------------------

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
    """RunSettings -> Job: the config, device, dtype and weights, then the inputs and the output folder (that
    it can be created and written: tools.files.folder_problem). Nothing is written and nothing printed before
    every check has passed, so a run that cannot start prints only its error. UsageError / ConfigError /
    MissingWeightsError (one line) for what cannot run."""
    cfg = settings.load_config()
    device = settings.requested_device(cfg)
    rank, world, dist_device = distributed_state(device)
    if dist_device is not None and device in ('auto', 'cuda'):
        device = dist_device
    try:
        device = resolve_device(device)
    except ValueError as e:
        raise UsageError(f'--device: {e}') from None
    try:
        dtype = resolve_dtype(settings.dtype or cfg.get('dtype', 'auto'), device)
    except ValueError as e:
        raise UsageError(f'--dtype: {e}') from None
    check_weights(cfg, settings.stages())
    check_autoencoder(settings)
    items = collect_latents(settings.decode_from) if settings.decoding else collect_videos(settings.input)
    check_output_dir(settings.output, () if settings.decoding else settings.input)
    recon = settings.recon_settings(cfg)
    record = {**output_settings(recon, cfg, dtype), 'max_memory': settings.max_memory}   # bytes; the plan: done.json
    if settings.decoding:                    # the latent's own plan shapes the frames: record that, not flags
        record.update({field: 'latent' for _, _, field in LATENT_FIXED})
    ignored = settings.ignored_by_latent()
    if ignored:
        print(f"note: {' '.join(ignored)} ignored with --decode-from: the latent's frames and geometry were fixed "
              f"when it was encoded", file=sys.stderr)
    return Job(settings, cfg, recon, items, device, dtype, record, rank, world)


def check_autoencoder(settings):
    """--autoencoder-weights holds the diffusers class --autoencoder needs: MissingWeightsError (one line naming
    the folder and where it comes from), UsageError for another class."""
    if settings.other_autoencoder and settings.autoencoder_weights is not None:
        try:
            weights_folder(settings.autoencoder_weights, AUTOENCODERS[settings.autoencoder])
        except WeightsFormatError as e:
            raise UsageError(f'--autoencoder-weights {e}') from None


def build_pipe(job):
    """The run's model: CascadeV with the stages it needs, or the other autoencoder (models/autoencoders.py)."""
    s = job.settings
    if s.other_autoencoder:
        ae = autoencoder_from_config(s.autoencoder, s.autoencoder_weights, job.cfg, job.device, job.dtype)
        for note in ae.notes if job.rank == 0 else ():
            print(f'--autoencoder {s.autoencoder} ({ae.compression}): {note}')
        return ae
    return CascadeV.from_config(job.cfg, device=job.device, dtype=job.dtype, compile=s.compile, stages=s.stages())


def select(job, names):
    """The videos of `names` to (re)do; one line (rank 0) for each complete one skipped or redone with other
    settings."""
    todo, say = [], print if job.rank == 0 else (lambda line: None)
    for n in names:
        folder = job.output / n
        change = settings_change(folder, job.expected(n)) if is_complete(folder) else None
        if job.settings.overwrite or change is None:
            todo.append(n)
        elif change:
            say(f'{n}: {folder} holds a run with other settings ({change}); redoing it')
            todo.append(n)
        else:
            say(f'{n}: complete in {folder}, skipped (--overwrite redoes it)')
    return todo


# ---- the batch, the result ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchResult:
    """total: videos in the batch (all processes); mine: how many this process claimed and processed (done or
    failed); done: the names reconstructed by this process now; failures: 'PATH: reason' lines (of every
    process once gathered); busy: the lines of videos another process was still writing, done by no process
    of this launch (not done: a rerun resumes them); interrupted: Ctrl-C stopped the batch; code: the exit code
    (0 all done, 1 some failed or were busy or --eval found a problem, 130 Ctrl-C; under a launcher rank 0's,
    0 on the other ranks)."""
    total: int
    mine: int
    done: tuple
    failures: tuple
    interrupted: bool
    code: int
    busy: tuple = ()


def shares_videos(job, names):
    """Whether the processes of this launch share each video (share_video) instead of claiming whole ones,
    and the videos -> (share, names). Sharing: under a launcher with fewer videos to do than processes, or
    --split-video; CascadeV only (another autoencoder runs whole clips). Rank 0 decides, and when sharing its
    list is every process's. Every process calls it."""
    if job.world == 1:
        return False, names
    s = job.settings
    share = not s.other_autoencoder and (s.split_video or len(names) < job.world)
    share, listed = WorkSplit.from_process_group(job.device).broadcast((share, names))
    return share, listed if share else names


def run_videos(job, names, out, share=False):
    """Build the pipeline once and reconstruct `names` (largest first): each video shared by the processes of
    the launch (share: shares_videos), or each through one_video with its folder claimed, by
    tools.recon.schedule.claim_videos; outcomes go into `out` (an Outcomes). -> interrupted (Ctrl-C)."""
    progress = job.rank == 0 and sys.stderr.isatty()
    try:
        with torch.no_grad():
            pipe = build_pipe(job)
            if pipe.device.type == 'cpu':
                release_freed_memory_to_os()      # the RSS follows the live buffers, flat in clip length
            if share:
                pipe.split = WorkSplit.from_process_group(pipe.device)
                if job.rank == 0:
                    print(f'{len(names)} video(s) for {job.world} processes: each one shared by all of them')
                share_all(job, names, lambda name: share_video(pipe, name, job, progress), out)
            else:
                claim_videos(job, names, lambda name: one_video(pipe, name, job, progress), out)
    except KeyboardInterrupt:
        remove_if_empty(job.output)
        return True
    except WeightsFormatError:            # weights that cannot be loaded: one line (recon.py: exit 2)
        remove_if_empty(job.output)
        raise
    return False


def share_all(job, names, attempt, out):
    """Every video of `names` in order through attempt (share_video) on every process; its line printed by the
    main process (a failure of another process is in the gathered summary)."""
    bar = tqdm(names, desc='videos', unit='video', disable=job.rank != 0 or None)
    for name in bar:
        result = attempt(name)
        if result is not None:
            out.add(name, *result)
            if job.rank == 0:                 # another process's failure is listed in the summary
                bar.write(f'failed: {result[1]}' if result[0] == 'failed' else result[1])


def run_eval(videos, output, device='auto', vmaf=False):
    """tools.evaluation on the outputs in `output` against `videos`, each through the frame plan in its
    done.json; results in output/.eval (tools.evaluation.matching.EVAL_DIR: no video's folder can have that
    name). -> 0, or 1 when it fails (one line) or skips or drops a video."""
    release_freed_memory_to_os(32 << 20)   # the metrics' per-frame maps reuse the heap instead of fresh mmaps
    try:
        result = evaluate(sorted(videos), str(output), out_dir=Path(output) / EVAL_DIR, device=device, vmaf=vmaf)
    except EvalError as e:
        print(f'eval: error: {e}', file=sys.stderr)
        return 1
    return 1 if result['skipped'] or result['dropped'] else 0


def run(settings):
    """Run the batch RunSettings describe -> BatchResult; prints what recon.py prints. UsageError /
    ConfigError / MissingWeightsError (one line) before any work."""
    job = prepare(settings)
    share, todo = shares_videos(job, largest_first(job, select(job, sorted(job.items))))
    out = Outcomes()
    interrupted = run_videos(job, todo, out, share) if todo else False
    done, total = tuple(out.done), len(job.items)
    if interrupted:
        complete = total - len(todo) + len(done) + len(out.skipped)
        print(f'\ninterrupted: {complete}/{total} videos complete in {job.output}; rerun the same command to '
              f'resume (complete videos are skipped, the interrupted one is redone)', file=sys.stderr)
        return BatchResult(total, out.mine, done, tuple(out.failed.values()), True, 130, tuple(out.busy.values()))
    failures, busy, gathered = gather_outcomes(out, job.world, lambda line: print(line, file=sys.stderr))
    code = 1 if failures or busy else 0
    remove_if_empty(job.output)                              # a batch that wrote nothing leaves no folder
    speaks = job.rank == 0 or not gathered                   # alone when the others cannot be reached
    if speaks:
        if failures:
            print(f'{len(failures)}/{total} failed:\n  ' + '\n  '.join(failures), file=sys.stderr)
        if busy:
            print(f'{len(busy)}/{total} not done, being written by another process (rerun to resume them):\n  '
                  + '\n  '.join(busy), file=sys.stderr)
        if not failures and not busy:
            print(f'{total}/{total} done in {job.output}')
        if settings.eval and not settings.decoding:
            code = max(code, run_eval(job.items.values(), job.output, settings.device or 'auto', settings.vmaf))
    return BatchResult(total, out.mine, done, failures, False, code if speaks else 0, busy)
