"""The variational bound (genlab.diffusion.likelihood) against closed forms, brute force and known answers."""
import math

import pytest
import torch

from genlab.data.base import to_model
from genlab.diffusion.denoiser import Denoiser
from genlab.diffusion.likelihood import (discretized_gaussian_log_likelihood, normal_kl, posterior_mean_var,
                                         prior_bpd, vlb_bpd, vlb_terms)
from genlab.diffusion.process import eps_from_x0
from genlab.diffusion.schedules import Schedule

LEVELS = 17


class Oracle:
    """A denoiser that always answers x0_hat = x_star (with the eps_hat consistent with x_t)."""

    def __init__(self, x_star, schedule):
        self.x_star, self.schedule = x_star, schedule

    def __call__(self, x_t, t):
        ab = torch.cumprod(1 - self.schedule.betas.double(), 0)[t].to(x_t)
        x0 = self.x_star.expand_as(x_t).to(x_t)
        return x0, eps_from_x0(x_t, x0, ab)


class RandomLinear:
    """A fixed random (non-oracle) denoiser: x0_hat = sqrt(ab_t) x_t + sqrt(1 - ab_t) / 2 tanh(W_t x_t + b_t), the
    posterior mean for N(0, I) data plus a time-dependent random error that shrinks with the noise, so that all
    terms of the bound are of a similar size."""

    def __init__(self, dims, schedule, seed=0):
        T = schedule.T
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(T, dims, dims, generator=g, dtype=torch.float64) / dims ** 0.5
        self.b = torch.randn(T, dims, generator=g, dtype=torch.float64)
        self.ab = torch.cumprod(1 - schedule.betas.double(), 0)

    def __call__(self, x_t, t):
        ab = self.ab[t][:, None]
        flat = x_t.flatten(1).to(torch.float64)
        err = torch.tanh(torch.einsum("nij,nj->ni", self.W[t], flat) + self.b[t])
        out = ab.sqrt() * flat + 0.5 * (1 - ab).sqrt() * err
        return out.reshape(x_t.shape).to(x_t.dtype), torch.zeros_like(x_t)


def image(seed, shape=(1, 4, 4), levels=LEVELS):
    g = torch.Generator().manual_seed(seed)
    return to_model(torch.randint(0, levels, (1, *shape), generator=g), levels).double()


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(2, 100, generator=g, dtype=torch.float64)
    lv1, lv2 = 2 * torch.randn(2, 100, generator=g, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                            torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), ref, rtol=1e-10, atol=1e-12)
    assert normal_kl(m1, lv1, m1, lv1).abs().max() == 0


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_discretized_gaussian_sums_to_one_and_matches_cdf(levels):
    grid = torch.arange(levels, dtype=torch.float64) / (levels - 1) * 2 - 1  # exact (to_model is float32)
    normal = torch.distributions.Normal(0.0, 1.0)
    h = 1.0 / (levels - 1)
    for mean in (-3.0, -1.0, -0.37, 0.0, 0.5, 1.0, 2.5):
        for scale in (1e-3, 0.02, 0.3, 1.0, 10.0):
            m = torch.full_like(grid, mean)
            logp = discretized_gaussian_log_likelihood(grid, m, math.log(scale), levels)
            assert torch.isfinite(logp).all() and (logp <= 0).all()
            assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
            # direct computation: CDF differences with the edge bins open to +-inf
            upper = torch.where(torch.arange(levels) == levels - 1, torch.tensor(1.0, dtype=torch.float64),
                                normal.cdf((grid + h - mean) / scale))
            lower = torch.where(torch.arange(levels) == 0, torch.tensor(0.0, dtype=torch.float64),
                                normal.cdf((grid - h - mean) / scale))
            assert torch.allclose(logp.exp(), upper - lower, rtol=0, atol=1e-13)
            big = (upper - lower) > 1e-6
            assert torch.allclose(logp[big], (upper - lower)[big].log(), rtol=1e-8, atol=1e-10)
            # the float32 grid of to_model still sums to one: neighbouring bins share their edges exactly
            grid32 = to_model(torch.arange(levels), levels)
            logp32 = discretized_gaussian_log_likelihood(grid32, torch.full_like(grid32, mean), math.log(scale),
                                                         levels)
            assert logp32.double().exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_discretized_gaussian_far_tails_are_finite():
    """Bins tens of standard deviations away keep finite log-probabilities (float32 and float64), close to the
    Gaussian tail asymptote log Phi(-z) ~ -z^2/2 - log(z sqrt(2 pi))."""
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=dtype)
        mean = torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=dtype)
        logp = discretized_gaussian_log_likelihood(x, mean, math.log(0.01), LEVELS)
        assert torch.isfinite(logp).all()
        z = (2.0 - 1 / 16) / 0.01  # edge bins: one-sided tails starting 2 - h away from the mean
        asym = -z * z / 2 - math.log(z * math.sqrt(2 * math.pi))
        assert logp[0].item() == pytest.approx(asym, rel=1e-4)
        assert logp[1].item() == pytest.approx(asym, rel=1e-4)


def test_posterior_mean_var_matches_bayes():
    """q(x_{t-1}|x_t,x_0) from the Gaussian product of q(x_t|x_{t-1}) and q(x_{t-1}|x_0) (DDPM eq. 6-7)."""
    s = Schedule.create("cosine", 30)
    ab = torch.cumprod(1 - s.betas.double(), 0)
    g = torch.Generator().manual_seed(3)
    x0, xt = torch.randn(2, 5, 1, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 4, 10, 20, 29])
    mean, var = posterior_mean_var(s, x0, xt, t)
    a, b = (1 - s.betas.double())[t], s.betas.double()[t]
    m_prev, v_prev = ab[t - 1].sqrt(), 1 - ab[t - 1]
    prec = a / b + 1 / v_prev
    ref_mean = (a.sqrt()[:, None, None, None] * xt / b[:, None, None, None]
                + m_prev[:, None, None, None] * x0 / v_prev[:, None, None, None]) / prec[:, None, None, None]
    assert torch.allclose(mean, ref_mean, rtol=1e-10)
    assert torch.allclose(var.flatten(), 1 / prec, rtol=1e-10)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_known_answer_oracle(kind):
    """For a dataset of one image x* and the oracle x0_hat = x*, every KL term vanishes; the bound is
    KL(N(sqrt(ab_T) x*, 1 - ab_T) || N(0, 1)) plus -log of the decoder mass of x*'s own bin."""
    s = Schedule.create(kind, 50)
    x_star = image(1)
    x_star[0, 0, 0, 0], x_star[0, 0, 0, 1] = -1.0, 1.0  # make sure both edge bins occur
    x0 = x_star.repeat(3, 1, 1, 1)
    den = Oracle(x_star, s)
    out = vlb_bpd(den, s, x0, LEVELS, generator=torch.Generator().manual_seed(0), batch_t=7)

    ab_T = torch.prod(1 - s.betas.double()).item()
    prior = sum(0.5 * (ab_T * v * v + (1 - ab_T) - 1 - math.log(1 - ab_T)) for v in x_star.flatten().tolist())
    z = (1 / (LEVELS - 1)) / math.sqrt(s.betas[0].item())
    interior, edge = math.erf(z / math.sqrt(2)), 0.5 * math.erfc(-z / math.sqrt(2))
    decoder = -sum(math.log(edge if abs(v) == 1 else interior) for v in x_star.flatten().tolist())
    D = x_star.numel()
    to_bpd = 1 / (D * math.log(2))

    assert out["terms_bpd"].shape == (50,)
    assert (out["terms_bpd"][1:] == 0).all()
    assert torch.allclose(out["prior_bpd"], torch.full((3,), prior * to_bpd, dtype=torch.float64), rtol=1e-10)
    assert torch.allclose(out["decoder_bpd"], torch.full((3,), decoder * to_bpd, dtype=torch.float64),
                          rtol=1e-6, atol=1e-14)
    expected = (prior + decoder) * to_bpd
    assert torch.allclose(out["bpd"], torch.full((3,), expected, dtype=torch.float64), rtol=1e-6, atol=0)
    assert torch.allclose(prior_bpd(s, x0), out["prior_bpd"])


def test_worse_denoiser_gives_larger_bound():
    s = Schedule.create("cosine", 50)
    x_star, other = image(1), image(2)
    gen = lambda: torch.Generator().manual_seed(0)
    good = vlb_bpd(Oracle(x_star, s), s, x_star, LEVELS, generator=gen())
    bad = vlb_bpd(Oracle(other, s), s, x_star, LEVELS, generator=gen())
    assert (bad["bpd"] > good["bpd"] + 0.1).all()
    assert (bad["terms_bpd"][1:] > 0).all()
    # the "large" variance can only add to the KL terms of the oracle, which are exactly zero with "small"
    large = vlb_bpd(Oracle(x_star, s), s, x_star, LEVELS, variance="large", generator=gen())
    assert (large["bpd"] > good["bpd"]).all()


def test_vlb_terms_mixed_timesteps_match_single():
    """A batch mixing t = 0 (decoder) and t >= 1 (KL) equals the terms computed one timestep at a time."""
    s = Schedule.create("linear", 20, beta_end=0.2)
    x0 = torch.cat([image(i) for i in range(4)])
    den = RandomLinear(16, s)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t = torch.tensor([0, 3, 0, 19])
    mixed = vlb_terms(den, s, x0, t, noise, LEVELS)
    single = torch.stack([vlb_terms(den, s, x0[i:i + 1], t[i:i + 1], noise[i:i + 1], LEVELS)[0] for i in range(4)])
    assert torch.allclose(mixed, single, rtol=1e-12)
    assert (mixed > 0).all()


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_monte_carlo_estimate_is_unbiased(kind):
    """The mean of many t_samples estimates matches the mean of exact bounds within a few standard errors
    (each image copy is an independent draw of noise and timesteps). With these sizes, scaling by T/K instead
    of (T-1)/K would be off by about 2-3 (K=1) and 5.5 (K=3) standard errors."""
    T, reps = 20, 12000
    s = (Schedule.create("linear", T, beta_start=0.02, beta_end=0.3) if kind == "linear"
         else Schedule.create("cosine", T))
    den = RandomLinear(16, s)
    for seed in (1, 2):
        x0 = image(seed).repeat(reps, 1, 1, 1)
        exact = vlb_bpd(den, s, x0, LEVELS, generator=torch.Generator().manual_seed(10 + seed), batch_t=5)
        for k in (1, 3):
            mc = vlb_bpd(den, s, x0, LEVELS, t_samples=k, generator=torch.Generator().manual_seed(20 + seed + k),
                         batch_t=3)
            se = math.sqrt(mc["bpd"].var().item() / reps + exact["bpd"].var().item() / reps)
            assert abs(mc["bpd"].mean().item() - exact["bpd"].mean().item()) < 3.5 * se
            assert torch.allclose(mc["prior_bpd"], exact["prior_bpd"])
            assert mc["bpd"].std() > exact["bpd"].std()  # sampling timesteps adds variance


def test_reproducible_and_independent_of_batch_t():
    s = Schedule.create("cosine", 20)
    x0 = torch.cat([image(i) for i in range(3)])
    den = RandomLinear(16, s)
    a = vlb_bpd(den, s, x0, LEVELS, generator=torch.Generator().manual_seed(0), batch_t=1)
    b = vlb_bpd(den, s, x0, LEVELS, generator=torch.Generator().manual_seed(0), batch_t=6)
    for key in ("bpd", "prior_bpd", "decoder_bpd", "diffusion_bpd", "terms_bpd"):
        assert torch.allclose(a[key], b[key], rtol=1e-12)
    assert torch.allclose(a["bpd"].mean(), a["prior_bpd"].mean() + a["terms_bpd"].sum(), rtol=1e-12)
    c = vlb_bpd(den, s, x0, LEVELS, t_samples=2, generator=torch.Generator().manual_seed(0), batch_t=2)
    d = vlb_bpd(den, s, x0, LEVELS, t_samples=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(c["bpd"], d["bpd"]) and "terms_bpd" not in c


def test_rejects_off_grid_images():
    s = Schedule.create("cosine", 10)
    with pytest.raises(ValueError, match="grid"):
        vlb_bpd(RandomLinear(16, s), s, image(0) + 0.01, LEVELS)


def test_with_unet_denoiser():
    """Integration with genlab's Denoiser around a tiny random UNet (float32): finite, positive terms, and the
    Monte Carlo estimate has the same shape of output."""
    from conftest import random_unet

    T = 20
    s = Schedule.create("cosine", T)
    net = random_unet((1, 2), std=0.1)
    den = Denoiser(net, s, "eps")
    g = torch.Generator().manual_seed(0)
    x0 = to_model(torch.randint(0, LEVELS, (2, 1, 8, 8), generator=g), LEVELS)
    out = vlb_bpd(den, s, x0, LEVELS, generator=g)
    assert out["bpd"].shape == (2,) and out["terms_bpd"].shape == (T,)
    assert torch.isfinite(out["bpd"]).all() and (out["terms_bpd"] > 0).all()
    mc = vlb_bpd(den, s, x0, LEVELS, t_samples=4, generator=g)
    assert mc["bpd"].shape == (2,) and torch.isfinite(mc["bpd"]).all()
