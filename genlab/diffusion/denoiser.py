"""Denoisers: plain callables ``denoiser(x_t, t) -> (x0_hat, eps_hat)`` that samplers consume.

A network predicts eps, x0 or v; :class:`Denoiser` turns it into the pair every sampler needs, holding the
conditioning (labels) so samplers never see it. Guidance and inpainting wrap a denoiser and return a denoiser
(as in k-diffusion's ``external.py``). :class:`CountingDenoiser` counts network evaluations the same way for
every sampler.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .process import eps_from_x0, to_x0_eps
from .schedules import Schedule

DenoiserFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Denoiser:
    """Wrap ``net(x_t, t, y)`` predicting ``prediction`` into ``(x0_hat, eps_hat)``.

    With ``clip=True``, x0_hat is clipped to [-1, 1] and eps_hat recomputed from the clipped x0_hat, so the
    pair stays consistent with x_t (``diffusers``' DDIM calls this ``use_clipped_model_output``).
    """

    def __init__(self, net, schedule: Schedule, prediction: str, y: Optional[torch.Tensor] = None,
                 clip: bool = True):
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.y = y
        self.clip = clip

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t: integer timesteps, or fractional ones (samplers on continuous noise levels such as Heun on
        Karras sigmas); the network's sinusoidal embedding takes either."""
        t = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
        out = self.net(x_t, t, self.y) if self.y is not None else self.net(x_t, t)
        out = out.to(x_t.dtype)  # e.g. bf16 network outputs under autocast
        ab = self.schedule.alpha_bar_at(t.cpu()).to(x_t.dtype).to(x_t.device)
        x0, eps = to_x0_eps(self.prediction, out, x_t, ab)
        if self.clip:
            x0 = x0.clamp(-1, 1)
            eps = eps_from_x0(x_t, x0, ab)
        return x0, eps


class CountingDenoiser:
    """Counts network evaluations (calls on a batch; each is one evaluation per sample)."""

    def __init__(self, denoiser: DenoiserFn):
        self.denoiser = denoiser
        self.nfe = 0

    def __call__(self, x_t, t):
        self.nfe += getattr(self.denoiser, "evals_per_call", 1)   # guidance may run the network twice
        return self.denoiser(x_t, t)

    def __getattr__(self, name):  # expose the wrapped denoiser's schedule etc.
        return getattr(self.denoiser, name)
