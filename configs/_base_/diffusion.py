# IDDPM: 1000 linear-beta steps, learned-range variance, loss = MSE(eps) + VB.
diffusion = dict(
    num_timesteps=1000,
    beta_start=1e-4,
    beta_end=0.02,
    learn_sigma=True,
)
