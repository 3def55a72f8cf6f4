"""Noise schedules of discrete-time diffusion, as small pure functions.

Notation follows DDPM (Ho et al. 2020): ``beta_t`` is the variance added at step t, ``alpha_t = 1 - beta_t`` and
``alpha_bar_t = prod_{s<=t} alpha_s`` (written ``alphas_cumprod`` in code), so that
``q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)`` (DDPM eq. 4). Timesteps are 0-indexed:
t = 0 is the first noising step, t = T - 1 the last, as in the reference implementations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

SCHEDULES = ("linear", "cosine")


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule (Ho et al. 2020, sec. 4): betas evenly spaced from beta_start to beta_end.

    The defaults are the paper's values for T = 1000. They are not rescaled for other T (as in ``diffusers``):
    with T much smaller than 1000, raise beta_end or the last step will not reach pure noise.
    """
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_alpha_bar(t: torch.Tensor | float, s: float = 0.008) -> torch.Tensor:
    """Improved DDPM eq. 17 (Nichol & Dhariwal 2021): alpha_bar(t) = f(t) / f(0), f(t) = cos((t + s)/(1 + s) * pi/2)^2,
    for continuous t in [0, 1]."""
    t = torch.as_tensor(t, dtype=torch.float64)
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return f / f0


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Betas of the cosine schedule: beta_t = 1 - alpha_bar((t+1)/T) / alpha_bar(t/T), clipped at max_beta
    (improved DDPM, below eq. 17) to avoid a singularity at t = T."""
    grid = torch.arange(T + 1, dtype=torch.float64) / T
    ab = cosine_alpha_bar(grid, s)
    return (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)


def make_betas(kind: str, T: int, **kw) -> torch.Tensor:
    """Betas by name: ``linear`` (DDPM) or ``cosine`` (improved DDPM)."""
    if kind == "linear":
        return linear_betas(T, **kw)
    if kind == "cosine":
        return cosine_betas(T, **kw)
    raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}")


@dataclass(frozen=True)
class Schedule:
    """A discrete schedule of T steps. Tensors are float32 on the CPU (computed in float64 first);
    ``.to(device)`` moves them.

    alphas_cumprod[t] is alpha_bar_t; snr[t] = alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021, VDM eq. 2-3);
    sigmas[t] = sqrt((1 - alpha_bar_t) / alpha_bar_t) is the noise level of the variance-exploding view
    x_t / sqrt(alpha_bar_t) = x_0 + sigma_t * eps (Karras et al. 2022, EDM sec. 2).
    """

    betas: torch.Tensor

    @classmethod
    def create(cls, kind: str = "cosine", T: int = 1000, **kw) -> "Schedule":
        return cls(make_betas(kind, T, **kw).to(torch.float32))

    @classmethod
    def from_config(cls, d) -> "Schedule":
        """The schedule of a ``diffusion`` config section (betas only matter for the linear schedule)."""
        kw = dict(beta_start=d.beta_start, beta_end=d.beta_end) if d.schedule == "linear" else {}
        return cls.create(d.schedule, d.timesteps, **kw)

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(self.betas.double().neg().add(1.0), 0).to(self.betas.dtype)

    @cached_property
    def snr(self) -> torch.Tensor:
        ab = self.alphas_cumprod.double()
        return (ab / (1 - ab)).to(self.betas.dtype)

    @cached_property
    def sigmas(self) -> torch.Tensor:
        ab = self.alphas_cumprod.double()
        return ((1 - ab) / ab).sqrt().to(self.betas.dtype)

    @cached_property
    def _log_sigmas(self) -> torch.Tensor:
        return self.sigmas.double().log()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep of a noise level: linear interpolation of log sigma between the neighbouring
        integer timesteps (as k-diffusion's ``DiscreteSchedule.sigma_to_t``), clamped to [0, T - 1]."""
        log_sigmas = self._log_sigmas
        ls = torch.as_tensor(sigma, dtype=torch.float64).clamp(min=1e-10).log()
        idx = torch.searchsorted(log_sigmas, ls.reshape(-1)).clamp(1, self.T - 1)
        lo, hi = log_sigmas[idx - 1], log_sigmas[idx]
        w = ((ls.reshape(-1) - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1 + w).reshape(ls.shape)

    def alpha_bar_at(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer or fractional timesteps; fractional ones interpolate log sigma linearly (the
        inverse of :meth:`sigma_to_t`), so alpha_bar = 1 / (1 + sigma^2) holds exactly there too."""
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            return self.alphas_cumprod.to(t.device)[t]
        log_sigmas = self._log_sigmas
        tc = t.detach().cpu().double().clamp(0, self.T - 1)  # float64 on the CPU (MPS has no float64)
        lo = tc.floor().long().clamp(max=self.T - 2)
        w = tc - lo
        log_sigma = (1 - w) * log_sigmas[lo] + w * log_sigmas[lo + 1]
        return 1 / (1 + torch.exp(2 * log_sigma))  # float64; callers cast to their dtype



def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> torch.Tensor:
    """EDM's noise levels (Karras et al. 2022, eq. 5): sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) -
    sigma_max^(1/rho)))^rho for i = 0..n-1, decreasing; samplers append sigma = 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def timesteps(T: int, steps: int, spacing: str = "leading") -> torch.Tensor:
    """Which of the T training timesteps a sampler of ``steps`` steps visits, in decreasing order.

    ``leading`` (DDIM's original choice, Song et al. 2021 sec. C.2): t = k * (T // steps), k = 0..steps-1.
    ``trailing`` (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed", table 2): starts
    at T - 1 so the first step sees pure noise. ``linspace``: round(linspace(0, T - 1, steps)).
    Matches ``diffusers``' ``timestep_spacing`` options.
    """
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and the number of training timesteps T={T}, got {steps}")
    if spacing == "leading":
        ratio = T // steps
        ts = torch.arange(steps, dtype=torch.int64) * ratio
    elif spacing == "trailing":
        # T - 1 - round(k T / steps), k = 0..steps-1; the float arange(T, 0, -T/steps) of the reference
        # implementations yields steps + 1 values ending at -1 for some step counts (e.g. 61 of 1000)
        return T - 1 - torch.round(torch.arange(steps, dtype=torch.float64) * T / steps).long()
    elif spacing == "linspace":
        ts = torch.round(torch.linspace(0, T - 1, steps, dtype=torch.float64)).long()
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose leading, trailing or linspace")
    return ts.flip(0)
