"""The training run of the refiner DiT: set up → data → models → resume → the loop → the last checkpoint.

train(cfg, work_dir, resume) reads straight through. The work dir is new or empty, or resumed, and locked
for the run (tools.training.workdir). The loop: train_step (tools.training.step) → non-finite
policy → EMA → log → checkpoint / preview → stop signals. The lr is optimizer.lr scaled to the effective batch
by optimizer.auto_lr (PixArt's sqrt rule) with a linear warm-up (tools.training.optim); the DiT starts from
train.load_from (the release) or, with None, from scratch. The data order comes from (train.seed, epoch) and
every draw of a step from (train.seed, iteration, rank), so a resumed run repeats an uninterrupted one exactly.
Runs on one process or under `accelerate launch` (DDP / FSDP, or gloo processes on CPU).
"""
import copy
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

from diffusion import create_diffusion
from models.dit import VideoDiT
from models.weights import (WeightsFormatError, build_compressor, build_vae, check_weights, load_dit_checkpoint,
                            random_stages, resolve_path)
from tools.config import ConfigError
from tools.training import checkpoint as ckpt
from tools.training.data import BadSamples, DataError, build_dataset, build_loader, load_clip
from tools.training.log import RunLog, StopSignal, close_logging, setup_logging
from tools.training.optim import build_optimizer, effective_lr, lr_at
from tools.training.preview import write_preview
from tools.training.step import ema_update, nonfinite_policy, train_step
from tools.training.workdir import WorkDir, WorkDirError, check_usable
from tools.video.read import VideoReadError

log = logging.getLogger('cascadev.train')
MP_DTYPES = {'no': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


class TrainingError(RuntimeError):
    """The run cannot go on (repeated non-finite steps, ...); the message says why and what to change."""


class UsageError(ValueError):
    """The run cannot start: the config, weights, data lists or --resume need fixing (exit code 2)."""


@dataclass
class Run:
    """Everything a step needs: the config, the accelerator, the work dir, the effective lr and the modules."""
    cfg: object
    accelerator: Accelerator
    work_dir: Path
    claim: WorkDir                        # the lock on work_dir (main process)
    dtype: torch.dtype                    # the frozen encoders' dtype (mixed precision)
    lr: float                             # effective lr (optimizer.lr after auto_lr), before warm-up
    model: torch.nn.Module = None         # the DiT being trained (wrapped by accelerate after resume_or_start)
    ema: torch.nn.Module = None
    optimizer: torch.optim.Optimizer = None
    stages: dict = None                   # frozen 'compressor' and 'vae' (absent with cached latents), 'dtype'
    diffusion: object = None

    @property
    def is_main(self):
        return self.accelerator.is_main_process


# ---- set up: the run, data, models, resume -----------------------------------------------------------

@contextmanager
def usage_errors():
    """Errors while setting up (config, weights, data lists, --resume) are the user's to fix: UsageError."""
    try:
        yield
    except (ConfigError, DataError, ckpt.CheckpointError, FileNotFoundError, WeightsFormatError,
            VideoReadError, WorkDirError) as e:
        raise UsageError(str(e)) from e


def any_rank(accelerator, flag):
    """True on every rank when `flag` is true on any (one all-reduce)."""
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), 'sum')[0] > 0)


def claim_work_dir(accelerator, claim, resume):
    """The main process claims the work dir (tools.training.workdir: new, empty or --resume; locked); every
    rank raises the same WorkDirError when it cannot."""
    error = None
    if accelerator.is_main_process:
        try:
            claim.claim(resume)
            (claim.path / 'checkpoints').mkdir(exist_ok=True)
        except WorkDirError as e:
            error = e
    if any_rank(accelerator, error is not None):
        raise error or WorkDirError(f"--work-dir {claim.path}: the main process cannot use it (see its message)")


def set_up_run(cfg, claim, resume):
    """Accelerator (DDP / FSDP, or gloo processes on CPU), the claimed work dir, logging, seeds."""
    tc = cfg.train
    # cpu=True without CUDA also makes several launched CPU processes one gloo group (accelerate's MULTI_CPU)
    use_cpu = cfg.get('device', 'auto') == 'cpu' or not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, cpu=use_cpu)
    claim_work_dir(accelerator, claim, resume)
    setup_logging(claim.path, accelerator.is_main_process)
    if accelerator.device.type == 'cpu' and tc.mixed_precision == 'fp16':
        log.warning("train.mixed_precision='fp16' on CPU is slow and has no loss scaling (gradients may "
                    "underflow); use 'no' or 'bf16' on CPU")
    set_seed(tc.seed)
    lr, _ = effective_lr(cfg, accelerator.num_processes)
    return Run(cfg, accelerator, claim.path, claim, MP_DTYPES.get(accelerator.mixed_precision, torch.float32), lr)


def build_data(run):
    """(dataset, bad-file tracker, preview clip or None); the preview clip is held out of training unless
    data.eval_video names one."""
    cfg = run.cfg
    hold_out = bool(cfg.train.eval_every) and not cfg.data.get('eval_video')
    dataset, missing, total, held_out = build_dataset(cfg, hold_out_last=hold_out)
    bad = BadSamples(total, cfg.data.max_bad_fraction, run.work_dir / 'bad_videos.txt')
    bad.add(missing)
    eval_clip = None
    if cfg.train.eval_every and run.is_main:
        path = cfg.data.get('eval_video') or held_out or dataset.paths[0]
        eval_clip = load_clip(path, cfg.data, 0, False)
        log.info(f"preview clip: {path}" + ('' if path != dataset.paths[0] else
                                            ' (the only video, so it is also trained on)'))
    return dataset, bad, eval_clip


def check_run_weights(cfg, is_main=True):
    """Check every weight file the run reads (all missing ones named at once) -> the frozen encoders it
    builds: ('compressor', 'vae'), or none for cached latents without previews."""
    tc, cached = cfg.train, bool(cfg.data.get('cached_latents'))
    encoders = ('compressor', 'vae') if not cached or (tc.eval_every and is_main) else ()
    load_from = tc.get('load_from')
    check_weights(cfg, encoders, {'train.load_from': (load_from, 'dit', 'or train from scratch with '
                                                      'train.load_from=None')} if load_from else None)
    return encoders


def new_dit(cfg, device=None):
    """The DiT of cfg.model at its training init (on `device`; 'meta': no memory); ConfigError (one line) for
    a model the config's keys cannot build."""
    try:
        with torch.device(device or 'cpu'):
            return VideoDiT.from_config(cfg.model)
    except ValueError as e:
        raise ConfigError(f"{cfg.get('config_path', 'config')}: {e}") from None


def check_run(cfg, work_dir=None, resume=None):
    """What a run checks before it starts, without starting it (train_vae.py --dry-run): the work dir (new,
    empty or resumed), every weight file, the model, the data lists (or the latent cache) and a --resume folder.
    UsageError (one line) when the run could not start."""
    with usage_errors():
        if work_dir is not None:
            check_usable(work_dir, resume)
        check_run_weights(cfg)
        new_dit(cfg, 'meta')
        hold_out = bool(cfg.train.eval_every) and not cfg.data.get('eval_video')
        _, missing, total, _ = build_dataset(cfg, hold_out_last=hold_out)
        BadSamples(total, cfg.data.max_bad_fraction).add(missing)
        if resume not in (None, 'auto'):
            ckpt.read_manifest(resume)


def build_models(run):
    """Fill run.model (train.load_from, else random init), run.ema, the frozen encoders (skipped for cached
    latents without previews), the diffusion and the optimizer; every missing weight file is named at once."""
    cfg, tc, acc = run.cfg, run.cfg.train, run.accelerator
    encoders = check_run_weights(cfg, run.is_main)
    load_from = tc.get('load_from')
    model = new_dit(cfg)
    random = [s for s in encoders if s in random_stages(cfg)]
    if random and run.is_main:
        log.warning(f"random_init: the frozen {' and '.join(random)} have seeded random weights, so the DiT "
                    f"trained here is meaningless outside this config (tests and demos only)")
    if load_from:
        try:
            load_dit_checkpoint(model, resolve_path(load_from))
        except ValueError as e:  # wrong format or a checkpoint of another model size: one line
            raise ConfigError(f"train.load_from: {e}") from None
        log.info(f"initialised the DiT from {load_from}")
    if tc.get('ema_decay') and acc.distributed_type == DistributedType.FSDP:
        raise ConfigError(f"{cfg.get('config_path', 'config')}: train.ema_decay is not supported with FSDP "
                          f"(the EMA would need the full weights on every rank); set train.ema_decay=None or use DDP")
    run.model = model.to(acc.device).train()
    run.ema = copy.deepcopy(run.model).requires_grad_(False).eval() if tc.get('ema_decay') else None
    run.stages = {'dtype': run.dtype, **{name: build(cfg, acc.device, run.dtype) for name, build in
                                         (('compressor', build_compressor), ('vae', build_vae)) if name in encoders}}
    run.diffusion = create_diffusion(**{k: cfg.diffusion[k] for k in ('num_timesteps', 'beta_start', 'beta_end',
                                                                       'learn_sigma')})
    run.optimizer = build_optimizer(run.model.parameters(), cfg, run.lr)


def resume_or_start(run, resume):
    """Checkpoint weights into the plain modules, wrap them (DDP / FSDP), then the optimizer, scaler and RNG
    state -> {'step', 'iteration', 'nonfinite_in_row', 'resumed'}."""
    acc, root = run.accelerator, run.work_dir / 'checkpoints'
    start = {'step': 0, 'iteration': 0, 'nonfinite_in_row': 0}
    found = ckpt.resolve_resume(root, resume, log.warning) if resume else None
    if resume == 'auto' and found is None:
        log.info(f"--resume auto: no checkpoint in {root}; starting from scratch")
    if found:
        folder, state, broken = found
        ckpt.load_weights(folder, run.model, run.ema)
        acc.wait_for_everyone()  # every rank has chosen before broken checkpoints move
        if run.is_main:
            for bad_folder, _ in broken:
                log.warning(f"moved the broken checkpoint to {ckpt.set_aside(bad_folder)}")
    run.model, run.optimizer = acc.prepare(run.model, run.optimizer)
    if not found:
        return dict(start, resumed=False)
    ckpt.load_training_state(acc, folder, state, run.optimizer)
    world_batch = acc.num_processes * run.cfg.train.batch_size
    if state.get('world_batch') != world_batch:
        log.warning(f"{folder}: saved with a global batch of {state.get('world_batch')}, now {world_batch}: the "
                    f"data order (and the auto_lr-scaled lr) after the resume differ from the original run")
    log.info(f"resumed from {folder} at step {state['step']} (iteration {state['iteration']})")
    return dict({k: state[k] for k in start}, resumed=True)


def start_run(cfg, work_dir, resume):
    """Claim the work dir, set up, data, models and resume, then save the final config.py -> (run, dataset,
    bad-file tracker, preview clip, start). UsageError when the run cannot start; what it wrote into a new or
    empty work dir is then removed, and an earlier run's folder is left as it was."""
    claim = WorkDir(work_dir)
    try:
        with usage_errors():
            run = set_up_run(cfg, claim, resume)
            dataset, bad, eval_clip = build_data(run)
            build_models(run)
            start = resume_or_start(run, resume)
    except UsageError:
        close_logging()
        claim.discard()                              # a run that cannot start leaves nothing behind
        raise
    except BaseException:
        claim.release()
        raise
    if run.is_main:
        cfg.dump(str(run.work_dir / 'config.py'))
    return run, dataset, bad, eval_clip, start


def log_start(run, dataset, per_epoch):
    """The start-up lines: data, model size, and how the lr follows from the effective batch."""
    cfg, acc = run.cfg, run.accelerator
    n_params = sum(p.numel() for p in run.model.parameters())
    cached = bool(cfg.data.get('cached_latents'))
    source = 'cached latents' if cached else f"decoded on the fly, data.transform={cfg.data.get('transform', 'crop')!r}"
    log.info(f"{len(dataset)} training videos ({source}); {per_epoch} batches per epoch; DiT {n_params / 1e6:.1f} M "
             f"parameters; mixed precision {acc.mixed_precision}")
    auto = cfg.optimizer.get('auto_lr')
    _, batch = effective_lr(cfg, acc.num_processes)
    rule = (f"auto_lr rule {auto['rule']!r} (base batch {auto['base_batch_size']})" if auto else
            "auto_lr None (lr as given)")
    log.info(f"lr: base {cfg.optimizer.lr:g}, {rule}, {acc.num_processes} process(es) × batch "
             f"{cfg.train.batch_size} = effective batch {batch}, effective lr {run.lr:.4g} ({cfg.optimizer.type}, "
             f"warm-up {cfg.lr_schedule.get('warmup_steps', 0)} steps)")


# ---- checkpoints, previews, stop signals -------------------------------------------------------------

def save(run, step, iteration, in_row, per_epoch):
    """A checkpoint of this step on all ranks (tools.training.checkpoint.save_checkpoint); returns `step`."""
    cfg = run.cfg
    warmup = cfg.lr_schedule.get('warmup_steps', 0) or 0
    state = {'step': step, 'iteration': iteration, 'nonfinite_in_row': in_row, 'epoch': iteration // per_epoch,
             'world_batch': run.accelerator.num_processes * cfg.train.batch_size, 'seed': cfg.train.seed,
             'scheduler': {'type': 'linear_warmup', 'warmup_steps': warmup, 'base_lr': cfg.optimizer.lr,
                           'auto_lr': cfg.optimizer.get('auto_lr'), 'effective_lr': run.lr,
                           'lr': lr_at(step, run.lr, warmup)}}
    ckpt.save_checkpoint(run.accelerator, run.work_dir / 'checkpoints', step, run.model, run.ema, run.optimizer,
                         state, cfg.train.get('keep_last', 3))
    return step


def preview(run, clip, step):
    """WORK_DIR/previews/step_N.mp4 of the held-out clip with the EMA (or the model) being trained."""
    path = run.work_dir / 'previews' / f'step_{step:08d}.mp4'
    path.parent.mkdir(exist_ok=True)
    model = run.ema if run.ema is not None else run.accelerator.unwrap_model(run.model)
    write_preview(path, model, dict(run.stages, device=run.accelerator.device), clip, run.cfg, step)
    log.info(f"wrote preview {path}")


def save_and_preview(run, step, iteration, in_row, per_epoch, clip):
    """After an optimizer step: the checkpoint (every train.save_model_steps, and at an epoch's end with
    train.save_epoch_end) and the preview (every train.eval_every, main process) -> the saved step or None."""
    tc = run.cfg.train
    saved = None
    epoch_end = iteration % per_epoch == 0 and tc.get('save_epoch_end', True)
    if step % tc.save_model_steps == 0 or epoch_end:
        saved = save(run, step, iteration, in_row, per_epoch)
    if tc.eval_every and step % tc.eval_every == 0 and run.is_main:
        preview(run, clip, step)
    return saved


def stop_requested(run, stop, data_error):
    """True on every rank once any rank got SIGTERM / SIGINT; every rank raises once any found too many bad videos."""
    flags = torch.tensor([float(stop.received is not None), float(data_error is not None)],
                         device=run.accelerator.device)
    flags = run.accelerator.reduce(flags, 'sum')
    if flags[1] > 0:
        raise data_error or DataError("another rank found too many bad videos (see its log and "
                                      f"{run.work_dir / 'bad_videos.txt'})")
    if flags[0] > 0:
        log.warning(f"{stop.received or 'stop signal on another rank'}: saving a checkpoint and exiting")
    return bool(flags[0] > 0)


def note_bad_files(bad, batch):
    """Count the batch's replaced bad files; the DataError once there are too many (raised on every rank later)."""
    try:
        bad.add(batch['bad'])
    except DataError as e:
        return e
    return None


# ---- the loop ----------------------------------------------------------------------------------------

def run_loop(run, loader, bad, eval_clip, start, per_epoch, callback=None):
    """Optimizer steps from `start` until train.max_steps (when set) or train.num_epochs, a stop signal or
    too many bad files; the last step is always saved -> (step, iteration, [(iteration, loss)], saved step)."""
    tc = run.cfg.train
    max_steps = tc.max_steps if tc.max_steps is not None else math.inf   # when set, replaces num_epochs
    total_iters = tc.num_epochs * per_epoch if tc.max_steps is None else math.inf
    step, iteration, in_row = start['step'], start['iteration'], start['nonfinite_in_row']
    last_saved = step if start['resumed'] else None
    if step >= max_steps or iteration >= total_iters:
        log.info(f'nothing to train: the run is at step {step} (iteration {iteration}), which already reaches '
                 f'train.max_steps={tc.max_steps} / train.num_epochs={tc.num_epochs}; raise them to go on')
    losses, data_error = [], None
    runlog, stop = RunLog(run, step, min(max_steps, total_iters)), StopSignal()
    try:
        batches = iter(loader)
        while step < max_steps and iteration < total_iters:
            batch = next(batches)
            data_error = data_error or note_bad_files(bad, batch)   # bad files were replaced: the step still runs
            result = train_step(run, batch, step, iteration)
            action, in_row = nonfinite_policy(result.loss_ok, result.grad_ok, result.scaler_skipped, in_row,
                                              tc.max_nonfinite)
            iteration += 1
            if action == 'step':
                step += 1
                if run.ema is not None:
                    ema_update(run.ema, run.accelerator.unwrap_model(run.model), tc.ema_decay)
            losses.append((iteration, result.loss))
            runlog.step(step, iteration, result, action, in_row)
            if action == 'stop':
                raise TrainingError(f"{in_row} non-finite steps in a row (train.max_nonfinite): lower optimizer.lr "
                                    f"or train.grad_clip, try mixed_precision='bf16', or check the data; resume "
                                    f"from the last checkpoint in {run.work_dir / 'checkpoints'} (--resume auto)")
            if callback is not None:
                callback({'step': step, 'iteration': iteration, 'action': action, 'loss': result.loss,
                          'rank': run.accelerator.process_index, 'model': run.accelerator.unwrap_model(run.model),
                          'ema': run.ema})
            if action == 'step':
                saved = save_and_preview(run, step, iteration, in_row, per_epoch, eval_clip)
                last_saved = saved if saved is not None else last_saved
            runlog.restart_clock()
            if stop_requested(run, stop, data_error):
                break
        runlog.line()                                # the steps since the last log line
        if last_saved != step:
            last_saved = save(run, step, iteration, in_row, per_epoch)
    finally:
        stop.restore()
        runlog.close()
    return step, iteration, losses, last_saved


def train(cfg, work_dir, resume=None, callback=None):
    """Train the DiT of `cfg` (an mmengine Config, tools.config.load_config) in `work_dir`.

    work_dir gets config.py, train.log, log.jsonl, tb/, checkpoints/step_N/, previews/ and .lock; it must be
    new or empty unless `resume` is given: a checkpoint folder, or 'auto' (the newest complete one; none found:
    from scratch). While the run lasts it holds the lock (tools.training.workdir): a second training in the
    same folder is refused. `callback`, if given,
    is called on every rank after each iteration with {'step', 'iteration', 'action' ('step' | 'skip' |
    'overflow'), 'loss' (this rank's mean, float), 'rank', 'model' (the unwrapped DiT), 'ema' (or None)}.
    Returns {'step', 'iteration', 'losses': [(iteration, loss)], 'checkpoint': the last saved folder or None}.
    Raises UsageError (cannot start: config, weights, data lists, --resume, a used or locked work dir),
    TrainingError (repeated non-finite steps), DataError (too many bad videos), CheckpointError,
    VideoReadError, OSError.
    """
    run, dataset, bad, eval_clip, start = start_run(cfg, work_dir, resume)
    acc = run.accelerator
    try:
        loader, sampler = build_loader(dataset, cfg, acc.process_index, acc.num_processes, start['iteration'])
        per_epoch = sampler.batches_per_epoch
        log_start(run, dataset, per_epoch)
        step, iteration, losses, last_saved = run_loop(run, loader, bad, eval_clip, start, per_epoch, callback)
        acc.wait_for_everyone()
    finally:
        run.claim.release()
    return {'step': step, 'iteration': iteration, 'losses': losses,
            'checkpoint': str(ckpt.step_dir(run.work_dir / 'checkpoints', last_saved)) if last_saved is not None
            else None}
