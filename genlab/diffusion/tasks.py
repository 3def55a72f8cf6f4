"""Tasks as denoiser wrappers: inpainting by replacement (no new sampler; every sampler gets it).

:class:`Inpaint` replaces the model's clean-image guess x0_hat by the known image wherever the mask says
"known", and recomputes eps_hat from it, so each sampler step moves the known region exactly as the forward
process would from the known pixels (the replacement method: Song et al. 2021, "Score-based generative
modeling through SDEs", appendix I.2; Lugmayr et al. 2022, RePaint, eq. 8, without resampling), while the unknown
region is denoised by the model, which sees the known region through x_t. The sampler's last step returns x0_hat,
so the known pixels come out exactly.
"""
from __future__ import annotations

from typing import Callable

import torch

from .process import eps_from_x0
from .schedules import Schedule


class Inpaint:
    def __init__(self, denoiser: Callable, schedule: Schedule, known: torch.Tensor, mask: torch.Tensor):
        """known: images in [-1, 1] (N, C, H, W); mask: bool (N, C, H, W), True where the pixel is known."""
        if known.shape != mask.shape:
            raise ValueError(f"known {tuple(known.shape)} and mask {tuple(mask.shape)} must have the same shape")
        self.denoiser, self.schedule = denoiser, schedule
        self.known, self.mask = known, mask.bool()
        self.evals_per_call = getattr(denoiser, "evals_per_call", 1)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0, eps = self.denoiser(x_t, t)
        t = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
        ab = self.schedule.alpha_bar_at(t.cpu()).to(x_t.dtype).to(x_t.device)
        x0 = torch.where(self.mask.to(x_t.device), self.known.to(x_t.device, x_t.dtype), x0)
        return x0, eps_from_x0(x_t, x0, ab)


@torch.no_grad()
def repaint(denoiser, x_T: torch.Tensor, schedule: Schedule, steps: int, *, resample: int, generator=None,
            callback=None, spacing: str = "leading", variance: str = "small") -> torch.Tensor:
    """Ancestral (DDPM) sampling with RePaint's resampling (Lugmayr et al. 2022, algorithm 1, jump length 1):
    every step t -> s is taken ``resample`` times; between repeats, x_s is diffused back to t with
    q(x_t | x_s) = N(sqrt(alpha_bar_t / alpha_bar_s) x_s, (1 - alpha_bar_t / alpha_bar_s) I), which lets the
    generated region harmonize with the known one. Use with an :class:`Inpaint` denoiser; ``resample = 1`` is
    plain ddpm sampling. Network evaluations: ``resample`` per step (1 at the last step)."""
    from .samplers import _pairs, ddpm_step, randn

    x = x_T
    for i, t, s, ab_t, ab_s in _pairs(schedule, steps, spacing):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        for r in range(resample if s >= 0 else 1):
            x0, _ = denoiser(x, tt)
            noise = randn(x.shape, generator, x.device, x.dtype) if s >= 0 else None
            x_s = ddpm_step(x, x0, ab_t, ab_s, noise, variance)
            if r < resample - 1 and s >= 0:
                a = ab_t / ab_s
                x = a ** 0.5 * x_s + (1 - a) ** 0.5 * randn(x.shape, generator, x.device, x.dtype)
        x = x_s
        if callback is not None:
            callback({"i": i, "t": t, "x_t": x, "x0_hat": x0})
    return x
