"""One video of a recon batch: its memory plan, its outputs and done.json, its line; done by this process
alone with its folder claimed (one_video), or shared by every process of a launch (share_video).

    outcome, line = one_video(pipe, name, job)      # 'done' | 'skipped' | 'busy' | 'failed', and its line

share_video: the main process (rank 0) claims the folder, decides (complete already, busy, or its memory
plan) and tells the others; then every process makes the same stage calls, each computing its share of the
frame chunks, DiT forwards and SVD decode chunks (models/parallel.py), and the main process writes every
file. A failure on any process stops the video on all of them at the same exchange (SplitAborted), the
failing process reports it, and the batch goes on with the next video.
"""
import json
import time
from dataclasses import replace

from tqdm.auto import tqdm

from models.autoencoders import autoencoder_record
from models.parallel import SplitAborted
from models.weights import dtype_name
from tools.files import write_text_atomic
from tools.recon.folders import clear_outputs, remove_if_empty
from tools.recon.autoencoder_memory import measure_autoencoder
from tools.recon.latents import read_latent_meta
from tools.recon.lock import FolderBusy, claim
from tools.recon.memory import HEADROOM, Workload, bytes_in_use, default_budget, gb, machine_memory, plan_memory
from tools.recon.records import DONE, DoneRecord, RenderInfo
from tools.recon.reconstruct import reconstruct, reconstruct_share, source_plan
from tools.recon.render import spatial_multiple
from tools.recon.schedule import up_to_date

# errors whose message already says what failed (others are prefixed with their type)
PLAIN_ERRORS = ('VideoReadError', 'ValueError', 'NonFiniteError', 'LatentError', 'PlanError')


def fit_memory(pipe, name, src, job):
    """Chunk frames, DiT tiles per call, SVD decode chunk/tiles and encoder look-ahead for one video under
    --max-memory (CUDA: the free device memory by default), printed (tools/recon/memory.py); the SVD tile size is
    set on pipe.vae. Another autoencoder: chunk frames and, for a causal one, the frames per window, from its
    memory measured at the video's frame size (tools/recon/autoencoder_memory.py). -> tools.recon.memory.
    MemoryPlan. PlanError (one line) when nothing fits the budget, or when even the smallest plan exceeds the
    machine's memory (tools.recon.machine.machine_memory), whatever the budget. Without --max-memory a plan
    that would not fit the machine's memory is made for it. None where another autoencoder's memory cannot be
    measured (one line says so)."""
    s, recon = job.settings, job.recon
    if s.decoding:
        frame_plan = read_latent_meta(src).plan
    else:
        frame_plan = source_plan(src, recon, spatial_multiple(pipe))[0]
    n = frame_plan.num_frames
    budget = s.max_memory if s.max_memory is not None else default_budget(pipe.device)
    w = Workload.from_plan(frame_plan, recon.interp * (n - 1) + 1, job.cfg, refine=not recon.preview_only,
                           metrics=not s.no_metrics, original=not s.decoding, device=pipe.device.type,
                           dtype=dtype_name(pipe.dtype))
    if s.other_autoencoder:
        limit = budget or machine_memory(pipe.device)
        room = None if limit is None else limit * (1 - HEADROOM) - bytes_in_use(pipe.device)
        fit = measure_autoencoder(pipe, frame_plan.model, room=room, frames=n,
                                  say=lambda line: print(f'{name}: {line}', flush=True))
        if fit is None:
            print(f'{name}: no memory plan for --autoencoder {s.autoencoder}: its peak cannot be measured on this '
                  f'machine (no /proc/self/clear_refs); --max-memory does not apply', flush=True)
            return None
        w = replace(w, refine=False, autoencoder=fit, vae_chunk=getattr(getattr(pipe, 'vae', None), 'decode_chunk', 4))
    memory_plan = plan_memory(w, budget, base=bytes_in_use(pipe.device), chunk_frames=s.chunk_frames,
                              limit=machine_memory(pipe.device))
    if getattr(pipe, 'vae', None) is not None and not s.other_autoencoder:
        pipe.vae.tile_size = memory_plan.settings.vae_tile
    asked = (f'budget {gb(budget)}' if budget else f'to fit the machine\'s {gb(memory_plan.budget)}'
             if memory_plan.budget else 'no --max-memory')
    print(f'{name}: {memory_plan.line()} ({asked})', flush=True)
    return memory_plan


def plan_arguments(memory_plan, job):
    """reconstruct()'s chunk and tile arguments from a MemoryPlan (None: --chunk-frames, the config's rest)."""
    mem = memory_plan.settings if memory_plan is not None else None
    if mem is None:
        return dict(chunk_frames=job.settings.chunk_frames)
    return dict(chunk_frames=mem.chunk_frames, vae_chunk=mem.vae_chunk, tile_batch=mem.dit_tile_batch,
                lookahead=mem.lookahead, window=mem.window)


def source_of(job, name):
    """reconstruct()'s source argument for video `name`: video=PATH, or latent_file=PATH with --decode-from."""
    return dict(latent_file=job.items[name]) if job.settings.decoding else dict(video=job.items[name])


def process(pipe, name, job, progress=False, memory_plan=False):
    """All outputs of one video (or one saved latent) in OUTPUT/name; done.json last. -> DoneRecord.
    memory_plan: the plan made already (share_video), else fit_memory makes it. Under a split pipe
    (pipe.split of several processes) done.json records how many processes shared the video and the bytes
    this process gathered from them."""
    t0 = time.time()
    src, out_dir, decoding = job.items[name], job.output / name, job.settings.decoding
    memory_plan = fit_memory(pipe, name, src, job) if memory_plan is False else memory_plan
    split = getattr(pipe, 'split', None)
    gathered = split.bytes_gathered if split is not None else 0
    clear_outputs(out_dir, keep=src if decoding else None)      # nothing of another run is taken for ours
    record = job.expected(name)
    info = reconstruct(pipe, out_dir, name=name, settings=job.recon, **plan_arguments(memory_plan, job),
                       metrics=not job.settings.no_metrics, progress=progress, warn=tqdm.write,
                       meta_extra={'config': record['config'], 'output_fps': job.settings.fps,
                                   'autoencoder': job.settings.autoencoder if job.settings.other_autoencoder else None},
                       **source_of(job, name))
    meta, timings, latent = info.pop('meta'), info.pop('timings'), info.pop('latent')
    if decoding and meta.get('config') != record['config']:
        tqdm.write(f"warning: {src}: encoded with {meta.get('config')}, decoded with {record['config']}")
    done = DoneRecord(name=name, source=meta['source'], render=RenderInfo.from_dict(info), latent=latent,
                      upscale=job.recon.upscale, interp=job.recon.interp, plan=meta['plan'], config=record['config'],
                      device=str(pipe.device), dtype=record['dtype'], settings=record,
                      memory_plan=memory_plan and memory_plan.to_dict(), stage_seconds=timings,
                      seconds=round(time.time() - t0, 2),
                      autoencoder=(autoencoder_record(pipe, job.recon.autoencoder_weights)
                                   if job.settings.other_autoencoder else None),
                      processes=split.world if split is not None else 1,
                      gathered_bytes=split.bytes_gathered - gathered if split is not None and not split.single
                      else None)
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


def claim_video(job, name):
    """Claim OUTPUT/name for this process -> (lock, None) to go ahead (a dead holder's claim is taken over, with
    one line naming it), or (lock or None, (outcome, line)) to stop: 'busy' (another process is writing it) or
    'skipped' (another process completed it meanwhile). OSError where the file system cannot lock."""
    folder = job.output / name
    try:
        lock = claim(folder)
    except FolderBusy as e:
        return None, ('busy', f'{name}: {e}; skipped — rerun to resume it')
    try:
        if up_to_date(job, name):
            return lock, ('skipped', f'{name}: completed by another process in {folder} meanwhile, skipped')
    except BaseException:
        lock.release()
        raise
    if lock.previous is not None:
        tqdm.write(f'{name}: taking over {folder} from {lock.previous}, which ended without finishing it; '
                   f'redoing it from scratch')
    return lock, None


def one_video(pipe, name, job, progress=False):
    """One video, its folder claimed for this process (claim_video) -> (outcome, line): 'done' and its summary
    line, 'skipped' (another process completed it meanwhile), 'busy' (another process is writing it) or
    'failed' and 'PATH: reason'. A folder left empty is removed; Ctrl-C propagates."""
    lock = None
    try:
        lock, stop = claim_video(job, name)
        return stop or ('done', summary_line(process(pipe, name, job, progress)))
    except Exception as e:                # a bad file, or one no plan fits --max-memory, must not stop the batch
        return 'failed', failure_line(job.items[name], e)
    finally:
        if lock is not None:
            lock.release()
        remove_if_empty(job.output / name)    # after the claim is released (its lock file removed)


def share_video(pipe, name, job, progress=False):
    """One video on every process of a launch (pipe.split) -> (outcome, line) as one_video on the main process;
    on the others None, or ('failed', line) when the failure was theirs. Every process calls it for the same
    videos in the same order."""
    split, folder = pipe.split, job.output / name
    lock, decision = None, None
    if split.main:
        lock, decision = _claim_and_plan(pipe, name, job)
    try:
        decision = split.broadcast(decision)
        if decision[0] != 'go':
            return decision if split.main else None
        memory_plan = decision[1]
        if split.main:
            done = process(pipe, name, job, progress, memory_plan=memory_plan)
            split.finish()
            return 'done', summary_line(done)
        if memory_plan is not None and pipe.vae is not None:
            pipe.vae.tile_size = memory_plan.settings.vae_tile                 # as fit_memory set it on rank 0
        reconstruct_share(pipe, name=name, settings=job.recon, **plan_arguments(memory_plan, job),
                          **source_of(job, name))
        split.finish()
        return None
    except SplitAborted:                  # another process failed: it reports the reason
        return None
    except Exception as e:
        split.abort()
        return 'failed', failure_line(job.items[name], e)
    finally:
        if lock is not None:
            lock.release()
            remove_if_empty(folder)


def _claim_and_plan(pipe, name, job):
    """The main process's part before a shared video: claim its folder (claim_video) and decide -> (lock or
    None, decision): ('go', MemoryPlan or None), or ('skipped' | 'busy' | 'failed', line)."""
    lock = None
    try:
        lock, stop = claim_video(job, name)
        return lock, stop or ('go', fit_memory(pipe, name, job.items[name], job))
    except Exception as e:
        return lock, ('failed', failure_line(job.items[name], e))
