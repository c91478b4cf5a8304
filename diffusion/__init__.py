"""Diffusion for the refiner DiT: one factory for the IDDPM process; the samplers live in diffusion.samplers.

No module here imports a network: samplers take an ε function (the pipeline wraps its DiT in one).
"""
import numpy as np

from .gaussian_diffusion import GaussianDiffusion, linear_betas, space_timesteps
from .samplers import SAMPLERS, NoiseSchedule, get_sampler

__all__ = ['create_diffusion', 'GaussianDiffusion', 'linear_betas', 'space_timesteps', 'NoiseSchedule',
           'SAMPLERS', 'get_sampler']


def create_diffusion(num_timesteps=1000, beta_start=1e-4, beta_end=0.02, learn_sigma=True, timestep_respacing=None):
    """IDDPM with linear β; timestep_respacing (e.g. "50", "ddim25", "10,20,30"; None = all steps) for sampling."""
    betas = linear_betas(num_timesteps, beta_start, beta_end)
    if timestep_respacing in (None, ''):
        return GaussianDiffusion(betas, learn_sigma=learn_sigma)
    # keep a subset of steps; β'_k = 1 − ᾱ_{t_k}/ᾱ_{t_(k−1)} keeps ᾱ at the kept steps (IDDPM §4)
    kept = sorted(space_timesteps(num_timesteps, timestep_respacing))
    alphas_cumprod = np.cumprod(1.0 - betas)[kept]
    new_betas = 1.0 - alphas_cumprod / np.append(1.0, alphas_cumprod[:-1])
    return GaussianDiffusion(new_betas, learn_sigma=learn_sigma, timestep_map=kept)
