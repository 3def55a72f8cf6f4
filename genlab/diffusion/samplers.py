"""Samplers of the reverse process: plain functions with one signature,

    sample(denoiser, x_T, schedule, steps, *, generator=None, callback=None, **options) -> x_0

``denoiser(x_t, t) -> (x0_hat, eps_hat)`` (see :mod:`genlab.diffusion.denoiser`). ``generator`` is a
``torch.Generator`` or a :class:`PerSampleNoise` (one generator per sample, so that any single sample can be
reproduced alone whatever the batch it was drawn in). ``callback(info)`` is called after every step with a
dict holding ``i``, ``t``, ``x_t`` (the state after the step) and ``x0_hat``.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from .schedules import Schedule, timesteps


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


def randn(shape, generator: Noise, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise from a torch.Generator, or from any object with a ``randn(shape, device, dtype)``
    method such as :class:`PerSampleNoise`."""
    if hasattr(generator, "randn"):
        return generator.randn(shape, device, dtype)
    if generator is not None and generator.device != torch.device(device):
        return torch.randn(shape, generator=generator, dtype=dtype).to(device)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def _pairs(schedule: Schedule, steps: int, spacing: str, device):
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
    for i, t, s, ab_t, ab_s in _pairs(schedule, steps, spacing, x.device):
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
    for i, t, s, ab_t, ab_s in _pairs(schedule, steps, spacing, x.device):
        x0, eps = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        noise = randn(x.shape, generator, x.device, x.dtype) if eta > 0 else None
        x = ddim_step(x0, eps, ab_t, ab_s, eta, noise)
        if callback is not None:
            callback({"i": i, "t": t, "x_t": x, "x0_hat": x0})
    return x


SAMPLERS = {"ddpm": ddpm, "ddim": ddim}


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
