"""One optimizer step of the refiner DiT, as the release was trained.

A batch of clips (3, T, S, S) in [-1, 1], or of cached latents → SVD-VAE posterior (mean, std) × scale_factor
and the raw compressor latent → x0 = mean (+ std·ε with vae.sample_posterior) and x_ref = the compressor
latent ×sr_scale bilinear × scale_factor → one timestep per clip → IDDPM loss (MSE(ε) + VB, diffusion/) on
cat[x_t, x_ref]. With probability train.joint_training the batch trains "as images" (attention inside each
frame). Every draw of a step comes from a generator seeded by (train.seed, iteration, rank), so a resumed run
repeats an uninterrupted one exactly.
"""
import math
from dataclasses import dataclass

import torch

from models.pipeline import upsample_latent
from tools.training.data import derive_seed
from tools.training.optim import lr_at


@torch.no_grad()
def encode_batch(batch, stages, device):
    """A batch of clips {'video': (B, 3, T, S, S)} or of cached latents {'mean', 'std', 'ref'} -> (mean, std,
    ref) fp32 on `device`: posterior mean and std (B, 4, T, S/8, S/8) × scale_factor, compressor latent
    (B, 16, T, S/32, S/32) raw. `stages`: the frozen 'vae' and 'compressor' and their 'dtype' (unused for
    cached latents)."""
    if 'mean' in batch:
        return tuple(batch[k].to(device, torch.float32) for k in ('mean', 'std', 'ref'))
    video = batch['video'].to(device, stages['dtype'])             # (B, 3, T, H, W)
    mean, std = stages['vae'].encode_moments(video)                # (B, 4, T, H/8, W/8), scaled
    ref = stages['compressor'].encode(video)                       # (B, 16, T, H/32, W/32), raw
    return mean.float(), std.float(), ref.float()


def draw_step(moments, cfg, seed):
    """(mean, std, ref) of encode_batch -> {'x0' (B, 4, T, h, w), 'x_ref' (B, 16, T, h, w), 't' (B,) int in
    [0, diffusion.num_timesteps), 'noise' like x0, 'as_images' bool}, every draw from a generator seeded by
    `seed` (in this order: as_images, t, noise, then the posterior ε)."""
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
    """Per-clip IDDPM terms {'loss', 'mse', 'vb'}, each (B,), for the inputs of draw_step."""
    return diffusion.training_losses(model, inputs['x0'], inputs['x_ref'], inputs['t'], noise=inputs['noise'],
                                     model_kwargs={'as_images': inputs['as_images']})


@torch.no_grad()
def ema_update(ema, model, decay):
    """ema ← decay·ema + (1 − decay)·model, parameter by parameter (in place)."""
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
    gradient norm is non-finite (under fp16 the GradScaler decides) -> StepResult.

    `run`: a tools.training.loop.Run (cfg, accelerator, prepared model and optimizer, stages, diffusion, lr);
    `step` sets the warm-up lr, `iteration` (with the rank) seeds the step's draws.
    """
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
