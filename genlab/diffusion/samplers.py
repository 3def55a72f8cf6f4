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
    if isinstance(generator, PerSampleNoise):
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


@torch.no_grad()
def ddpm(denoiser, x_T: torch.Tensor, schedule: Schedule, steps: Optional[int] = None, *, generator: Noise = None,
         callback: Optional[Callable] = None, spacing: str = "leading", variance: str = "small") -> torch.Tensor:
    """Ancestral sampling of DDPM (Ho et al. 2020, algorithm 2), on any subsequence of timesteps.

    From t to the previous visited timestep s, with alpha_{t|s} = alpha_bar_t / alpha_bar_s and
    beta_{t|s} = 1 - alpha_{t|s}, the posterior q(x_s | x_t, x_0) has (DDPM eq. 6-7)
        mean = sqrt(alpha_bar_s) beta_{t|s} / (1 - alpha_bar_t) x0 + sqrt(alpha_{t|s}) (1 - alpha_bar_s) / (1 - alpha_bar_t) x_t
        var  = (1 - alpha_bar_s) / (1 - alpha_bar_t) beta_{t|s}   ("small", beta tilde)  or  beta_{t|s}  ("large").
    The last step returns the mean (no noise is added when s is the clean image).
    """
    steps = steps or schedule.T
    x = x_T
    for i, t, s, ab_t, ab_s in _pairs(schedule, steps, spacing, x.device):
        x0, _ = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        alpha_ts = ab_t / ab_s
        beta_ts = 1.0 - alpha_ts
        mean = ((ab_s ** 0.5) * beta_ts / (1 - ab_t)) * x0 + ((alpha_ts ** 0.5) * (1 - ab_s) / (1 - ab_t)) * x
        if s >= 0:
            var = max((1 - ab_s) / (1 - ab_t) * beta_ts, 1e-20) if variance == "small" else beta_ts
            x = mean + var ** 0.5 * randn(x.shape, generator, x.device, x.dtype)
        else:
            x = mean
        if callback is not None:
            callback({"i": i, "t": t, "x_t": x, "x0_hat": x0})
    return x


@torch.no_grad()
def ddim(denoiser, x_T: torch.Tensor, schedule: Schedule, steps: int = 50, *, generator: Noise = None,
         callback: Optional[Callable] = None, spacing: str = "leading", eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021), eq. 12 with the sigma of eq. 16:
        x_s = sqrt(alpha_bar_s) x0 + sqrt(1 - alpha_bar_s - sigma^2) eps + sigma z,
        sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s).
    eta = 0 is deterministic; eta = 1 has DDPM's posterior variance.
    """
    x = x_T
    for i, t, s, ab_t, ab_s in _pairs(schedule, steps, spacing, x.device):
        x0, eps = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        sigma = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)) ** 0.5
        x = (ab_s ** 0.5) * x0 + max(1 - ab_s - sigma ** 2, 0.0) ** 0.5 * eps
        if eta > 0:
            x = x + sigma * randn(x.shape, generator, x.device, x.dtype)
        if callback is not None:
            callback({"i": i, "t": t, "x_t": x, "x0_hat": x0})
    return x


SAMPLERS = {"ddpm": ddpm, "ddim": ddim}


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
