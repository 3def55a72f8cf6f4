"""Schedules, the forward process and parameterizations against closed forms and brute force."""
import math

import pytest
import torch

from genlab.diffusion.process import (PREDICTIONS, eps_from_v, q_sample, target, to_x0_eps, v_target,
                                      x0_from_eps)
from genlab.diffusion.schedules import Schedule, cosine_alpha_bar, cosine_betas, linear_betas, timesteps


def test_linear_betas_closed_form():
    b = linear_betas(1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    assert torch.allclose(b[1:] - b[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    s = Schedule.create("linear", 1000)
    # alpha_bar_t = exp(sum log(1 - beta)) computed independently in float64
    ab = torch.exp(torch.cumsum(torch.log1p(-b), 0))
    assert torch.allclose(s.alphas_cumprod.double(), ab, rtol=1e-5, atol=1e-8)


def test_cosine_alpha_bar_telescopes():
    """prod_{s<=t} (1 - beta_s) = alpha_bar((t+1)/T) exactly where no beta was clipped (improved DDPM eq. 17)."""
    T = 1000
    b = cosine_betas(T)
    clipped = b >= 0.999
    ab = torch.cumprod(1 - b, 0)
    ref = cosine_alpha_bar(torch.arange(1, T + 1, dtype=torch.float64) / T)
    first_clip = int(clipped.nonzero()[0]) if clipped.any() else T
    assert torch.allclose(ab[:first_clip], ref[:first_clip], rtol=1e-9, atol=1e-12)
    assert cosine_alpha_bar(0.0).item() == pytest.approx(1.0)
    assert b.max().item() <= 0.999


def test_snr_and_sigmas_relations():
    s = Schedule.create("cosine", 200)
    ab = s.alphas_cumprod.double()
    assert torch.allclose(s.snr.double(), ab / (1 - ab), rtol=1e-5)
    assert torch.allclose(s.sigmas.double() ** 2, 1 / s.snr.double(), rtol=1e-4)
    assert (s.snr[1:] < s.snr[:-1]).all(), "SNR must decrease with t"


def test_forward_noising_moments():
    g = torch.Generator().manual_seed(0)
    s = Schedule.create("linear", 1000)
    x0 = torch.tensor([0.7, -0.3])
    for t in (0, 250, 999):
        ab = s.alphas_cumprod[t]
        eps = torch.randn(200_000, 2, generator=g)
        xt = q_sample(x0.expand(200_000, 2), ab.expand(200_000), eps)
        assert torch.allclose(xt.mean(0), ab.sqrt() * x0, atol=0.01)
        assert torch.allclose(xt.var(0), (1 - ab).expand(2), atol=0.01)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_parameterization_round_trip(prediction):
    g = torch.Generator().manual_seed(1)
    s = Schedule.create("cosine", 1000)
    x0 = torch.rand(16, 1, 4, 4, generator=g) * 2 - 1
    eps = torch.randn(16, 1, 4, 4, generator=g)
    t = torch.randint(0, 1000, (16,), generator=g)
    ab = s.alphas_cumprod[t]
    xt = q_sample(x0, ab, eps)
    out = target(prediction, x0, eps, ab)
    x0_hat, eps_hat = to_x0_eps(prediction, out, xt, ab)
    assert torch.allclose(x0_hat, x0, atol=2e-3 if prediction == "eps" else 1e-5)
    assert torch.allclose(eps_hat, eps, atol=2e-3 if prediction == "x0" else 1e-5)


def test_v_definition():
    """v = alpha eps - sigma x0 with alpha^2 + sigma^2 = 1 (Salimans & Ho 2022, sec. 4)."""
    ab = torch.tensor([0.3])
    x0, eps = torch.tensor([[0.5]]), torch.tensor([[-1.2]])
    v = v_target(x0, eps, ab)
    assert v.item() == pytest.approx(math.sqrt(0.3) * -1.2 - math.sqrt(0.7) * 0.5)
    xt = q_sample(x0, ab, eps)
    assert eps_from_v(xt, v, ab).item() == pytest.approx(-1.2, abs=1e-6)
    assert x0_from_eps(xt, eps, ab).item() == pytest.approx(0.5, abs=1e-6)


def test_bad_schedule_names():
    with pytest.raises(ValueError, match="choose one of"):
        Schedule.create("quadratic", 10)
    with pytest.raises(ValueError, match="spacing"):
        timesteps(1000, 10, "uniform")
    with pytest.raises(ValueError, match="between 1"):
        timesteps(100, 101)


def test_trailing_spacing_for_every_step_count():
    for steps in range(1, 1001):
        ts = timesteps(1000, steps, "trailing")
        assert len(ts) == steps and ts[0] == 999 and ts.min() >= 0, steps
        assert (ts[:-1] > ts[1:]).all(), steps


def test_min_snr_weights_closed_form():
    """Hang et al. 2023: weight min(SNR, gamma) in x0 space; the three targets must weight the same x0 error."""
    from genlab.methods.diffusion import snr_weight

    snr = torch.tensor([0.01, 1.0, 5.0, 100.0])
    gamma = 5.0
    w_x0 = snr_weight(snr, "x0", gamma)
    assert torch.allclose(w_x0, torch.tensor([0.01, 1.0, 5.0, 5.0]))
    # ||eps err||^2 = SNR ||x0 err||^2 and ||v err||^2 = (1 + SNR) ||x0 err||^2
    assert torch.allclose(snr_weight(snr, "eps", gamma) * snr, w_x0)
    assert torch.allclose(snr_weight(snr, "v", gamma) * (snr + 1), w_x0)


def test_fractional_timesteps_interpolate_log_sigma():
    s = Schedule.create("cosine", 1000)
    t = torch.tensor([0.0, 10.0, 10.5, 998.25])
    ab = s.alpha_bar_at(t)
    assert torch.allclose(ab[:2].float(), s.alphas_cumprod[[0, 10]], rtol=1e-6)
    sig = ((1 - ab) / ab).sqrt()
    assert torch.allclose(s.sigma_to_t(sig), t.double(), atol=1e-6)
    assert s.sigmas[10] < sig[2] < s.sigmas[11]
