"""IDDPM (Nichol & Dhariwal 2021): linear-β schedule, respacing, learned-range-variance loss, ancestral sampler.

Latents are (B, C, T, H, W) (or (B, C, H, W)); one timestep per sample, shared by all frames of a clip.
The conditioning latent x_ref is concatenated to the noisy latent on channels and never noised.
Every per-t coefficient is computed in float64, then cast to float32 before it touches a tensor.
"""
import math

import numpy as np
import torch
from tqdm.auto import tqdm

from .losses import discretized_gaussian_log_likelihood, normal_kl


def linear_betas(num_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    """β_t linearly spaced from beta_start to beta_end, float64 (Ho et al. 2020 §4)."""
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps, section_counts):
    """Timesteps kept by IDDPM respacing: "250" / 250 / [250] = evenly spaced incl. both ends,
    "10,15,20" = that many in each of 3 equal sections, "ddim50" = range(0, N, stride) of length 50."""
    if isinstance(section_counts, str) and section_counts.startswith('ddim'):
        wanted = int(section_counts[len('ddim'):])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == wanted:
                return set(range(0, num_timesteps, stride))
        raise ValueError(f'diffusion/gaussian_diffusion.py: no integer stride gives {wanted} of '
                         f'{num_timesteps} steps (pick another ddimN, or use "{wanted}")')
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    elif isinstance(section_counts, str):
        section_counts = [int(c) for c in section_counts.split(',')]
    size, extra = divmod(num_timesteps, len(section_counts))
    kept, start = set(), 0
    for i, count in enumerate(section_counts):
        section = size + (1 if i < extra else 0)
        if not 1 <= count <= section:
            raise ValueError(f'diffusion/gaussian_diffusion.py: respacing asks for {count} steps in a '
                             f'section of {section} (use 1..{section} per section)')
        stride = (section - 1) / (count - 1) if count > 1 else 1
        kept.update(start + round(k * stride) for k in range(count))
        start += section
    return kept


class GaussianDiffusion:
    """Discrete-time Gaussian diffusion over a (possibly respaced) β schedule."""

    def __init__(self, betas, learn_sigma=True, timestep_map=None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) < 2 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError('diffusion/gaussian_diffusion.py: betas must be a 1-D schedule of ≥2 values '
                             'in (0, 1] (check num_timesteps / beta_start / beta_end)')
        self.learn_sigma = learn_sigma
        self.num_timesteps = len(betas)
        self.timestep_map = np.arange(len(betas)) if timestep_map is None else np.asarray(timestep_map)
        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        ac, ac_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        # q(x_t | x_0) and x̂0 from ε (Ho et al. 2020 eq. 4, 15)
        self.sqrt_alphas_cumprod = np.sqrt(ac)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ac)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1.0)
        # q(x_{t-1} | x_t, x_0) (Ho et al. 2020 eq. 6-7); β̃_0 = 0, so its log is clipped to β̃_1
        self.posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(ac_prev) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)
        # fixed-large variance (IDDPM's choice without learned σ): β_t, with β̃_1 at t = 0
        self.log_betas = np.log(betas)
        self.fixed_large_log_variance = np.log(np.append(self.posterior_variance[1], betas[1:]))
        self._tables = {}

    # ---- coefficients -------------------------------------------------------------------------------
    def _coef(self, name, t, x):
        """getattr(self, name)[t] as float32 on x's device, shaped (B, 1, ..., 1) to broadcast over x."""
        key = (name, x.device)
        if key not in self._tables:
            self._tables[key] = torch.from_numpy(getattr(self, name)).to(torch.float32).to(x.device)
        return self._tables[key][t].to(x.dtype).view(-1, *[1] * (x.ndim - 1))

    def _model_t(self, t):
        """Respaced index → timestep of the 1000-step schedule the model was trained on."""
        if np.array_equal(self.timestep_map, np.arange(self.num_timesteps)):
            return t
        return torch.from_numpy(self.timestep_map).to(t.device)[t]

    # ---- forward process ----------------------------------------------------------------------------
    def q_sample(self, x0, t, noise):
        """x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (Ho et al. 2020 eq. 4)."""
        return self._coef('sqrt_alphas_cumprod', t, x0) * x0 \
            + self._coef('sqrt_one_minus_alphas_cumprod', t, x0) * noise

    def q_posterior(self, x0, x_t, t):
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x0)."""
        mean = self._coef('posterior_mean_coef1', t, x_t) * x0 + self._coef('posterior_mean_coef2', t, x_t) * x_t
        return mean, self._coef('posterior_log_variance_clipped', t, x_t)

    # ---- reverse process ----------------------------------------------------------------------------
    def p_mean_variance(self, model_out, x_t, t, clip_denoised=False):
        """p(x_{t-1} | x_t) from the model output: mean, log-variance, x̂0 and ε."""
        C = x_t.shape[1]
        if self.learn_sigma:
            eps, v = model_out.split(C, dim=1)
            # learned range: log σ² = f·log β + (1−f)·log β̃, f = (v+1)/2 (IDDPM eq. 15)
            frac = (v + 1) / 2
            log_var = frac * self._coef('log_betas', t, x_t) \
                + (1 - frac) * self._coef('posterior_log_variance_clipped', t, x_t)
        else:
            eps, log_var = model_out, self._coef('fixed_large_log_variance', t, x_t).expand_as(x_t)
        x0 = self._coef('sqrt_recip_alphas_cumprod', t, x_t) * x_t \
            - self._coef('sqrt_recipm1_alphas_cumprod', t, x_t) * eps
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean, _ = self.q_posterior(x0, x_t, t)
        return dict(mean=mean, log_variance=log_var, pred_xstart=x0, eps=eps)

    def _check_out(self, out, x_t):
        want = x_t.shape[1] * (2 if self.learn_sigma else 1)
        if out.shape[0] != x_t.shape[0] or out.shape[1] != want or out.shape[2:] != x_t.shape[2:]:
            raise ValueError(f'diffusion/gaussian_diffusion.py: model returned {tuple(out.shape)}, expected '
                             f'({x_t.shape[0]}, {want}, {", ".join(map(str, x_t.shape[2:]))}) '
                             f'(learn_sigma={self.learn_sigma}: ε{" and v" if self.learn_sigma else ""} channels)')

    # ---- training -----------------------------------------------------------------------------------
    def training_losses(self, model, x0, x_ref, t, noise=None, model_kwargs=None, reduce='sample'):
        """IDDPM hybrid loss: mse = ‖ε − ε̂‖², vb = KL / decoder NLL in bits (IDDPM eq. 16), loss = mse + vb.

        model(cat([x_t, x_ref], 1), t, **model_kwargs) -> (B, 2C, ...) (ε, v). Returns a dict of
        per-sample terms (B,) averaged over all non-batch dims, or per frame (B, T) with reduce='frame'
        (averaged over C, H, W; for (B, C, T, H, W) latents).
        """
        if reduce not in ('sample', 'frame'):
            raise ValueError(f"diffusion/gaussian_diffusion.py: reduce={reduce!r} (use 'sample' or 'frame')")
        if reduce == 'frame' and x0.ndim != 5:
            raise ValueError(f"diffusion/gaussian_diffusion.py: reduce='frame' needs (B, C, T, H, W) latents, "
                             f"got {tuple(x0.shape)} (use reduce='sample')")
        dims = (1, 3, 4) if reduce == 'frame' else tuple(range(1, x0.ndim))
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        out = model(torch.cat([x_t, x_ref.to(x_t.dtype)], dim=1), self._model_t(t), **(model_kwargs or {}))
        self._check_out(out, x_t)
        out = out.to(x_t.dtype)
        eps = out[:, :x0.shape[1]]
        terms = dict(mse=((noise - eps) ** 2).mean(dim=dims))
        if self.learn_sigma:
            # the VB term trains only the variance: ε is detached inside it (IDDPM §3.1)
            frozen = torch.cat([eps.detach(), out[:, x0.shape[1]:]], dim=1)
            p = self.p_mean_variance(frozen, x_t, t)
            true_mean, true_log_var = self.q_posterior(x0, x_t, t)
            kl = normal_kl(true_mean, true_log_var, p['mean'], p['log_variance']).mean(dim=dims) / math.log(2.0)
            nll = -discretized_gaussian_log_likelihood(
                x0, means=p['mean'], log_scales=0.5 * p['log_variance']).mean(dim=dims) / math.log(2.0)
            t0 = (t == 0).view(-1, *[1] * (kl.ndim - 1))
            terms['vb'] = torch.where(t0, nll, kl)          # L_0 = decoder NLL, L_{t>0} = KL
        else:
            terms['vb'] = torch.zeros_like(terms['mse'])
        terms['loss'] = terms['mse'] + terms['vb']
        return terms

    # ---- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def p_sample_loop(self, model, noise, cond, generator=None, clip_denoised=False, progress=True):
        """Ancestral sampling with the learned variance (Ho et al. 2020 Alg. 2, IDDPM σ): 1 model call per step.

        model(cat([x_t, cond], 1), t (B,) int64 on the 1000-step scale) -> (B, 2C, ...).
        """
        x = noise
        B = x.shape[0]
        for i in tqdm(range(self.num_timesteps - 1, -1, -1), disable=not progress, desc='IDDPM'):
            t = torch.full((B,), i, dtype=torch.long, device=x.device)
            out = model(torch.cat([x, cond.to(x.dtype)], dim=1), self._model_t(t))
            self._check_out(out, x)
            p = self.p_mean_variance(out.to(x.dtype), x, t, clip_denoised=clip_denoised)
            x = p['mean']
            if i > 0:
                z = torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                device=generator.device if generator is not None else x.device)
                x = x + torch.exp(0.5 * p['log_variance']) * z.to(x.device)
        return x
