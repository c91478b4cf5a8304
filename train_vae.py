"""Train the CascadeV refiner DiT (the decoder half of the video autoencoder).

    python train_vae.py CONFIG --work-dir DIR [--cfg-options k=v ...] [--resume PATH|auto] [--dry-run]
    accelerate launch --num_processes 8 train_vae.py CONFIG --work-dir DIR     # multi-GPU (bash train_vae.sh)

One optimizer step, as the released model was trained: a clip of num_frames_per_video frames at
time_stride → random flip → short side to sample_size, center crop → SVD-VAE posterior (mean, or a sample
with vae.sample_posterior) × scale_factor = x0 (4 ch) → compressor latent, ×sr_scale bilinear, × scale_factor
= x_ref (16 ch) → one timestep per clip → IDDPM loss (MSE(ε) + VB, diffusion/) on cat[x_t, x_ref]. With
probability train.joint_training the batch is trained "as images" (attention inside each frame). The frozen
encoders run without gradients in the mixed-precision dtype, or are skipped with data.cached_latents.

main(cfg) reads straight through: accelerator → work dir → models (+EMA) → data → loop (log / checkpoint /
preview). Every random draw of the loop comes from a generator seeded by (train.seed, iteration, rank), and
the data order from (train.seed, epoch), so a resumed run repeats an uninterrupted one exactly.
"""
import argparse
import copy
import json
import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

from diffusion import create_diffusion
from models.dit import build_dit, load_dit_checkpoint
from models.pipeline import CascadeV, upsample_latent
from models.weights import WeightsFormatError, build_compressor, build_vae
from tools import checkpoint as ckpt
from tools.config import ConfigError, load_config
from tools.data import BadSamples, DataError, build_dataset, build_loader, derive_seed, load_clip
from tools.video_io import VideoReadError, side_by_side, write_video

log = logging.getLogger('cascadev.train')
MP_DTYPES = {'no': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


class TrainingError(RuntimeError):
    """The run cannot go on (repeated non-finite steps, ...); the message says why and what to change."""


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
    if cfg.vae.get('sample_posterior', False):
        x0 = mean + std * torch.randn(mean.shape, generator=g).to(mean.device)
    x_ref = upsample_latent(ref, cfg.sr_scale, cfg.scale_factor)   # (B, 16, T, H/8, W/8)
    return dict(x0=x0, x_ref=x_ref, t=t, noise=noise, as_images=as_images)


def compute_losses(model, diffusion, inputs):
    """Per-clip IDDPM terms {'loss', 'mse', 'vb'} (B,) for the inputs of draw_step."""
    return diffusion.training_losses(model, inputs['x0'], inputs['x_ref'], inputs['t'], noise=inputs['noise'],
                                     model_kwargs={'as_images': inputs['as_images']})


def lr_at(step, cfg):
    """Linear warm-up to optimizer.lr over lr_schedule.warmup_steps optimizer steps, then constant."""
    warmup = cfg.lr_schedule.get('warmup_steps', 0) or 0
    return cfg.optimizer.lr * (min(1.0, (step + 1) / warmup) if warmup else 1.0)


def build_optimizer(params, cfg):
    """CAME (Luo et al. 2023; betas/eps from the config) or AdamW (betas[:2]; eps[0] when a tuple is given)."""
    o = cfg.optimizer
    if o.type == 'CAME':
        from came_pytorch import CAME
        return CAME(params, lr=o.lr, betas=tuple(o.betas), eps=tuple(o.eps), weight_decay=o.weight_decay)
    if o.type == 'AdamW':
        eps = o.eps[0] if isinstance(o.eps, (list, tuple)) else o.eps
        eps = eps if eps >= 1e-12 else 1e-8   # CAME's 1e-30 would make Adam's update unbounded
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas[:2]), eps=eps, weight_decay=o.weight_decay)
    raise ConfigError(f"{cfg.get('config_path', 'config')}: optimizer.type={o.type!r}; use 'CAME' or 'AdamW'")


@torch.no_grad()
def ema_update(ema, model, decay):
    """ema ← decay·ema + (1 − decay)·model, parameter by parameter."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().to(e.dtype), 1 - decay)


# ---- checkpoints ------------------------------------------------------------------------------------

def optimizer_file(accelerator):
    """optimizer.safetensors, or one file per rank when FSDP shards the optimizer state."""
    sharded = accelerator.distributed_type == DistributedType.FSDP
    return f'optimizer_{accelerator.process_index}.safetensors' if sharded else 'optimizer.safetensors'


def save_checkpoint(accelerator, root, step, model, ema, optimizer, state, keep_last):
    """All ranks: model (+EMA) and state by the main process, RNG (and FSDP optimizer shards) per rank; atomic."""
    weights = accelerator.get_state_dict(model)          # collective under FSDP; the full state on the main rank
    tmp = ckpt.step_dir(root, step).with_name(f'step_{step:08d}.tmp')
    if accelerator.is_main_process:
        ckpt.begin(root, step)
    accelerator.wait_for_everyone()
    ckpt.write_tensors(tmp, f'rng_{accelerator.process_index}.safetensors', ckpt.rng_state())
    name = optimizer_file(accelerator)
    if accelerator.is_main_process or name != 'optimizer.safetensors':
        ckpt.write_state(tmp, name, optimizer.state_dict())
    if accelerator.is_main_process:
        ckpt.write_tensors(tmp, 'model.safetensors', weights)
        if ema is not None:
            ckpt.write_tensors(tmp, 'ema.safetensors', ema.state_dict())
        if accelerator.scaler is not None:
            state = dict(state, scaler=accelerator.scaler.state_dict())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = ckpt.commit(tmp, state, keep_last)
        log.info(f"saved checkpoint {final}")
    accelerator.wait_for_everyone()


def load_weights(folder, model, ema):
    """Model (+EMA) weights of a checkpoint into the plain (not yet wrapped) modules."""
    model.load_state_dict(ckpt.read_tensors(folder, 'model.safetensors'))
    if ema is not None:
        if (Path(folder) / 'ema.safetensors').is_file():
            ema.load_state_dict(ckpt.read_tensors(folder, 'ema.safetensors'))
        else:
            ema.load_state_dict(model.state_dict())
            log.warning(f"{folder}: has no ema.safetensors; the EMA starts from the model weights")


def load_training_state(accelerator, folder, state, optimizer):
    """Optimizer, loss scaler and this rank's RNG of a checkpoint (after accelerator.prepare)."""
    optimizer.load_state_dict(ckpt.read_state(folder, optimizer_file(accelerator)))
    if accelerator.scaler is not None and 'scaler' in state:
        accelerator.scaler.load_state_dict(state['scaler'])
    rng = f'rng_{accelerator.process_index}.safetensors'
    if (Path(folder) / rng).is_file():
        ckpt.set_rng_state(ckpt.read_tensors(folder, rng))


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


# ---- setup helpers ----------------------------------------------------------------------------------

def setup_logging(work_dir, is_main):
    """Log lines of the `cascadev` loggers to stdout and, on the main process, WORK_DIR/train.log."""
    fmt = logging.Formatter('%(asctime)s %(levelname)s %(message)s', '%H:%M:%S')
    root = logging.getLogger('cascadev')
    for handler in list(root.handlers):  # a previous run in this process
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    root.addHandler(console)
    if is_main:
        file = logging.FileHandler(Path(work_dir) / 'train.log')
        file.setFormatter(fmt)
        root.addHandler(file)


class StopSignal:
    """SIGTERM / SIGINT set a flag; the loop saves a checkpoint and exits at the end of the current step."""

    def __init__(self):
        self.received = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self.handle)

    def handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt   # a second Ctrl-C stops at once
        self.received = signal.Signals(signum).name

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# ---- main -------------------------------------------------------------------------------------------

def main(cfg, work_dir, resume=None):
    """Train; return {'step', 'iteration', 'losses': [(iteration, loss)], 'checkpoint'}."""
    tc = cfg.train
    # -- accelerator, work dir
    # cpu=True without CUDA also makes several launched CPU processes one gloo group (accelerate's MULTI_CPU)
    use_cpu = cfg.get('device', 'auto') == 'cpu' or not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, cpu=use_cpu)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    work_dir = Path(work_dir)
    if accelerator.is_main_process:
        (work_dir / 'checkpoints').mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    setup_logging(work_dir, accelerator.is_main_process)
    if accelerator.is_main_process:
        cfg.dump(str(work_dir / 'config.py'))
    ckpt_root = work_dir / 'checkpoints'
    dtype = MP_DTYPES[accelerator.mixed_precision] if accelerator.mixed_precision in MP_DTYPES else torch.float32
    if device.type == 'cpu' and tc.mixed_precision == 'fp16':
        log.warning("train.mixed_precision='fp16' on CPU is slow and has no loss scaling (gradients may "
                    "underflow); use 'no' or 'bf16' on CPU")
    set_seed(tc.seed)

    # -- data (the preview clip is held out of training unless data.eval_video names one)
    hold_out = bool(tc.eval_every) and not cfg.data.get('eval_video')
    dataset, missing, total, held_out = build_dataset(cfg, hold_out_last=hold_out)
    bad = BadSamples(total, cfg.data.max_bad_fraction, work_dir / 'bad_videos.txt')
    bad.add(missing)
    eval_clip = None
    if tc.eval_every and accelerator.is_main_process:
        eval_path = cfg.data.get('eval_video') or held_out or dataset.paths[0]
        eval_clip = load_clip(eval_path, cfg.data.num_frames_per_video, cfg.data.time_stride,
                              cfg.data.sample_size, 0, False)
        log.info(f"preview clip: {eval_path}" + ('' if eval_path != dataset.paths[0] else
                                                 ' (the only video, so it is also trained on)'))

    # -- models: trainable DiT (+EMA), frozen encoders unless the latents are cached, diffusion
    model = build_dit(cfg.model)
    if tc.get('load_from'):
        try:
            load_dit_checkpoint(model, tc.load_from)
        except ValueError as e:  # wrong format or a checkpoint of another model size: one line
            raise ConfigError(f"train.load_from: {e}") from None
        log.info(f"initialised the DiT from {tc.load_from}")
    model.to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False).eval() if tc.get('ema_decay') else None
    cached = bool(cfg.data.get('cached_latents'))
    stages = {'device': device, 'dtype': dtype}
    if not cached or (tc.eval_every and accelerator.is_main_process):
        stages['compressor'] = build_compressor(cfg, device, dtype)
        stages['vae'] = build_vae(cfg, device, dtype)
    diffusion = create_diffusion(**{k: cfg.diffusion[k] for k in ('num_timesteps', 'beta_start', 'beta_end',
                                                                   'learn_sigma')})
    if ema is not None and accelerator.distributed_type == DistributedType.FSDP:
        raise ConfigError(f"{cfg.get('config_path', 'config')}: train.ema_decay is not supported with FSDP "
                          f"(the EMA would need the full weights on every rank); set train.ema_decay=None or use DDP")
    optimizer = build_optimizer(model.parameters(), cfg)
    n_params = sum(p.numel() for p in model.parameters())

    # -- resume: weights into the plain modules, then wrap (DDP / FSDP), then the optimizer state
    start = {'step': 0, 'iteration': 0, 'nonfinite_in_row': 0}
    found = ckpt.resolve_resume(ckpt_root, resume, log.warning) if resume else None
    if resume == 'auto' and found is None:
        log.info(f"--resume auto: no checkpoint in {ckpt_root}; starting from scratch")
    if found:
        folder, state, broken = found
        load_weights(folder, model, ema)
        accelerator.wait_for_everyone()  # every rank has chosen before broken checkpoints move
        if accelerator.is_main_process:
            for bad_folder, _ in broken:
                log.warning(f"moved the broken checkpoint to {ckpt.set_aside(bad_folder)}")
    model, optimizer = accelerator.prepare(model, optimizer)
    if found:
        load_training_state(accelerator, folder, state, optimizer)
        start = {k: state[k] for k in start}
        if state.get('world_batch') != world * tc.batch_size:
            log.warning(f"{folder}: saved with a global batch of {state.get('world_batch')}, now "
                        f"{world * tc.batch_size}: the data order after the resume differs from the original run")
        log.info(f"resumed from {folder} at step {start['step']} (iteration {start['iteration']})")

    loader, sampler = build_loader(dataset, cfg, rank, world, start['iteration'])
    per_epoch = sampler.batches_per_epoch
    # train.max_steps, when set, replaces num_epochs as the length of the run
    max_steps = tc.max_steps if tc.max_steps is not None else math.inf
    total_iters = tc.num_epochs * per_epoch if tc.max_steps is None else math.inf
    log.info(f"{len(dataset)} training videos ({'cached latents' if cached else 'decoded on the fly'}); "
             f"{per_epoch} batches per epoch; DiT {n_params / 1e6:.1f} M parameters; {world} process(es) × "
             f"batch {tc.batch_size} = effective batch {world * tc.batch_size}; lr {cfg.optimizer.lr:g} "
             f"({cfg.optimizer.type}, warm-up {cfg.lr_schedule.get('warmup_steps', 0)} steps); "
             f"mixed precision {accelerator.mixed_precision}")

    # -- logging
    writer, progress = None, None
    if accelerator.is_main_process:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm
        writer = SummaryWriter(str(work_dir / 'tb'))
        goal = min(max_steps, total_iters)
        progress = tqdm(total=None if goal == math.inf else goal, initial=start['step'], desc='train',
                        dynamic_ncols=True, disable=None)
    metrics_file = open(work_dir / 'log.jsonl', 'a') if accelerator.is_main_process else None

    # -- loop
    step, iteration, nonfinite = start['step'], start['iteration'], start['nonfinite_in_row']
    losses, last_saved = [], step if found else None
    stop = StopSignal()
    nan_steps = set(tc.get('debug_nan_steps') or [])
    data_error = None
    t_last = time.perf_counter()

    def save():
        nonlocal last_saved
        if last_saved == step:
            return
        state = {'step': step, 'iteration': iteration, 'nonfinite_in_row': nonfinite,
                 'epoch': iteration // per_epoch, 'world_batch': world * tc.batch_size, 'seed': tc.seed,
                 'scheduler': {'type': 'linear_warmup', 'warmup_steps': cfg.lr_schedule.get('warmup_steps', 0),
                               'base_lr': cfg.optimizer.lr, 'lr': lr_at(step, cfg)}}
        save_checkpoint(accelerator, ckpt_root, step, model, ema, optimizer, state, tc.get('keep_last', 3))
        last_saved = step

    try:
        data_iter = iter(loader)
        while step < max_steps and iteration < total_iters:
            batch = next(data_iter)
            try:
                bad.add(batch['bad'])  # the bad files were already replaced: this step still runs
            except DataError as e:
                data_error = e
            if iteration in nan_steps:  # test hook: a corrupt batch
                for k in ('video', 'mean'):
                    if k in batch:
                        batch[k] = batch[k] * float('nan')
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group['lr'] = lr
            inputs = draw_step(encode_batch(batch, stages, device), cfg, derive_seed(tc.seed, iteration, rank))
            with accelerator.autocast():
                terms = compute_losses(model, diffusion, inputs)
            loss = terms['loss'].mean()
            accelerator.backward(loss)   # every rank, always: DDP ranks stay in lock-step
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip or math.inf)
            loss_ok = torch.isfinite(accelerator.reduce(loss.detach(), 'sum')).item()
            grad_ok = torch.isfinite(torch.as_tensor(grad_norm)).item()
            if accelerator.scaler is not None:
                optimizer.step()         # fp16: the GradScaler skips non-finite gradients and lowers its scale
                took = loss_ok and not accelerator.optimizer_step_was_skipped
            else:
                took = loss_ok and grad_ok
                if took:
                    optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            iteration += 1
            if took:
                step += 1
                nonfinite = 0
                if ema is not None:
                    ema_update(ema, accelerator.unwrap_model(model), tc.ema_decay)
            elif loss_ok and accelerator.scaler is not None:
                log.info(f"iteration {iteration}: fp16 gradient overflow, loss scale lowered to "
                         f"{accelerator.scaler.get_scale():g}")
            else:
                nonfinite += 1
                log.warning(f"iteration {iteration}: non-finite loss or gradient (loss {loss.item():.4g}, "
                            f"grad-norm {float(grad_norm):.4g}); optimizer step skipped "
                            f"({nonfinite}/{tc.max_nonfinite} in a row)")
                if nonfinite >= tc.max_nonfinite:
                    raise TrainingError(f"{nonfinite} non-finite steps in a row (train.max_nonfinite): lower "
                                        f"optimizer.lr or train.grad_clip, try mixed_precision='bf16', or check "
                                        f"the data; resume from the last checkpoint in {ckpt_root}")
            losses.append((iteration, loss.item()))

            # -- log
            step_time = time.perf_counter() - t_last
            if accelerator.is_main_process:
                progress.update(int(took))
                progress.set_postfix(loss=f'{loss.item():.4f}', lr=f'{lr:.2e}', s_per_step=f'{step_time:.2f}',
                                     refresh=False)
            if took and step % tc.log_every == 0:
                values = {k: accelerator.reduce(v.detach().mean(), 'mean').item() for k, v in terms.items()}
                values.update(grad_norm=float(grad_norm), lr=lr, samples_per_s=world * tc.batch_size / step_time,
                              step_time=step_time)
                if accelerator.is_main_process:
                    if progress.disable:  # no terminal: a log line instead of the progress bar
                        log.info(f"step {step}: loss {values['loss']:.4f} (mse {values['mse']:.4f}, vb "
                                 f"{values['vb']:.4f}), grad-norm {values['grad_norm']:.3g}, lr {lr:.3g}, "
                                 f"{step_time:.2f} s/step")
                    for k, v in values.items():
                        writer.add_scalar(f'train/{k}', v, step)
                    metrics_file.write(json.dumps(dict(step=step, iteration=iteration, **values)) + '\n')
                    metrics_file.flush()

            # -- checkpoint, preview, stop
            epoch_end = iteration % per_epoch == 0 and tc.get('save_epoch_end', True)
            if took and (step % tc.save_model_steps == 0 or epoch_end):
                save()
            if took and tc.eval_every and step % tc.eval_every == 0 and accelerator.is_main_process:
                path = work_dir / 'previews' / f'step_{step:08d}.mp4'
                path.parent.mkdir(exist_ok=True)
                write_preview(path, ema if ema is not None else accelerator.unwrap_model(model), stages,
                              eval_clip, cfg, step)
                log.info(f"wrote preview {path}")
            t_last = time.perf_counter()  # saves and previews do not count as step time
            flags = torch.tensor([float(stop.received is not None), float(data_error is not None)], device=device)
            flags = accelerator.reduce(flags, 'sum')
            if flags[1] > 0:  # too many bad videos on some rank: every rank stops
                raise data_error or DataError("another rank found too many bad videos (see its log and "
                                              f"{work_dir / 'bad_videos.txt'})")
            if flags[0] > 0:
                log.warning(f"{stop.received or 'stop signal on another rank'}: saving a checkpoint and exiting")
                save()
                break
        else:
            save()
    finally:
        stop.restore()
        if metrics_file:
            metrics_file.close()
        if writer:
            writer.close()
        if progress:
            progress.close()
    if tc.get('debug_rank_dump'):  # test hook: every rank's final weights, to compare ranks
        ckpt.write_tensors(work_dir, f'debug_rank{rank}.safetensors', accelerator.unwrap_model(model).state_dict())
    accelerator.wait_for_everyone()
    return {'step': step, 'iteration': iteration, 'losses': losses,
            'checkpoint': str(ckpt.step_dir(ckpt_root, last_saved)) if last_saved is not None else None}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='config file, e.g. configs/s1024.effn-f32.py')
    p.add_argument('--work-dir', help='run folder: config.py, checkpoints/, tb/, previews/, logs')
    p.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                   help='override config keys, e.g. train.max_steps=100 "data.video_list=[\'data/train.txt\']"')
    p.add_argument('--resume', metavar='PATH|auto',
                   help="a checkpoint folder (WORK_DIR/checkpoints/step_N), or 'auto' for the newest complete one")
    p.add_argument('--dry-run', action='store_true', help='print the final config and exit')
    args = p.parse_args(argv)
    if not args.work_dir and not args.dry_run:
        p.error('--work-dir DIR is required (the run folder; e.g. --work-dir work_dirs/my_run)')
    return args


def cli(argv=None):
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.cfg_options)
        if args.dry_run:
            print(cfg.pretty_text)
            return 0
        main(cfg, args.work_dir, args.resume)
    except (ConfigError, DataError, ckpt.CheckpointError, TrainingError, FileNotFoundError, WeightsFormatError,
            VideoReadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(cli())
