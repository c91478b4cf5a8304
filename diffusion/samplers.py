"""Samplers for the refiner DiT: plain functions over an ε model, one signature, one registry.

    sampler(eps_fn, noise, cond, steps, generator, progress, schedule, *, callback=None) -> x0 latent (B, C, T, h, w)

eps_fn(x_in (B, C+C_ref, T, h, w), t (B,) float32 on the 1000-step scale) -> ε (B, C, T, h, w), where
x_in = cat([x_t, cond], channels): the conditioning is concatenated unscaled and never noised. The caller
owns the network: eps_fn is any callable (the pipeline wraps its windowed DiT in one). `schedule` is a
NoiseSchedule built once from the diffusion config (the training β schedule); `generator` drives the
noise of ancestral steps (EulerA; DDIM with η = 0 and DPMS draw none).
Model calls per step: EulerA 1, DDIM 1, DPMS 1 (multistep: `steps` calls in all).

callback (k-diffusion style): None, or a function called once at the end of every step, after its update,
with one dict (read it, do not modify its tensors in place; the sampler's result does not depend on it):
    i         the step, 0 .. steps-1
    t         the timestep the model saw in this step (float, the 1000-step scale of eps_fn's t)
    x         the sampler's state after the step, (B, C, T, h, w); after the last step, the returned latent.
              Its scale is the sampler's own: EulerA x0 + σ·noise (k-diffusion's), DDIM and DPMS x_t
    eps       the model's ε of this step, (B, C, T, h, w)
    denoised  x̂0 predicted in this step, (B, C, T, h, w) (DDIM: after clip_sample, as its update uses it;
              None for a diffusers scheduler whose step() returns no pred_original_sample)
The callback runs on the host between device launches and adds no host-device sync of its own: what it does
with the tensors (.item(), printing) may. Uses: progress, previews of x̂0, per-step timing (tools/bench/recon.py).
"""
import torch
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler
from einops import rearrange
from tqdm.auto import tqdm

from .gaussian_diffusion import linear_betas


class NoiseSchedule:
    """The training β schedule shared by every sampler: linear β over num_timesteps (Ho et al. 2020 §4).

    Built once (NoiseSchedule.from_config(cfg.diffusion)). Holds DPM-Solver's continuous-time view of the
    discrete schedule: grid t_i = (i+1)/N and log α_i = ½·Σ_{j≤i} log(1 − β_j) (float64 sum, stored float32),
    log α(t) piecewise linear in t (Lu et al. 2022, discrete-time case); diffusers schedulers are made fresh
    per run from the same three numbers (they keep state).
    """

    def __init__(self, num_timesteps=1000, beta_start=1e-4, beta_end=0.02):
        self.num_timesteps, self.beta_start, self.beta_end = int(num_timesteps), float(beta_start), float(beta_end)
        betas = torch.from_numpy(linear_betas(self.num_timesteps, self.beta_start, self.beta_end))   # float64
        self.log_alpha = (0.5 * torch.log(1.0 - betas).cumsum(0)).to(torch.float32)               # (N,)
        self.t_grid = torch.linspace(0.0, 1.0, self.num_timesteps + 1)[1:]                         # (N,)

    @classmethod
    def from_config(cls, diffusion):
        """From a config's `diffusion` dict (num_timesteps, beta_start, beta_end)."""
        return cls(diffusion.get('num_timesteps', 1000), diffusion.get('beta_start', 1e-4),
                   diffusion.get('beta_end', 0.02))

    def __repr__(self):
        return f'NoiseSchedule({self.num_timesteps}, beta_start={self.beta_start}, beta_end={self.beta_end})'

    def diffusers_scheduler(self, cls, **kwargs):
        """A fresh diffusers scheduler of class `cls` on this β schedule; kwargs override its defaults."""
        return cls(num_train_timesteps=self.num_timesteps, beta_start=self.beta_start, beta_end=self.beta_end,
                   beta_schedule='linear', **kwargs)


# ---- the samplers (dpms is with the DPM-Solver++ helpers below) ------------------------------------
def euler_a(eps_fn, noise, cond, steps=8, generator=None, progress=True, schedule=None, *, callback=None):
    """Euler-ancestral on diffusers' EulerAncestralDiscreteScheduler σ schedule (the default sampler)."""
    scheduler = (schedule or NoiseSchedule()).diffusers_scheduler(EulerAncestralDiscreteScheduler)
    return sample_diffusers(eps_fn, noise, cond, scheduler, steps, generator=generator, progress=progress,
                            callback=callback)


def ddim(eps_fn, noise, cond, steps=8, generator=None, progress=True, schedule=None, *, callback=None,
         clip_sample=True):
    """DDIM, η = 0 (Song et al. 2021), diffusers' DDIMScheduler defaults; clip_sample clips x̂0 to [-1, 1]."""
    scheduler = (schedule or NoiseSchedule()).diffusers_scheduler(DDIMScheduler, clip_sample=clip_sample)
    return sample_diffusers(eps_fn, noise, cond, scheduler, steps, generator=generator, progress=progress,
                            callback=callback)


# ---- shared: input checks, the model call, the diffusers loop of EulerA and DDIM --------------------
def _check_inputs(noise, cond, steps):
    if noise.ndim != 5 or cond.ndim != 5 or noise.shape[0] != cond.shape[0] or noise.shape[2:] != cond.shape[2:]:
        raise ValueError(f'diffusion/samplers.py: noise {tuple(noise.shape)} and cond {tuple(cond.shape)} must be '
                         f'(B, C, T, h, w) with equal B, T, h, w (fold images in as T=1)')
    if steps < 1:
        raise ValueError(f'diffusion/samplers.py: steps={steps} (use at least 1)')


def _eps(eps_fn, x, cond, t):
    """One model call: ε at timestep t (a float for every clip), with a shape check."""
    eps = eps_fn(torch.cat([x, cond.to(x.dtype)], dim=1), t)
    if eps.shape != x.shape:
        raise ValueError(f'diffusion/samplers.py: eps_fn returned {tuple(eps.shape)}, expected {tuple(x.shape)} '
                         f'(ε channels only: slice the model output to its first {x.shape[1]} channels)')
    return eps.to(x.dtype)


@torch.no_grad()
def sample_diffusers(eps_fn, noise, cond, scheduler, steps, generator=None, progress=True, callback=None):
    """The reconstruction loop over a diffusers ε-prediction scheduler: 1 model call per step; callback as
    the module docstring says.

    Only the noisy latent goes through scale_model_input. The scheduler state is kept frame-folded,
    ((B·T), C, h, w) video-major as in the original code, so a seeded generator draws the same noise.
    No host-device sync inside the loop: the schedule stays on the CPU (its scalars enter device ops as
    numbers), the model's timesteps are filled on the device, and Euler-ancestral's noise is drawn a step
    ahead and copied without blocking.
    """
    _check_inputs(noise, cond, steps)
    B = noise.shape[0]
    fold = lambda x: rearrange(x, 'b c t h w -> (b t) c h w')
    unfold = lambda x: rearrange(x, '(b t) c h w -> b c t h w', b=B)
    scheduler.set_timesteps(steps)                                    # on the CPU
    lat = fold(noise) * scheduler.init_noise_sigma                   # ((B·T), C, h, w)
    if _is_euler_ancestral(scheduler):
        return unfold(euler_ancestral_loop(eps_fn, lat, cond, scheduler, unfold, fold, generator, progress,
                                           callback))
    for i, t in enumerate(tqdm(scheduler.timesteps, disable=not progress, desc=type(scheduler).__name__)):
        inp = unfold(scheduler.scale_model_input(lat, t))                 # (B, C, T, h, w)
        eps = _eps(eps_fn, inp, cond, torch.full((B,), float(t), device=noise.device))
        out = scheduler.step(fold(eps), t, lat, generator=generator)
        lat = out.prev_sample
        if callback is not None:
            denoised = getattr(out, 'pred_original_sample', None)
            callback({'i': i, 't': float(t), 'x': unfold(lat), 'eps': eps,
                      'denoised': None if denoised is None else unfold(denoised)})
    return unfold(lat)


def _is_euler_ancestral(scheduler):
    return (isinstance(scheduler, EulerAncestralDiscreteScheduler)
            and scheduler.config.prediction_type == 'epsilon')


def step_noises(shape, steps, generator, device):
    """Yield each step's noise (float32, on `device`) in the order diffusers' step() draws it, one step ahead:
    the next draw (on the generator's device, as diffusers' randn_tensor) and its non-blocking copy from pinned
    memory overlap the current step. Without a generator the global RNG draws on `device`.
    """
    draw_on = generator.device if generator is not None else device

    def draw():
        noise = torch.randn(shape, generator=generator, device=draw_on)
        if noise.device != device and device.type == 'cuda':
            noise = noise.pin_memory()
        return noise.to(device, non_blocking=True)
    upcoming = draw() if steps else None
    for i in range(steps):
        noise, upcoming = upcoming, (draw() if i + 1 < steps else None)
        yield noise


def euler_ancestral_loop(eps_fn, lat, cond, scheduler, unfold, fold, generator=None, progress=True,
                         callback=None):
    """Euler-ancestral steps on an EulerAncestralDiscreteScheduler's σ schedule (Karras et al. 2022, Alg. 2 with
    ancestral sampling; k-diffusion's sample_euler_ancestral), operation for operation its scale_model_input
    and step(), but with each step's noise drawn a step ahead and copied without blocking (diffusers draws it
    on the CPU inside step() and copies it with a device sync). lat: ((B·T), C, h, w) scaled by
    init_noise_sigma -> x0, same layout. callback: as the module docstring says (its tensors unfolded).
    """
    sigmas, B = scheduler.sigmas, cond.shape[0]                        # (steps + 1,) float32 on the CPU
    noises = step_noises(lat.shape, len(scheduler.timesteps), generator, lat.device)
    for i, t in enumerate(tqdm(scheduler.timesteps, disable=not progress, desc='EulerAncestral')):
        sigma, sigma_to = sigmas[i], sigmas[i + 1]
        inp = unfold(lat / ((sigma ** 2 + 1) ** 0.5))                   # scale_model_input
        model_eps = _eps(eps_fn, inp, cond, torch.full((B,), float(t), device=lat.device))   # (B, C, T, h, w)
        eps = fold(model_eps)
        sample = lat.to(torch.float32)
        pred_x0 = sample - sigma * eps
        sigma_up = (sigma_to ** 2 * (sigma ** 2 - sigma_to ** 2) / sigma ** 2) ** 0.5
        sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
        derivative = (sample - pred_x0) / sigma                         # Euler step to σ_down ...
        lat = sample + derivative * (sigma_down - sigma)
        lat = (lat + next(noises) * sigma_up).to(eps.dtype)             # ... then noise up to σ_to
        if callback is not None:
            callback({'i': i, 't': float(t), 'x': unfold(lat), 'eps': model_eps, 'denoised': unfold(pred_x0)})
    return lat


# ---- DPM-Solver++ -----------------------------------------------------------------------------------
def _interp(t, xp, fp):
    """Piecewise-linear interpolation of (xp, fp) at t (float32, end segments extrapolate)."""
    i = torch.searchsorted(xp, t).clamp(1, len(xp) - 1)
    x0, x1, y0, y1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    return y0 + (t - x0) * (y1 - y0) / (x1 - x0)


@torch.no_grad()
def dpms(eps_fn, noise, cond, steps=8, generator=None, progress=True, schedule=None, *, callback=None, order=2,
         lower_order_final=True):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2), data prediction, time-uniform steps; deterministic.

    Steps run from t = 1 to t = 1/N; the model sees t_in = N·(t − 1/N). The first step is first order;
    with lower_order_final the last one is too, for any number of steps (time-uniform steps make the last
    λ step large, where a 2nd-order update overshoots; the reference solver may restrict this to steps < 10,
    which golden_a's 4 steps cannot tell apart). No model call at the final time. Step i updates with the
    model call at t_in[i]; callback (module docstring) gets that call's ε and x̂0.
    """
    if order not in (1, 2):
        raise ValueError(f'diffusion/samplers.py: DPM-Solver++ order={order} (use 1 or 2)')
    _check_inputs(noise, cond, steps)
    schedule = schedule or NoiseSchedule()
    N = schedule.num_timesteps
    ts = torch.linspace(1.0, 1.0 / N, steps + 1)                      # float32, as the reference solver
    log_a = _interp(ts, schedule.t_grid, schedule.log_alpha)
    alpha, sigma = torch.exp(log_a), torch.sqrt(1.0 - torch.exp(2.0 * log_a))
    lam = log_a - torch.log(sigma)                                     # λ = log(α/σ), half log-SNR
    t_in = (ts - 1.0 / N) * float(N)
    B = noise.shape[0]
    # every coefficient is fixed before the loop: no host-device sync inside it
    t_model = [torch.full((B,), float(v), dtype=torch.float32, device=noise.device) for v in t_in[:-1]]

    def data_pred(x, i):
        """-> ε, x̂0 = (x − σ_t·ε)/α_t."""
        eps = _eps(eps_fn, x, cond, t_model[i])
        return eps, (x - sigma[i].item() * eps) / alpha[i].item()

    x = noise
    eps, x0 = data_pred(x, 0)
    x0s = [x0]
    for i in tqdm(range(1, steps + 1), disable=not progress, desc='DPM-Solver++'):
        h = lam[i] - lam[i - 1]
        c = alpha[i] * torch.expm1(-h)                                 # α_t·(e^{−h} − 1)
        step_order = min(order, i, steps + 1 - i if lower_order_final else order)   # 1st order at both ends
        x = (sigma[i] / sigma[i - 1]).item() * x - c.item() * x0s[-1]  # DPM-Solver++(1) = DDIM in λ
        if step_order == 2:                                            # DPM-Solver++(2M), 'dpmsolver' form
            r = (lam[i - 1] - lam[i - 2]) / h
            d = (1.0 / r).item() * (x0s[-1] - x0s[-2])
            x = x - (0.5 * c).item() * d
        if callback is not None:
            callback({'i': i - 1, 't': float(t_in[i - 1]), 'x': x, 'eps': eps, 'denoised': x0s[-1]})
        if i < steps:
            eps, x0 = data_pred(x, i)
            x0s = [x0s[-1], x0]
    return x


# ---- registry: the names configs, the pipeline and the benchmark accept ----------------------------
SAMPLERS = {'EulerA': euler_a, 'DDIM': ddim, 'DPMS': dpms}     # config name -> sampler; the first is the default


def get_sampler(name):
    """The sampler registered as `name` (one of SAMPLERS)."""
    if name not in SAMPLERS:
        raise ValueError(f'diffusion/samplers.py: unknown sampler {name!r} (use one of {", ".join(SAMPLERS)})')
    return SAMPLERS[name]
