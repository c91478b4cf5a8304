"""Train the CascadeV refiner DiT (the decoder half of the video autoencoder) with the released model's recipe.

    python train_vae.py CONFIG --work-dir DIR [--cfg-options k=v ...] [--resume PATH|auto] [--dry-run]
    accelerate launch --num_processes 8 train_vae.py CONFIG --work-dir DIR     # multi-GPU (bash train_vae.sh)

One optimizer step, as the release was trained (README "Training"): a clip of num_frames_per_video frames at
time_stride, its start uniform over [0, N − stride·frames] → data.transform ('crop': the centred sample_size²
window at native scale, zero-padded where smaller) → random flip of the whole clip → SVD-VAE posterior sample
(vae.sample_posterior; else the mean) × scale_factor = x0 (4 ch) → compressor latent, ×sr_scale bilinear,
× scale_factor = x_ref (16 ch) → one timestep per clip → IDDPM loss (MSE(ε) + VB, diffusion/) on
cat[x_t, x_ref]. With probability train.joint_training the batch trains "as images" (attention inside each
frame). The lr is optimizer.lr scaled to the effective batch by optimizer.auto_lr (PixArt's sqrt rule), with
a linear warm-up; the DiT starts from train.load_from (the release) or, with None, from scratch.

main(cfg) reads straight through: set up the run → data → models → resume → loop (train_step → non-finite
policy → log → checkpoint / preview). Every random draw of a step comes from a generator seeded by
(train.seed, iteration, rank) and the data order from (train.seed, epoch), so a resumed run repeats an
uninterrupted one exactly.
"""
import argparse
import copy
import logging
import math
import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

from diffusion import create_diffusion
from models.dit import build_dit, load_dit_checkpoint
from models.pipeline import CascadeV, upsample_latent
from models.weights import WeightsFormatError, build_compressor, build_vae, check_weights, resolve_path
from tools.training import checkpoint as ckpt
from tools.config import ConfigError, add_cfg_options, load_config
from tools.training.data import BadSamples, DataError, build_dataset, build_loader, derive_seed, load_clip
from tools.training.log import RunLog, StopSignal, close_logging, setup_logging
from tools.video.read import VideoReadError
from tools.video.write import write_video
from tools.video.panels import side_by_side

log = logging.getLogger('cascadev.train')
MP_DTYPES = {'no': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
RANK_DUMP_ENV = 'CASCADEV_TEST_RANK_DUMP'   # test hook: when set, every rank writes its final weights to WORK_DIR


class TrainingError(RuntimeError):
    """The run cannot go on (repeated non-finite steps, ...); the message says why and what to change."""


class UsageError(ValueError):
    """The run cannot start: the config, weights, data lists or --resume need fixing (exit code 2)."""


# ---- pieces of one step ------------------------------------------------------------------------------

@torch.no_grad()
def encode_batch(batch, stages, device):
    """A batch of clips {'video'} or cached latents {'mean','std','ref'} -> (mean, std, ref) in fp32 on device."""
    if 'mean' in batch:
        return tuple(batch[k].to(device, torch.float32) for k in ('mean', 'std', 'ref'))
    video = batch['video'].to(device, stages['dtype'])             # (B, 3, T, H, W)
    mean, std = stages['vae'].encode_moments(video)                # (B, 4, T, H/8, W/8), scaled
    ref = stages['compressor'].encode(video)                       # (B, 16, T, H/32, W/32), raw
    return mean.float(), std.float(), ref.float()


def draw_step(moments, cfg, seed):
    """x0, x_ref and this step's random draws (one timestep per clip) from a generator seeded by `seed`."""
    mean, std, ref = moments
    g = torch.Generator().manual_seed(seed)
    B = mean.shape[0]
    as_images = bool(torch.rand((), generator=g) < cfg.train.joint_training)
    t = torch.randint(0, cfg.diffusion.num_timesteps, (B,), generator=g).to(mean.device)
    noise = torch.randn(mean.shape, generator=g).to(mean.device)
    x0 = mean
    if cfg.vae.get('sample_posterior', False):                     # x0 = mean + std·ε, ε from this step's draws
        x0 = mean + std * torch.randn(mean.shape, generator=g).to(mean.device)
    x_ref = upsample_latent(ref, cfg.sr_scale, cfg.scale_factor)   # (B, 16, T, H/8, W/8)
    return dict(x0=x0, x_ref=x_ref, t=t, noise=noise, as_images=as_images)


def compute_losses(model, diffusion, inputs):
    """Per-clip IDDPM terms {'loss', 'mse', 'vb'} (B,) for the inputs of draw_step."""
    return diffusion.training_losses(model, inputs['x0'], inputs['x_ref'], inputs['t'], noise=inputs['noise'],
                                     model_kwargs={'as_images': inputs['as_images']})


def effective_lr(cfg, world_size):
    """(lr, effective batch): optimizer.lr scaled by optimizer.auto_lr to world_size × train.batch_size.

    PixArt's auto_lr: rule 'sqrt' gives lr·√(B / base_batch_size) (the release: 2e-5 → 2.5e-6 at B = 4,
    7.1e-6 at B = 32), 'linear' lr·B / base_batch_size; auto_lr None leaves optimizer.lr as it is.
    """
    batch = world_size * cfg.train.batch_size
    auto = cfg.optimizer.get('auto_lr')
    if not auto:
        return float(cfg.optimizer.lr), batch
    ratio = batch / auto['base_batch_size']
    return float(cfg.optimizer.lr) * (math.sqrt(ratio) if auto['rule'] == 'sqrt' else ratio), batch


def lr_at(step, lr, warmup_steps):
    """Linear warm-up to `lr` over warmup_steps optimizer steps, then constant."""
    return lr * (min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)


def build_optimizer(params, cfg, lr):
    """CAME (Luo et al. 2023; betas/eps from the config) or AdamW (betas[:2]; eps[0] when a tuple is given)."""
    o = cfg.optimizer
    if o.type == 'CAME':
        from came_pytorch import CAME
        return CAME(params, lr=lr, betas=tuple(o.betas), eps=tuple(o.eps), weight_decay=o.weight_decay)
    if o.type == 'AdamW':
        eps = o.eps[0] if isinstance(o.eps, (list, tuple)) else o.eps
        eps = eps if eps >= 1e-12 else 1e-8   # CAME's 1e-30 would make Adam's update unbounded
        return torch.optim.AdamW(params, lr=lr, betas=tuple(o.betas[:2]), eps=eps, weight_decay=o.weight_decay)
    raise ConfigError(f"{cfg.get('config_path', 'config')}: optimizer.type={o.type!r}; use 'CAME' or 'AdamW'")


@torch.no_grad()
def ema_update(ema, model, decay):
    """ema ← decay·ema + (1 − decay)·model, parameter by parameter."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().to(e.dtype), 1 - decay)


def nonfinite_policy(loss_ok, grad_ok, scaler_skipped, in_row, max_in_row):
    """What a step's finiteness means -> (action, non-finite steps in a row).

    'step': the update counts. 'overflow': fp16's GradScaler skipped it and lowered its scale (not a fault).
    'skip': a non-finite loss (on any rank) or gradient norm; no update. 'stop': max_in_row skips in a row.
    """
    if loss_ok and grad_ok and not scaler_skipped:
        return 'step', 0
    if loss_ok and scaler_skipped:
        return 'overflow', in_row
    return ('stop' if in_row + 1 >= max_in_row else 'skip'), in_row + 1



# ---- preview ----------------------------------------------------------------------------------------

@torch.no_grad()
def write_preview(path, model, stages, clip, cfg, step):
    """Reconstruct the held-out clip with the models being trained (models/pipeline.CascadeV); write
    original | reconstruction side by side as an mp4."""
    pipe = CascadeV(cfg, compressor=stages['compressor'], dit=model, vae=stages['vae'], device=stages['device'],
                    dtype=stages['dtype'])
    was_training = model.training
    model.eval()
    try:
        recon = pipe.decode(pipe.encode(clip[None].to(stages['dtype'])), steps=cfg.sampling.steps,
                            scheduler=cfg.sampling.scheduler, seed=cfg.sampling.seed)[0]   # (3, T, H, W)
    finally:
        model.train(was_training)
    panel = side_by_side([clip.float(), recon.cpu()], ['held-out clip', f'reconstruction, step {step}'])
    write_video(path, panel, fps=8)


# ---- the run: set up, data, models, resume ------------------------------------------------------------

@dataclass
class Run:
    """Everything a step needs: the config, the accelerator, the work dir, the effective lr and the modules."""
    cfg: object
    accelerator: Accelerator
    work_dir: Path
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


@contextmanager
def usage_errors():
    """Errors while setting up (config, weights, data lists, --resume) are the user's to fix: UsageError."""
    try:
        yield
    except (ConfigError, DataError, ckpt.CheckpointError, FileNotFoundError, WeightsFormatError,
            VideoReadError) as e:
        raise UsageError(str(e)) from e


def set_up_run(cfg, work_dir):
    """Accelerator (DDP / FSDP, or gloo processes on CPU), work dir with the final config.py, logging, seeds."""
    tc = cfg.train
    # cpu=True without CUDA also makes several launched CPU processes one gloo group (accelerate's MULTI_CPU)
    use_cpu = cfg.get('device', 'auto') == 'cpu' or not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, cpu=use_cpu)
    work_dir = Path(work_dir)
    if accelerator.is_main_process:
        (work_dir / 'checkpoints').mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    setup_logging(work_dir, accelerator.is_main_process)
    if accelerator.is_main_process:
        cfg.dump(str(work_dir / 'config.py'))
    if accelerator.device.type == 'cpu' and tc.mixed_precision == 'fp16':
        log.warning("train.mixed_precision='fp16' on CPU is slow and has no loss scaling (gradients may "
                    "underflow); use 'no' or 'bf16' on CPU")
    set_seed(tc.seed)
    lr, _ = effective_lr(cfg, accelerator.num_processes)
    return Run(cfg, accelerator, work_dir, MP_DTYPES.get(accelerator.mixed_precision, torch.float32), lr)


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


def build_models(run):
    """Fill run.model (train.load_from, else random init), run.ema, the frozen encoders (skipped for cached
    latents without previews), the diffusion and the optimizer; every missing weight file is named at once."""
    cfg, tc, acc = run.cfg, run.cfg.train, run.accelerator
    cached = bool(cfg.data.get('cached_latents'))
    encoders = ('compressor', 'vae') if not cached or (tc.eval_every and run.is_main) else ()
    load_from = tc.get('load_from')
    check_weights(cfg, encoders, {'train.load_from': (load_from, 'dit', 'or train from scratch with '
                                                      'train.load_from=None')} if load_from else None)
    model = build_dit(cfg.model)
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


# ---- one step, its log, checkpoints and previews -----------------------------------------------------

@dataclass
class StepResult:
    terms: dict                           # per-clip 'loss', 'mse', 'vb' (B,) of this rank
    loss: float                           # this rank's mean loss
    grad_norm: float
    lr: float
    loss_ok: bool                         # finite on every rank
    grad_ok: bool
    scaler_skipped: bool                  # fp16: the GradScaler skipped the update


def train_step(run, batch, step, iteration):
    """Forward and backward on this rank's batch, then the optimizer step unless a loss (any rank) or the
    gradient norm is non-finite (under fp16 the GradScaler decides) -> StepResult."""
    cfg, acc = run.cfg, run.accelerator
    lr = lr_at(step, run.lr, cfg.lr_schedule.get('warmup_steps', 0) or 0)
    for group in run.optimizer.param_groups:
        group['lr'] = lr
    moments = encode_batch(batch, run.stages, acc.device)
    inputs = draw_step(moments, cfg, derive_seed(cfg.train.seed, iteration, acc.process_index))
    with acc.autocast():
        terms = compute_losses(run.model, run.diffusion, inputs)
    loss = terms['loss'].mean()
    acc.backward(loss)   # every rank, always: DDP ranks stay in lock-step
    grad_norm = acc.clip_grad_norm_(run.model.parameters(), cfg.train.grad_clip or math.inf)
    loss_ok = torch.isfinite(acc.reduce(loss.detach(), 'sum')).item()
    grad_ok = torch.isfinite(torch.as_tensor(grad_norm)).item()
    if acc.scaler is not None or (loss_ok and grad_ok):
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    skipped = acc.scaler is not None and acc.optimizer_step_was_skipped
    return StepResult(terms, loss.item(), float(grad_norm), lr, loss_ok, grad_ok, skipped)


def save(run, step, iteration, in_row, per_epoch):
    """A checkpoint of this step on all ranks (see save_checkpoint); returns `step`."""
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


# ---- main -------------------------------------------------------------------------------------------

def main(cfg, work_dir, resume=None):
    """Train; return {'step', 'iteration', 'losses': [(iteration, loss)], 'checkpoint'}."""
    tc = cfg.train
    fresh = not Path(work_dir).exists()
    try:
        with usage_errors():
            run = set_up_run(cfg, work_dir)
            dataset, bad, eval_clip = build_data(run)
            build_models(run)
            start = resume_or_start(run, resume)
    except UsageError:
        if fresh:                                    # a run that cannot start leaves no work dir it created
            close_logging()
            shutil.rmtree(work_dir, ignore_errors=True)
        raise
    loader, sampler = build_loader(dataset, cfg, run.accelerator.process_index, run.accelerator.num_processes,
                                   start['iteration'])
    per_epoch = sampler.batches_per_epoch
    max_steps = tc.max_steps if tc.max_steps is not None else math.inf   # when set, replaces num_epochs
    total_iters = tc.num_epochs * per_epoch if tc.max_steps is None else math.inf
    log_start(run, dataset, per_epoch)

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
            epoch_end = iteration % per_epoch == 0 and tc.get('save_epoch_end', True)
            if action == 'step' and (step % tc.save_model_steps == 0 or epoch_end):
                last_saved = save(run, step, iteration, in_row, per_epoch)
            if action == 'step' and tc.eval_every and step % tc.eval_every == 0 and run.is_main:
                preview(run, eval_clip, step)
            runlog.restart_clock()
            if stop_requested(run, stop, data_error):
                break
        if last_saved != step:
            last_saved = save(run, step, iteration, in_row, per_epoch)
    finally:
        stop.restore()
        runlog.close()
    if os.environ.get(RANK_DUMP_ENV):
        ckpt.write_tensors(run.work_dir, f'debug_rank{run.accelerator.process_index}.safetensors',
                           run.accelerator.unwrap_model(run.model).state_dict())
    run.accelerator.wait_for_everyone()
    return {'step': step, 'iteration': iteration, 'losses': losses,
            'checkpoint': str(ckpt.step_dir(run.work_dir / 'checkpoints', last_saved)) if last_saved is not None
            else None}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='config file, e.g. configs/s1024.effn-f32.py')
    p.add_argument('--work-dir', help='run folder: config.py, checkpoints/, tb/, previews/, logs')
    add_cfg_options(p)
    p.add_argument('--resume', metavar='PATH|auto',
                   help="a checkpoint folder (WORK_DIR/checkpoints/step_N), or 'auto' for the newest complete one")
    p.add_argument('--dry-run', action='store_true', help='print the final config and exit')
    args = p.parse_args(argv)
    if not args.work_dir and not args.dry_run:
        p.error('--work-dir DIR is required (the run folder; e.g. --work-dir work_dirs/my_run)')
    return args


def cli(argv=None):
    """Exit codes: 0 done, 2 the run cannot start (config, weights, data lists, --resume), 1 it failed later."""
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.cfg_options)
        if args.dry_run:
            print(cfg.pretty_text)
            return 0
        main(cfg, args.work_dir, args.resume)
    except (ConfigError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DataError, ckpt.CheckpointError, TrainingError, VideoReadError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(cli())
