"""Samplers of the reverse process: plain functions with one signature,

    sample(denoiser, x_T, schedule, steps, *, generator=None, callback=None, **options) -> x_0

``denoiser(x_t, t) -> (x0_hat, eps_hat)`` (see :mod:`genlab.diffusion.denoiser`). ``generator`` is a
``torch.Generator`` or a :class:`PerSampleNoise` (one generator per sample, so that any single sample can be
reproduced alone whatever the batch it was drawn in). ``callback(info)`` is called after every step with a
dict holding ``i``, ``t``, ``x_t`` (the state after the step) and ``x0_hat``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch

from .schedules import Schedule, karras_sigmas, timesteps


class PerSampleNoise:
    """Gaussian noise drawn from one CPU generator per sample: sample i with seed s + i is the same whatever
    batch it is in (as in EDM's per-sample seeds)."""

    def __init__(self, seeds):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def randn(self, shape, device=None, dtype=torch.float32) -> torch.Tensor:
        assert shape[0] == len(self.generators), "one generator per sample"
        z = torch.stack([torch.randn(tuple(shape[1:]), generator=g, dtype=dtype) for g in self.generators])
        return z.to(device)


Noise = Union[torch.Generator, PerSampleNoise, None]
SPACINGS = ("leading", "trailing", "linspace")


def randn(shape, generator: Noise, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise from a torch.Generator, or from any object with a ``randn(shape, device, dtype)``
    method such as :class:`PerSampleNoise`."""
    if hasattr(generator, "randn"):
        return generator.randn(shape, device, dtype)
    if generator is not None and generator.device != torch.device(device):
        return torch.randn(shape, generator=generator, dtype=dtype).to(device)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def _pairs(schedule: Schedule, steps: int, spacing: str):
    """(t, alpha_bar_t, alpha_bar_prev) for each step; alpha_bar after the last step is 1 (the clean image)."""
    ts = timesteps(schedule.T, steps, spacing)
    ab = schedule.alphas_cumprod
    for i, t in enumerate(ts.tolist()):
        prev = ts[i + 1].item() if i + 1 < len(ts) else -1
        yield i, t, prev, ab[t].item(), (ab[prev].item() if prev >= 0 else 1.0)


def ddpm_step(x: torch.Tensor, x0: torch.Tensor, ab_t: float, ab_s: float, noise: Optional[torch.Tensor],
              variance: str = "small") -> torch.Tensor:
    """One ancestral step from timestep t to an earlier s (alpha_bar_s = 1 for the clean image), DDPM eq. 6-7
    generalized to skipped steps: with alpha_{t|s} = alpha_bar_t / alpha_bar_s and beta_{t|s} = 1 - alpha_{t|s},
        mean = sqrt(alpha_bar_s) beta_{t|s} / (1 - alpha_bar_t) x0 + sqrt(alpha_{t|s}) (1 - alpha_bar_s) / (1 - alpha_bar_t) x_t
        var  = (1 - alpha_bar_s) / (1 - alpha_bar_t) beta_{t|s}  ("small", beta tilde)  or  beta_{t|s}  ("large").
    ``noise=None`` returns the mean (used for the last step)."""
    alpha_ts = ab_t / ab_s
    beta_ts = 1.0 - alpha_ts
    mean = ((ab_s ** 0.5) * beta_ts / (1 - ab_t)) * x0 + ((alpha_ts ** 0.5) * (1 - ab_s) / (1 - ab_t)) * x
    if noise is None:
        return mean
    var = max((1 - ab_s) / (1 - ab_t) * beta_ts, 1e-20) if variance == "small" else beta_ts
    return mean + var ** 0.5 * noise


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, ab_t: float, ab_s: float, eta: float = 0.0,
              noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One DDIM step (Song et al. 2021, eq. 12 with sigma from eq. 16):
        x_s = sqrt(alpha_bar_s) x0 + sqrt(1 - alpha_bar_s - sigma^2) eps + sigma z,
        sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s)."""
    sigma = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)) ** 0.5
    x = (ab_s ** 0.5) * x0 + max(1 - ab_s - sigma ** 2, 0.0) ** 0.5 * eps
    if eta > 0:
        x = x + sigma * noise
    return x


@torch.no_grad()
def ddpm(denoiser, x_T: torch.Tensor, schedule: Schedule, steps: Optional[int] = None, *, generator: Noise = None,
         callback: Optional[Callable] = None, spacing: str = "leading", variance: str = "small") -> torch.Tensor:
    """Ancestral sampling of DDPM (Ho et al. 2020, algorithm 2) on any subsequence of timesteps (``steps``;
    all T by default); see :func:`ddpm_step`. The last step returns the posterior mean (no noise)."""
    steps = steps or schedule.T
    x = x_T
    for i, t, s, ab_t, ab_s in _pairs(schedule, steps, spacing):
        x0, _ = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        noise = randn(x.shape, generator, x.device, x.dtype) if s >= 0 else None
        x = ddpm_step(x, x0, ab_t, ab_s, noise, variance)
        if callback is not None:
            callback({"i": i, "t": t, "x_t": x, "x0_hat": x0})
    return x


@torch.no_grad()
def ddim(denoiser, x_T: torch.Tensor, schedule: Schedule, steps: int = 50, *, generator: Noise = None,
         callback: Optional[Callable] = None, spacing: str = "leading", eta: float = 0.0) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021); see :func:`ddim_step`. eta = 0 is deterministic; eta = 1 has DDPM's
    posterior variance."""
    x = x_T
    for i, t, s, ab_t, ab_s in _pairs(schedule, steps, spacing):
        x0, eps = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        noise = randn(x.shape, generator, x.device, x.dtype) if eta > 0 else None
        x = ddim_step(x0, eps, ab_t, ab_s, eta, noise)
        if callback is not None:
            callback({"i": i, "t": t, "x_t": x, "x0_hat": x0})
    return x


@torch.no_grad()
def dpmpp_2m(denoiser, x_T: torch.Tensor, schedule: Schedule, steps: int = 20, *, generator: Noise = None,
             callback: Optional[Callable] = None, spacing: str = "trailing") -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", algorithm 2, data prediction, multistep, midpoint form)
    on the visited timesteps, then a last first-order step to the clean image. With alpha_t = sqrt(alpha_bar_t),
    sigma_t = sqrt(1 - alpha_bar_t), lambda_t = log(alpha_t / sigma_t), h = lambda_s - lambda_t:
        first order (= DDIM):  x_s = sigma_s / sigma_t x_t - alpha_s (e^{-h} - 1) D,   D = x0_hat
        second order:          D = (1 + 1 / (2 r)) x0_hat_t - 1 / (2 r) x0_hat_prev,  r = h_prev / h
    The first and last steps are first order (as in ``diffusers`` with ``final_sigmas_type="zero"``).
    One network evaluation per step. Deterministic; ``generator`` is unused."""
    ts = timesteps(schedule.T, steps, spacing)
    ab = schedule.alphas_cumprod.double()
    x = x_T
    prev_x0, h_prev = None, None
    for i, t in enumerate(ts.tolist()):
        x0, _ = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        if i + 1 == len(ts):  # to sigma = 0: lambda = inf, the update returns the data prediction
            x_next = x0
        else:
            a_t, a_s = ab[t].item(), ab[ts[i + 1]].item()
            lam_t, lam_s = 0.5 * math.log(a_t / (1 - a_t)), 0.5 * math.log(a_s / (1 - a_s))
            h = lam_s - lam_t
            d = x0
            if prev_x0 is not None:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
            x_next = math.sqrt((1 - a_s) / (1 - a_t)) * x - math.sqrt(a_s) * math.expm1(-h) * d
            h_prev = h
        prev_x0 = x0
        x = x_next
        if callback is not None:
            callback({"i": i, "t": t, "x_t": x, "x0_hat": x0})
    return x


EDM_SIGMA_MAX = 80.0


def _karras_levels(schedule: Schedule, steps: int, rho: float = 7.0, sigmas=None,
                   sigma_max: Optional[float] = EDM_SIGMA_MAX) -> list[float]:
    """Karras levels from min(sigma_max, the schedule's largest sigma) down to its smallest, then 0 (or the given
    ``sigmas``). EDM's sigma_max = 80 (Karras et al. 2022, table 1) matters for schedules that end far above it:
    the cosine schedule ends at sigma ~ 2e4, where steps are wasted on pure noise (sigma_max=None keeps it)."""
    if sigmas is not None:
        levels = torch.as_tensor(sigmas, dtype=torch.float64)
        if len(levels) != steps + 1 or levels[-1] != 0 or not (levels[:-1] > levels[1:]).all():
            raise ValueError(f"sigmas must be {steps} decreasing positive noise levels followed by 0")
        return levels.tolist()
    sig = schedule.sigmas.double()
    top = sig[-1].item() if sigma_max is None else min(sig[-1].item(), sigma_max)
    return torch.cat([karras_sigmas(sig[0].item(), top, steps, rho),
                      torch.zeros(1, dtype=torch.float64)]).tolist()


def _edm_denoise(denoiser, x_ve: torch.Tensor, sigma: float, schedule: Schedule):
    """D(x; sigma) of EDM from a VP denoiser: x_VE = x_VP / sqrt(alpha_bar) with alpha_bar = 1 / (1 + sigma^2),
    evaluated at the fractional timestep of sigma (Karras et al. 2022, table 1, "VP" column)."""
    t = schedule.sigma_to_t(torch.tensor(sigma)).float().to(x_ve.device)
    x0, _ = denoiser(x_ve / math.sqrt(1 + sigma ** 2), t.expand(x_ve.shape[0]))
    return x0


@torch.no_grad()
def euler(denoiser, x_T: torch.Tensor, schedule: Schedule, steps: int = 20, *, generator: Noise = None,
          callback: Optional[Callable] = None, rho: float = 7.0, sigmas=None,
          sigma_max: Optional[float] = EDM_SIGMA_MAX) -> torch.Tensor:
    """Euler's method on the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022,
    eq. 4 and algorithm 1 without the correction), on Karras sigmas (eq. 5) or the given ``sigmas`` (steps + 1
    levels ending in 0). One evaluation per step."""
    sigmas = _karras_levels(schedule, steps, rho, sigmas, sigma_max)
    x = x_T * math.sqrt(1 + sigmas[0] ** 2)
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = _edm_denoise(denoiser, x, s, schedule)
        x = x + (s_next - s) * (x - x0) / s
        if callback is not None:
            callback({"i": i, "t": s_next, "x_t": x / math.sqrt(1 + s_next ** 2), "x0_hat": x0})
    return x


@torch.no_grad()
def heun(denoiser, x_T: torch.Tensor, schedule: Schedule, steps: int = 10, *, generator: Noise = None,
         callback: Optional[Callable] = None, rho: float = 7.0, sigmas=None,
          sigma_max: Optional[float] = EDM_SIGMA_MAX) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, algorithm 1, deterministic) on Karras sigmas: an Euler
    step, then the average of the slopes at both ends, except on the last step to sigma = 0 (plain Euler).
    ``steps`` noise levels cost 2 * steps - 1 network evaluations."""
    sigmas = _karras_levels(schedule, steps, rho, sigmas, sigma_max)
    x = x_T * math.sqrt(1 + sigmas[0] ** 2)
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = _edm_denoise(denoiser, x, s, schedule)
        d = (x - x0) / s
        x_pred = x + (s_next - s) * d
        if s_next > 0:
            x0_next = _edm_denoise(denoiser, x_pred, s_next, schedule)
            x_pred = x + (s_next - s) * (d + (x_pred - x0_next) / s_next) / 2
        x = x_pred
        if callback is not None:
            callback({"i": i, "t": s_next, "x_t": x / math.sqrt(1 + s_next ** 2), "x0_hat": x0})
    return x


def heun_steps_for(nfe: int) -> int:
    """Noise levels for Heun with at most ``nfe`` network evaluations (2 * steps - 1 <= nfe)."""
    return max(1, (nfe + 1) // 2)


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "dpmpp-2m": dpmpp_2m, "euler": euler, "heun": heun}


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sampler_options(name: str, *, spacing: str, eta: float, variance: str) -> dict:
    """The options each sampler takes, from the common sample settings."""
    return {"ddpm": {"spacing": spacing, "variance": variance}, "ddim": {"spacing": spacing, "eta": eta},
            "dpmpp-2m": {"spacing": spacing}}.get(name, {})


# ------------------------------------------------------------------------------------------ flow matching ODE

class FlowPath:
    """The time grid of a flow-matching path x_t = (1 - t) x0 + t eps (Lipman et al. 2023, OT path with
    sigma_min = 0; Liu et al. 2022, rectified flow): t = 1 is noise, t = 0 data. The flow samplers integrate
    dx/dt = v from t = 1 to t = 0 on :meth:`times`. There is no schedule to speak of: alpha_t = 1 - t and
    sigma_t = t."""

    t_start: float = 1.0
    t_end: float = 0.0

    def times(self, steps: int) -> list[float]:
        """steps + 1 uniformly spaced times from 1 down to 0 (the last exactly 0)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return [self.t_start + (self.t_end - self.t_start) * i / steps for i in range(steps + 1)]


def _flow_velocity(denoiser, x: torch.Tensor, t: float):
    """(v, x0_hat) at time t from a denoiser pair: x0_hat = x_t - t v and eps_hat = x_t + (1 - t) v, so
    v = eps_hat - x0_hat."""
    x0, eps = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype))
    return eps - x0, x0


def _flow_solve(step, denoiser, x_T: torch.Tensor, schedule: FlowPath, steps: int, callback) -> torch.Tensor:
    """The loop every flow sampler shares: ``step(denoiser, x, t, s, last) -> (x_s, x0_hat)`` from each time of
    the grid to the next, with the callback after each step (its ``t`` is the time of ``x_t``, after the step)."""
    ts = schedule.times(steps)
    x = x_T
    for i in range(steps):
        x, x0 = step(denoiser, x, ts[i], ts[i + 1], i + 1 == steps)
        if callback is not None:
            callback({"i": i, "t": ts[i + 1], "x_t": x, "x0_hat": x0})
    return x


def _euler_step(denoiser, x, t, s, last):
    v, x0 = _flow_velocity(denoiser, x, t)
    return x + (s - t) * v, x0


def _heun_step(denoiser, x, t, s, last):
    v, x0 = _flow_velocity(denoiser, x, t)
    x_next = x + (s - t) * v
    if not last:
        v_next, _ = _flow_velocity(denoiser, x_next, s)
        x_next = x + (s - t) * (v + v_next) / 2
    return x_next, x0


def _midpoint_step(denoiser, x, t, s, last):
    v, x0 = _flow_velocity(denoiser, x, t)
    v_mid, _ = _flow_velocity(denoiser, x + (s - t) / 2 * v, (t + s) / 2)
    return x + (s - t) * v_mid, x0


@torch.no_grad()
def flow_euler(denoiser, x_T: torch.Tensor, schedule: FlowPath, steps: int = 50, *, generator: Noise = None,
               callback: Optional[Callable] = None) -> torch.Tensor:
    """Euler's method on dx/dt = v(x, t) from t = 1 to 0: x_s = x_t + (s - t) v. One evaluation per step.
    On this path it equals DDIM (eta = 0) with alpha = 1 - t, sigma = t: x_s = (1 - s) x0_hat + s eps_hat.
    Deterministic; ``generator`` is unused."""
    return _flow_solve(_euler_step, denoiser, x_T, schedule, steps, callback)


@torch.no_grad()
def flow_heun(denoiser, x_T: torch.Tensor, schedule: FlowPath, steps: int = 25, *, generator: Noise = None,
              callback: Optional[Callable] = None) -> torch.Tensor:
    """Heun's second-order method (explicit trapezoid) on dx/dt = v from t = 1 to 0: an Euler step, then the
    average of the slopes at both ends; the last step (to t = 0) is plain Euler, as in EDM (Karras et al. 2022,
    algorithm 1), so ``steps`` cost 2 * steps - 1 evaluations. Deterministic; ``generator`` is unused."""
    return _flow_solve(_heun_step, denoiser, x_T, schedule, steps, callback)


@torch.no_grad()
def flow_midpoint(denoiser, x_T: torch.Tensor, schedule: FlowPath, steps: int = 25, *, generator: Noise = None,
                  callback: Optional[Callable] = None) -> torch.Tensor:
    """The explicit midpoint method (second order) on dx/dt = v from t = 1 to 0: a half Euler step, then the
    whole step with the slope at the midpoint, x_s = x_t + (s - t) v(x_t + (s - t) / 2 v, (t + s) / 2). Two
    evaluations per step. Deterministic; ``generator`` is unused."""
    return _flow_solve(_midpoint_step, denoiser, x_T, schedule, steps, callback)


# the flow-matching method's samplers (diffusion's are SAMPLERS above): name -> sampler
FLOW_SAMPLERS = {"euler": flow_euler, "heun": flow_heun, "midpoint": flow_midpoint}
