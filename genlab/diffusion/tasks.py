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
