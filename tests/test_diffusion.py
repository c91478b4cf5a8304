"""diffusion/: schedule, respacing, IDDPM loss and samplers against closed forms and a toy Gaussian data set."""
import math

import numpy as np
import pytest
import torch

from diffusion import SAMPLERS, NoiseSchedule, create_diffusion, get_sampler, space_timesteps
from diffusion.losses import discretized_gaussian_log_likelihood, normal_kl
from diffusion.samplers import dpms

N, B0, B1 = 1000, 1e-4, 0.02


# ---- schedule ---------------------------------------------------------------------------------------
def closed_form_alpha_bar(t):
    """ᾱ_t = Π_{s≤t} (1 − β_s), β_s = β_0 + s·(β_1 − β_0)/(N − 1), in exact-ish Python floats."""
    return math.prod(1.0 - (B0 + s * (B1 - B0) / (N - 1)) for s in range(t + 1))


@pytest.mark.parametrize('t', [0, 1, 500, 999])
def test_schedule_matches_closed_form(t):
    d = create_diffusion()
    beta = B0 + t * (B1 - B0) / (N - 1)
    ab, ab_prev = closed_form_alpha_bar(t), (closed_form_alpha_bar(t - 1) if t > 0 else 1.0)
    assert d.betas[t] == pytest.approx(beta, rel=1e-12)
    assert d.alphas_cumprod[t] == pytest.approx(ab, rel=1e-10)
    assert d.sqrt_recipm1_alphas_cumprod[t] == pytest.approx(math.sqrt(1 / ab - 1), rel=1e-10)
    assert d.posterior_variance[t] == pytest.approx(beta * (1 - ab_prev) / (1 - ab), rel=1e-10, abs=0)
    assert d.posterior_mean_coef1[t] == pytest.approx(beta * math.sqrt(ab_prev) / (1 - ab), rel=1e-10)
    assert d.posterior_mean_coef2[t] == pytest.approx((1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab), rel=1e-10)
    assert d.log_betas[t] == pytest.approx(math.log(beta), rel=1e-12)


def test_schedule_endpoints_and_clipping():
    d = create_diffusion()
    assert d.num_timesteps == 1000 and d.betas.dtype == np.float64
    assert d.betas[0] == B0 and d.betas[-1] == pytest.approx(B1, rel=1e-15)
    assert d.posterior_variance[0] == 0.0                                   # β̃_0 = 0 ...
    clipped = d.posterior_log_variance_clipped
    assert clipped[0] == clipped[1] == math.log(d.posterior_variance[1])    # ... so log β̃_0 := log β̃_1
    assert d.alphas_cumprod[-1] == pytest.approx(4.035e-5, rel=1e-3)   # ᾱ_999 of the linear schedule


def test_q_sample_mean_and_variance():
    d = create_diffusion()
    x0, eps = torch.randn(3, 4, 2, 5, 5), torch.randn(3, 4, 2, 5, 5)
    t = torch.tensor([0, 250, 999])
    ab = torch.tensor([closed_form_alpha_bar(int(i)) for i in t], dtype=torch.float32).view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(d.q_sample(x0, t, torch.zeros_like(x0)), ab.sqrt() * x0)
    torch.testing.assert_close(d.q_sample(torch.zeros_like(x0), t, eps), (1 - ab).sqrt() * eps)


def test_posterior_is_gaussian_conditioning():
    """q(x_{t−1} | x_t, x0) from conditioning the joint Gaussian of (x_{t−1}, x_t) given x0."""
    d = create_diffusion()
    t = torch.tensor([5, 600])
    x0, xt = torch.randn(2, 4, 3, 3, dtype=torch.float64), torch.randn(2, 4, 3, 3, dtype=torch.float64)
    mean, log_var = d.q_posterior(x0.float(), xt.float(), t)
    for b, ti in enumerate(t.tolist()):
        ab_prev, ab, alpha = closed_form_alpha_bar(ti - 1), closed_form_alpha_bar(ti), 1 - d.betas[ti]
        cov, var_t = math.sqrt(alpha) * (1 - ab_prev), 1 - ab
        want_mean = math.sqrt(ab_prev) * x0[b] + cov / var_t * (xt[b] - math.sqrt(ab) * x0[b])
        want_var = (1 - ab_prev) - cov ** 2 / var_t
        torch.testing.assert_close(mean[b].double(), want_mean, rtol=1e-5, atol=1e-5)
        assert math.exp(log_var[b].flatten()[0].item()) == pytest.approx(want_var, rel=1e-5)


# ---- respacing --------------------------------------------------------------------------------------
@pytest.mark.parametrize('spec,count', [('50', 50), (10, 10), ('10,15,20', 45), ([4], 4), ('1000', 1000)])
def test_respacing_keeps_endpoints(spec, count):
    kept = space_timesteps(1000, spec)
    assert len(kept) == count and 0 in kept and (999 in kept or ',' in str(spec))
    d = create_diffusion(timestep_respacing=spec)
    base = create_diffusion()
    assert d.num_timesteps == count
    np.testing.assert_allclose(d.alphas_cumprod, base.alphas_cumprod[sorted(kept)], rtol=1e-12)


def test_respacing_sections_and_ddim():
    assert sorted(space_timesteps(300, '2,3,1')) == [0, 99, 100, 150, 199, 200]
    assert sorted(space_timesteps(1000, 'ddim25')) == list(range(0, 1000, 40))
    for bad in ('2000', '0', 'ddim999'):
        with pytest.raises(ValueError, match='diffusion/gaussian_diffusion.py'):
            space_timesteps(1000, bad)


def test_respaced_model_sees_original_timesteps():
    d = create_diffusion(timestep_respacing='10')
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return torch.zeros(x.shape[0], 8, *x.shape[2:])
    x0 = torch.randn(2, 4, 1, 4, 4)
    d.training_losses(model, x0, torch.randn(2, 3, 1, 4, 4), torch.tensor([0, 9]))
    assert seen[0].tolist() == [0, 999]


# ---- losses -----------------------------------------------------------------------------------------
def test_kl_identical_is_zero_and_matches_torch():
    m, lv = torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)
    assert normal_kl(m, lv, m, lv).abs().max() < 1e-15
    m2, lv2 = torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m, (0.5 * lv).exp()),
                                            torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m, lv, m2, lv2), ref)
    assert (normal_kl(m, lv, m2, lv2) >= 0).all()


def test_discretized_nll_is_a_distribution():
    """Over the 256 bin centres of [-1, 1] the probabilities are ≤ 1 and sum to 1 (edge bins open)."""
    x = torch.linspace(-1, 1, 256, dtype=torch.float64).view(-1, 1)
    means = torch.tensor([[-0.7, 0.0, 0.3, 1.2]], dtype=torch.float64)
    log_scales = torch.tensor([[-3.0, -1.0, 0.0, -5.0]], dtype=torch.float64)
    logp = discretized_gaussian_log_likelihood(x, means, log_scales)
    assert (logp <= 0).all()
    torch.testing.assert_close(logp.exp().sum(0), torch.ones(4, dtype=torch.float64), atol=1e-6, rtol=0)


def oracle_model(d, x0, noise, v=-1.0):
    """Outputs the true ε and a variance value v (v = −1: the posterior variance β̃_t)."""
    def model(x_in, t):
        ab = torch.from_numpy(d.alphas_cumprod).float()[t].view(-1, 1, 1, 1, 1)
        eps = (x_in[:, :4] - ab.sqrt() * x0) / (1 - ab).sqrt()
        return torch.cat([eps, torch.full_like(eps, v)], dim=1)
    return model


def test_perfect_eps_gives_zero_mse_and_kl():
    d = create_diffusion()
    x0, ref, noise = torch.randn(3, 4, 2, 6, 6), torch.randn(3, 16, 2, 6, 6), torch.randn(3, 4, 2, 6, 6)
    t = torch.tensor([10, 500, 990])
    terms = d.training_losses(oracle_model(d, x0, noise), x0, ref, t, noise=noise)
    assert set(terms) == {'loss', 'mse', 'vb'} and terms['loss'].shape == (3,)
    assert terms['mse'].max() < 1e-8
    assert terms['vb'].abs().max() < 1e-4                    # true mean, true variance: KL = 0
    worse = d.training_losses(oracle_model(d, x0, noise, v=1.0), x0, ref, t, noise=noise)
    assert (worse['vb'] >= terms['vb']).all() and worse['vb'][0] > 1e-3   # wrong variance costs bits


def test_loss_at_t0_is_decoder_nll_and_frames_average_to_samples():
    d = create_diffusion()
    x0, ref, noise = torch.rand(2, 4, 3, 4, 4) * 2 - 1, torch.randn(2, 16, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    t = torch.tensor([0, 7])
    out = torch.randn(2, 8, 3, 4, 4).clamp(-1, 1)
    model = lambda x, tt: out
    per_frame = d.training_losses(model, x0, ref, t, noise=noise, reduce='frame')
    per_sample = d.training_losses(model, x0, ref, t, noise=noise)
    for k in ('loss', 'mse', 'vb'):
        assert per_frame[k].shape == (2, 3)
        torch.testing.assert_close(per_frame[k].mean(1), per_sample[k])
    p = d.p_mean_variance(out, d.q_sample(x0, t, noise), t)
    nll = -discretized_gaussian_log_likelihood(x0, p['mean'], 0.5 * p['log_variance'])[0].mean() / math.log(2)
    torch.testing.assert_close(per_sample['vb'][0], nll)
    assert (per_sample['vb'] >= 0).all()


def test_vb_trains_only_the_variance_branch():
    d = create_diffusion()
    eps_w, v_w = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    model = lambda x, t: torch.cat([x[:, :4] * (1 + eps_w), torch.tanh(x[:, :4]) * v_w], dim=1)
    x0 = torch.randn(2, 4, 2, 4, 4)
    terms = d.training_losses(model, x0, torch.randn(2, 2, 2, 4, 4), torch.tensor([3, 400]))
    terms['vb'].sum().backward()
    assert eps_w.grad.abs().item() == 0 and v_w.grad.abs().item() > 0


def test_image_mode_kwargs_and_bad_inputs():
    d = create_diffusion()
    got = {}

    def model(x, t, **kw):
        got.update(kw)
        return torch.zeros(x.shape[0], 8, *x.shape[2:])
    d.training_losses(model, torch.randn(1, 4, 2, 4, 4), torch.randn(1, 16, 2, 4, 4), torch.tensor([5]),
                      model_kwargs=dict(as_images=True))
    assert got == dict(as_images=True)
    with pytest.raises(ValueError, match='diffusion/gaussian_diffusion.py.*expected \\(1, 8'):
        d.training_losses(lambda x, t: x[:, :4], torch.randn(1, 4, 2, 4, 4), torch.randn(1, 16, 2, 4, 4),
                          torch.tensor([5]))
    with pytest.raises(ValueError, match="reduce='frame' needs"):
        d.training_losses(model, torch.randn(1, 4, 4, 4), torch.randn(1, 16, 4, 4), torch.tensor([5]), reduce='frame')


# ---- samplers ---------------------------------------------------------------------------------------
class GaussianOracle:
    """Exact ε for data x0 ~ N(cond, s²), s per channel, at any t: ε* = √(1−ᾱ)(x_t − √ᾱ·cond)/(ᾱs² + 1 − ᾱ)."""

    def __init__(self, std):
        self.s2 = torch.as_tensor(std, dtype=torch.float64).view(1, -1, 1, 1, 1) ** 2
        self.log_ab = torch.from_numpy(np.log(create_diffusion().alphas_cumprod))
        self.seen = []

    def alpha_bar(self, t):
        """ᾱ(t), log-linear between integer steps (the DPM-Solver interpolation; exact at integers)."""
        t = t.double().clamp(0, 999)
        lo = t.floor().long().clamp(max=998)
        return torch.exp(self.log_ab[lo] + (t - lo) * (self.log_ab[lo + 1] - self.log_ab[lo])).view(-1, 1, 1, 1, 1)

    def __call__(self, x_in, t):
        self.seen.append(t.clone())
        C = self.s2.shape[1]
        x, mu, ab = x_in[:, :C].double(), x_in[:, C:].double(), self.alpha_bar(t)
        return ((1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * self.s2 + 1 - ab)).float()


STD = [0.5, 1.0, 0.8, 0.3]                   # data std per channel; latents are roughly unit-scale
MEAN = [-0.5, 0.3, 0.0, 0.8]                 # channel means of the conditioning (= the data mean)


def toy_problem(seed=0, T=8, hw=32):
    """noise and a conditioning that is the per-element data mean: channel mean ± 0.2."""
    g = torch.Generator().manual_seed(seed)
    cond = torch.tensor(MEAN).view(1, 4, 1, 1, 1) + (torch.rand(1, 4, T, hw, hw, generator=g) - 0.5) * 0.4
    noise = torch.randn(1, 4, T, hw, hw, generator=g)
    return noise, cond


def check_recovers_gaussian(x, cond, mean_tol, std_rtol):
    r = (x - cond).transpose(0, 1).reshape(4, -1)                     # x0 − E[x0], per channel
    assert r.mean(1).abs().max() < mean_tol, r.mean(1)
    torch.testing.assert_close(r.std(1), torch.tensor(STD), rtol=std_rtol, atol=0)


@pytest.mark.parametrize('name,steps,std_rtol', [('EulerA', 500, 0.05), ('DDIM', 250, 0.03), ('DPMS', 50, 0.02)])
def test_samplers_recover_toy_gaussian(name, steps, std_rtol):
    noise, cond = toy_problem()
    kw = dict(clip_sample=False) if name == 'DDIM' else {}                   # data exceed [-1, 1]
    x = SAMPLERS[name](GaussianOracle(STD), noise, cond, steps, torch.Generator().manual_seed(1), False,
                       NoiseSchedule(), **kw)
    assert x.shape == noise.shape
    check_recovers_gaussian(x, cond, mean_tol=0.03, std_rtol=std_rtol)


def test_iddpm_ancestral_recovers_toy_gaussian_with_learned_variance():
    """p_sample_loop over a 50-step respacing; the oracle returns the exact reverse mean and variance."""
    d = create_diffusion(timestep_respacing='50')
    oracle = GaussianOracle(STD)
    kept = torch.from_numpy(d.timestep_map)

    def model(x_in, t):
        eps = oracle(x_in, t.float())
        k = torch.searchsorted(kept, t)                               # respaced index of the original t
        ab = oracle.alpha_bar(t.float())
        var0 = oracle.s2 * (1 - ab) / (ab * oracle.s2 + 1 - ab)           # Var[x0 | x_t]
        coef1 = torch.from_numpy(d.posterior_mean_coef1)[k].view(-1, 1, 1, 1, 1)
        lo = torch.from_numpy(d.posterior_log_variance_clipped)[k].view(-1, 1, 1, 1, 1)
        hi = torch.from_numpy(d.log_betas)[k].view(-1, 1, 1, 1, 1)
        var = torch.from_numpy(d.posterior_variance)[k].view(-1, 1, 1, 1, 1) + coef1 ** 2 * var0
        v = 2 * (var.log() - lo) / (hi - lo) - 1
        return torch.cat([eps, v.expand_as(eps).float()], dim=1)
    noise, cond = toy_problem()
    x = d.p_sample_loop(model, noise, cond, generator=torch.Generator().manual_seed(2), progress=False)
    check_recovers_gaussian(x, cond, mean_tol=0.03, std_rtol=0.03)


def test_samplers_deterministic_for_a_seed():
    noise, cond = toy_problem(T=2, hw=8)
    run = lambda name, seed: get_sampler(name)(GaussianOracle(STD), noise, cond, 6,
                                               torch.Generator().manual_seed(seed), False)
    for name in ('EulerA', 'DDIM', 'DPMS'):
        assert torch.equal(run(name, 3), run(name, 3))
    assert not torch.allclose(run('EulerA', 3), run('EulerA', 4))
    assert torch.equal(run('DDIM', 3), run('DDIM', 4))               # η = 0: no noise drawn


def test_sampler_timesteps_seen_by_model():
    noise, cond = toy_problem(T=1, hw=4)
    for name, want in [('DDIM', [750, 500, 250, 0]), ('EulerA', [999, 666, 333, 0]),
                       ('DPMS', [999, 749.25, 499.5, 249.75])]:
        oracle = GaussianOracle(STD)
        get_sampler(name)(oracle, noise, cond, steps=4, progress=False)
        assert [s.dtype for s in oracle.seen] == [torch.float32] * 4
        torch.testing.assert_close(torch.stack(oracle.seen)[:, 0], torch.tensor(want, dtype=torch.float32))


def test_dpm_solver_first_order_matches_ddim_update():
    """One DPM-Solver++(1) step is DDIM (η=0) from t=1 to t_end: x = (σ_t/σ_s)·x − α_t(e^{−h} − 1)·x̂0."""
    noise, cond = toy_problem(T=1, hw=4)
    oracle = GaussianOracle(STD)
    x = dpms(oracle, noise, cond, steps=1, progress=False, order=2)
    ab = oracle.alpha_bar(torch.tensor([999.0, 0.0])).flatten().float()
    eps = oracle(torch.cat([noise, cond], 1), torch.tensor([999.0]))
    x0 = (noise - (1 - ab[0]).sqrt() * eps) / ab[0].sqrt()
    torch.testing.assert_close(x, ab[1].sqrt() * x0 + (1 - ab[1]).sqrt() * eps, rtol=1e-4, atol=1e-4)


def test_sampler_bad_inputs():
    noise, cond = toy_problem(T=1, hw=4)
    with pytest.raises(ValueError, match="diffusion/samplers.py: unknown sampler 'Heun'"):
        get_sampler('Heun')
    for name in SAMPLERS:
        with pytest.raises(ValueError, match='must be'):
            get_sampler(name)(GaussianOracle(STD), noise, cond[..., :2], progress=False)
        with pytest.raises(ValueError, match='ε channels only'):
            get_sampler(name)(lambda x, t: x, noise, cond, progress=False)
        with pytest.raises(ValueError, match='steps=0'):
            get_sampler(name)(GaussianOracle(STD), noise, cond, 0, progress=False)


def test_samplers_share_one_signature_and_the_schedule():
    """Every registered sampler takes (eps_fn, noise, cond, steps, generator, progress, schedule) positionally,
    and the schedule's β range reaches the model: a different beta_end changes every sampler's output."""
    import inspect
    for fn in SAMPLERS.values():
        params = inspect.signature(fn).parameters
        assert list(params)[:7] == ['eps_fn', 'noise', 'cond', 'steps', 'generator', 'progress', 'schedule']
        assert params['callback'].kind is inspect.Parameter.KEYWORD_ONLY and params['callback'].default is None
    noise, cond = toy_problem(T=1, hw=4)
    for name, fn in SAMPLERS.items():
        run = lambda schedule: fn(GaussianOracle(STD), noise, cond, 3, torch.Generator().manual_seed(0), False,
                                  schedule)
        assert torch.equal(run(NoiseSchedule()), run(None)), name          # None: the training default
        assert not torch.allclose(run(NoiseSchedule(beta_end=0.03)), run(None)), name
    sched = NoiseSchedule.from_config(dict(num_timesteps=1000, beta_start=1e-4, beta_end=0.02))
    ab = torch.from_numpy(create_diffusion().alphas_cumprod)
    torch.testing.assert_close(sched.log_alpha.double(), 0.5 * ab.log(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('name', list(SAMPLERS))
def test_callback_once_per_step_without_changing_the_result(name):
    """callback: one dict per step, i = 0..steps-1, t = the timestep the model saw, x after the step (the last x
    is the result), eps = the model's output, denoised = x̂0 of that step; the result is bit-identical."""
    noise, cond = toy_problem(T=2, hw=4)
    steps, sampler = 4, get_sampler(name)
    run = lambda oracle, **kw: sampler(oracle, noise, cond, steps, torch.Generator().manual_seed(0), False, **kw)
    oracle, seen = GaussianOracle(STD), []
    plain = run(GaussianOracle(STD))
    out = run(oracle, callback=lambda info: seen.append({k: (v.clone() if torch.is_tensor(v) else v)
                                                         for k, v in info.items()}))
    assert torch.equal(out, plain)
    assert [d['i'] for d in seen] == list(range(steps)) and all(set(d) == {'i', 't', 'x', 'eps', 'denoised'}
                                                               for d in seen)
    assert [d['t'] for d in seen] == [float(t[0]) for t in oracle.seen]
    assert torch.equal(seen[-1]['x'], out)
    for d in seen:
        assert d['x'].shape == d['eps'].shape == d['denoised'].shape == noise.shape
    # the last step lands (EulerA σ -> 0, DDIM ᾱ -> 1) or nearly lands (DPMS at t = 1/N, σ ≈ 0.01) on its x̂0
    assert (seen[-1]['x'] - seen[-1]['denoised']).abs().max() < 0.05
    assert (seen[0]['x'] - seen[0]['denoised']).abs().max() > 0.5            # the first one does not


def test_diffusion_imports_no_network():
    """diffusion/ takes an ε function; it never imports models/ (the pipeline owns the DiT wrapper)."""
    import pathlib
    for f in (pathlib.Path(__file__).resolve().parents[1] / 'diffusion').glob('*.py'):
        text = f.read_text()
        assert 'import models' not in text and 'from models' not in text and 'forward_windowed' not in text, f
