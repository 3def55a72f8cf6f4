"""The variational bound (VLB) of a discrete-time diffusion model, in bits per dimension.

DDPM (Ho et al. 2020) eq. 5 bounds the negative log-likelihood of an image x_0 by

    L = L_T + sum_{t>1} L_{t-1} + L_0,
    L_T     = KL(q(x_T | x_0) || N(0, I)),
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),
    L_0     = -log p(x_0 | x_1),

with the Gaussian posterior q(x_{t-1} | x_t, x_0) of DDPM eq. 6-7 and the model p(x_{t-1} | x_t), whose mean is
the posterior mean with x_0 replaced by the network's x0_hat (equivalent to DDPM eq. 11) and whose variance is fixed
to beta_tilde_t ("small") or beta_t ("large") (DDPM sec. 3.2). L_0 uses the discretized Gaussian decoder of DDPM
sec. 3.3 (eq. 13) on genlab's pixel levels (see :func:`genlab.data.base.to_model`).

Indexing: code timesteps t = 0..T-1 are DDPM's t + 1, so ``schedule.betas[0]`` is beta_1 and
``alphas_cumprod[0]`` is alpha_bar_1. :func:`vlb_terms` at code index t returns the term whose expectation is over
x_t ~ q(x_t | x_0): t = 0 gives L_0 (decoder on x_1), t >= 1 gives DDPM's L_t = KL(q(x_t | x_{t+1}, x_0) || p)
in DDPM numbering, i.e. the KL between distributions over code-index x_{t-1}. The exact bound is the prior term
plus all T terms: T network evaluations per image.

Everything works on any float dtype (float64 for exact checks); schedule coefficients are computed in float64
from ``schedule.betas`` and then cast to the dtype of the images.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .process import q_sample
from .schedules import Schedule

VARIANCES = ("small", "large")


# ----------------------------------------------------------------------------------------------- pure functions

def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats (arguments broadcast):

    0.5 * (logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2) - 1).

    This is the closed form of the Gaussian KL used for every L_{t-1} in DDPM eq. 5 (the "Rao-Blackwellized"
    comparison of Gaussians mentioned below eq. 5).
    """
    mean1, logvar1, mean2, logvar2 = (torch.as_tensor(a) for a in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(-d)) for d >= 0, accurate for small and large d (Maechler 2012, "Accurately computing
    log(1 - exp(-|a|))")."""
    return torch.where(d <= math.log(2.0), torch.log(-torch.expm1(-d)), torch.log1p(-torch.exp(-d)))


def log_normal_cdf_diff(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for standardized bounds lo < hi (either may be -inf / +inf), stable in both tails.

    When the interval lies in the upper tail (lo > 0) it is mirrored, Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi), so
    both CDF values are never close to 1; then log(Phi(b) - Phi(a)) = log Phi(b) + log(1 - exp(log Phi(a) -
    log Phi(b))) with ``torch.special.log_ndtr``, which is accurate far into the lower tail.
    """
    flip = lo > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_b = torch.special.log_ndtr(b)
    log_a = torch.special.log_ndtr(a)
    return log_b + _log1mexp(log_b - log_a)


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale, levels: int) -> torch.Tensor:
    """log p(x | mean, scale) of the discretized Gaussian decoder (DDPM sec. 3.3, eq. 13), elementwise, in nats.

    x: model-space values on the level grid ``v / (levels - 1) * 2 - 1``, v = 0..levels-1 (snapped to the nearest
    level). Each level owns the bin [x - h, x + h] with h = 1 / (levels - 1) (bin width 2 / (levels - 1)); the
    first bin extends to -inf and the last to +inf (the delta_- / delta_+ of eq. 13), so the probabilities of all
    levels sum to 1 for any mean (also outside [-1, 1]) and scale. The probability of a bin is
    Phi((upper - mean)/scale) - Phi((lower - mean)/scale), computed in log space by :func:`log_normal_cdf_diff`.
    """
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    log_scale = torch.as_tensor(log_scale, dtype=x.dtype, device=x.device)
    inv_scale = torch.exp(-log_scale)
    # bin edges from the snapped level k, (k -+ 1/2) * 2/(L-1) - 1, so that neighbouring bins share their edge
    # exactly (x +- h would leave float-rounding gaps when x is float32 from to_model)
    k = torch.round((x + 1) * ((levels - 1) / 2))
    step = 2.0 / (levels - 1)
    lower, upper = (k - 0.5) * step - 1, (k + 0.5) * step - 1
    lo = torch.where(k <= 0, torch.full_like(x, -math.inf), (lower - mean) * inv_scale)
    hi = torch.where(k >= levels - 1, torch.full_like(x, math.inf), (upper - mean) * inv_scale)
    return log_normal_cdf_diff(lo, hi)


def _alpha_bars64(schedule: Schedule) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s) (DDPM eq. 4 notation), float64 on the CPU."""
    return torch.cumprod(1.0 - schedule.betas.detach().cpu().double(), 0)


def _per_sample(values64: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values64[t] as (N, 1, ..., 1) in like's dtype and device."""
    v = values64[t.detach().cpu()]
    return v.reshape(-1, *([1] * (like.dim() - 1))).to(device=like.device, dtype=like.dtype)


def _as_timesteps(t, n: int, T: int, device) -> torch.Tensor:
    t = torch.as_tensor(t, device=device)
    if t.is_floating_point():
        raise TypeError("timesteps must be integers 0..T-1")
    t = t.long()
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"t must be a scalar or of shape ({n},), got {tuple(t.shape)}")
    if n and (int(t.min()) < 0 or int(t.max()) >= T):
        raise ValueError(f"timesteps must lie in 0..{T - 1}")
    return t


def _posterior_coefs64(schedule: Schedule, t: torch.Tensor):
    """DDPM eq. 7 at code indices t (DDPM's t + 1), float64 (len(t),) each: (coef_x0, coef_xt, beta_tilde, beta),
    with alpha_bar before the first step taken as 1 (so beta_tilde = 0 at t = 0)."""
    t = t.detach().cpu()
    betas = schedule.betas.detach().cpu().double()
    ab = _alpha_bars64(schedule)
    ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
    beta, ab_t, ab_p = betas[t], ab[t], ab_prev[t]
    coef_x0 = ab_p.sqrt() * beta / (1 - ab_t)
    coef_xt = (1 - beta).sqrt() * (1 - ab_p) / (1 - ab_t)
    beta_tilde = beta * (1 - ab_p) / (1 - ab_t)
    return coef_x0, coef_xt, beta_tilde, beta


def posterior_mean_var(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t):
    """Mean and variance of q(x_{t-1} | x_t, x_0) (DDPM eq. 6-7) at code timesteps t (scalar or (N,)):

    mu_tilde = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) /
    (1 - alpha_bar_t) x_t,  beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t,

    in DDPM's numbering (code index t is DDPM's t + 1; at code t = 0 the mean is x_0 and the variance 0).
    Returns ``(mean, var)``: mean shaped like x_t, var of shape (N, 1, ..., 1), both in x_t's dtype.
    The model's mean (equivalent to DDPM eq. 11) is ``posterior_mean_var(schedule, x0_hat, x_t, t)[0]``.
    """
    t = _as_timesteps(t, x_t.shape[0], schedule.T, x_t.device)
    coef_x0, coef_xt, beta_tilde, _ = _posterior_coefs64(schedule, t)
    idx = torch.arange(len(t))
    mean = _per_sample(coef_x0, idx, x_t) * x0 + _per_sample(coef_xt, idx, x_t) * x_t
    return mean, _per_sample(beta_tilde, idx, x_t)


def prior_kl(schedule: Schedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) in nats per image, (N,): q(x_T | x_0) = N(sqrt(alpha_bar_T) x_0,
    (1 - alpha_bar_T) I) (DDPM eq. 4), summed over the pixels. Has no learnable parameters (DDPM sec. 3.1)."""
    ab_T = float(_alpha_bars64(schedule)[-1])
    mean = math.sqrt(ab_T) * x0
    logvar = torch.full_like(x0, math.log1p(-ab_T))
    kl = normal_kl(mean, logvar, torch.zeros_like(x0), torch.zeros_like(x0))
    return kl.flatten(1).sum(1)


def nats_to_bpd(nats: torch.Tensor, dims: int) -> torch.Tensor:
    """Nats per image to bits per dimension: nats / (D ln 2)."""
    return nats / (dims * math.log(2.0))


def prior_bpd(schedule: Schedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T (see :func:`prior_kl`) in bits per dimension, (N,)."""
    return nats_to_bpd(prior_kl(schedule, x0), x0[0].numel())


# ------------------------------------------------------------------------------------------------------- terms

def vlb_terms(denoiser, schedule: Schedule, x0: torch.Tensor, t, noise: torch.Tensor, levels: int,
              variance: str = "small") -> torch.Tensor:
    """One term of the bound per image, in nats, (N,), at code timesteps t (scalar or LongTensor (N,)).

    x_t = q_sample(x0, alpha_bar_t, noise) (DDPM eq. 4) is fed to ``denoiser(x_t, t) -> (x0_hat, eps_hat)``
    (only x0_hat is used). t = 0: L_0 = -log p(x_0 | x_1), the discretized Gaussian decoder (DDPM eq. 13) with mean
    x0_hat (the model mean at the first step, since alpha_bar_0 = 1) and std sqrt(beta_1). t >= 1: the KL
    between q(x_{t-1} | x_t, x_0) (eq. 6-7) and p(x_{t-1} | x_t) with mean mu_tilde(x_t, x0_hat) and variance
    beta_tilde_t (``variance="small"``) or beta_t (``"large"``), summed over pixels.
    x0 must lie on the level grid of ``levels``.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")
    n = x0.shape[0]
    t = _as_timesteps(t, n, schedule.T, x0.device)
    ab = _alpha_bars64(schedule)[t.cpu()].to(device=x0.device, dtype=x0.dtype)
    x_t = q_sample(x0, ab, noise.to(x0))
    x0_hat, _ = denoiser(x_t, t)
    x0_hat = x0_hat.to(x0.dtype)
    is_dec = t == 0
    out = x0.new_zeros(n)

    if bool(is_dec.any()):
        log_scale = 0.5 * math.log(float(schedule.betas[0]))
        ll = discretized_gaussian_log_likelihood(x0, x0_hat, log_scale, levels)
        out = torch.where(is_dec, -ll.flatten(1).sum(1), out)

    if not bool(is_dec.all()):
        t_kl = t.clamp(min=1)  # rows with t = 0 are computed on a valid step and discarded
        coef_x0, coef_xt, beta_tilde, beta = _posterior_coefs64(schedule, t_kl)
        idx = torch.arange(n)
        c0, ct = _per_sample(coef_x0, idx, x0), _per_sample(coef_xt, idx, x0)
        mean_q = c0 * x0 + ct * x_t
        mean_p = c0 * x0_hat + ct * x_t
        logvar_q = _per_sample(beta_tilde.log(), idx, x0)
        logvar_p = logvar_q if variance == "small" else _per_sample(beta.log(), idx, x0)
        kl = normal_kl(mean_q, logvar_q, mean_p, logvar_p).flatten(1).sum(1)
        out = torch.where(is_dec, out, kl)
    return out


def _check_on_grid(x0: torch.Tensor, levels: int, tol: float = 1e-3) -> None:
    k = (x0.detach().double() + 1) * ((levels - 1) / 2)
    if x0.numel() and (float((k - k.round()).abs().max()) > tol or float(k.min()) < -tol
                       or float(k.max()) > levels - 1 + tol):
        raise ValueError(f"x0 must lie on the grid of {levels} levels in [-1, 1] (see genlab.data.base.to_model)")


@torch.no_grad()
def vlb_bpd(denoiser, schedule: Schedule, x0: torch.Tensor, levels: int, *, variance: str = "small",
            t_samples: Optional[int] = None, generator: Optional[torch.Generator] = None,
            batch_t: int = 1) -> dict:
    """The variational bound (DDPM eq. 5) per image, in bits per dimension (D = C*H*W).

    t_samples=None: the exact bound, L_T plus all T terms of :func:`vlb_terms` (T network evaluations per image,
    each with one noise sample, so it is a single-sample estimate over q). t_samples=K: an unbiased Monte Carlo
    estimate: the KL terms are replaced by (T - 1)/K times the sum of K terms at timesteps drawn uniformly from
    1..T-1 independently per image; L_0 and L_T are always computed.

    Noise and timesteps come from ``generator`` (on its device, then moved to x0's) for reproducibility.
    batch_t: how many timesteps to stack into one denoiser call (N * batch_t rows); results do not depend on it.
    Keep it 1 for a denoiser bound to per-image data of batch size N (e.g. class labels ``y``).
    Put the network in eval mode first (dropout).

    Returns a dict of tensors: "bpd" (N,) the total, "prior_bpd" (N,) L_T, "decoder_bpd" (N,) L_0,
    "diffusion_bpd" (N,) the KL terms t >= 1 (exact sum or estimate), and for the exact bound "terms_bpd" (T,),
    the mean over images of the term at each code timestep (index 0 the decoder; the prior not included).
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")
    if batch_t < 1:
        raise ValueError(f"batch_t must be >= 1, got {batch_t}")
    _check_on_grid(x0, levels)
    n, T = x0.shape[0], schedule.T
    dims = x0[0].numel()
    gen_device = generator.device if generator is not None else x0.device

    def draw_noise():
        return torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)

    def run(ts: list) -> torch.Tensor:
        """Terms (len(ts), N) for the list of per-image timestep tensors ts, batch_t of them per call."""
        out = []
        for i in range(0, len(ts), batch_t):
            chunk = ts[i:i + batch_t]
            noise = torch.cat([draw_noise() for _ in chunk])  # one draw per timestep: independent of batch_t
            t = torch.cat(chunk)
            x = x0.repeat(len(chunk), *([1] * (x0.dim() - 1)))
            out.append(vlb_terms(denoiser, schedule, x, t, noise, levels, variance).view(len(chunk), n))
        return torch.cat(out) if out else x0.new_zeros(0, n)

    prior = prior_kl(schedule, x0)
    result = {}
    if t_samples is None:
        terms = run([torch.full((n,), s, dtype=torch.long, device=x0.device) for s in range(T)])
        decoder, diffusion = terms[0], terms[1:].sum(0)
        result["terms_bpd"] = nats_to_bpd(terms.mean(1), dims)
    else:
        k = int(t_samples)
        if k < 1:
            raise ValueError(f"t_samples must be >= 1, got {t_samples}")
        if T < 2:
            raise ValueError("Monte Carlo estimation needs T >= 2")
        decoder = run([torch.zeros(n, dtype=torch.long, device=x0.device)])[0]
        t_draws = torch.randint(1, T, (k, n), generator=generator, device=gen_device).to(x0.device)
        diffusion = run(list(t_draws)).sum(0) * ((T - 1) / k)
    total = prior + decoder + diffusion
    result.update(bpd=nats_to_bpd(total, dims), prior_bpd=nats_to_bpd(prior, dims),
                  decoder_bpd=nats_to_bpd(decoder, dims), diffusion_bpd=nats_to_bpd(diffusion, dims))
    return result
