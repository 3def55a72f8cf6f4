"""The forward process and the conversions between what a network may predict.

A network sees x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (DDPM eq. 4) and predicts one of
``eps`` (DDPM eq. 11), ``x0`` (the clean image) or ``v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0``
(Salimans & Ho 2022, "Progressive distillation", sec. 4 and appendix D). Given x_t, any one determines the others.
"""
from __future__ import annotations

import torch

PREDICTIONS = ("eps", "x0", "v")


def _bcast(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample coefficients of shape (N,) to (N, 1, 1, ...) for broadcasting against x."""
    return a.reshape(a.shape[0], *([1] * (x.dim() - 1))).to(x.dtype)


def q_sample(x0: torch.Tensor, alpha_bar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Sample q(x_t | x_0) given its noise (DDPM eq. 4); alpha_bar holds alpha_bar_t per sample."""
    a = _bcast(alpha_bar, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def v_target(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (Salimans & Ho 2022, eq. in sec. 4)."""
    a = _bcast(alpha_bar, x0)
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def target(prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The regression target of a network trained to predict ``prediction``."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return v_target(x0, eps, alpha_bar)
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")


def x0_from_eps(x_t, eps, alpha_bar):
    """x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) (DDPM eq. 4 solved for x_0; DDIM eq. 9)."""
    a = _bcast(alpha_bar, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def eps_from_x0(x_t, x0, alpha_bar):
    """eps = (x_t - sqrt(alpha_bar) x_0) / sqrt(1 - alpha_bar)."""
    a = _bcast(alpha_bar, x_t)
    return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def x0_from_v(x_t, v, alpha_bar):
    """x_0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v (Salimans & Ho 2022, appendix D)."""
    a = _bcast(alpha_bar, x_t)
    return a.sqrt() * x_t - (1 - a).sqrt() * v


def eps_from_v(x_t, v, alpha_bar):
    """eps = sqrt(1 - alpha_bar) x_t + sqrt(alpha_bar) v (Salimans & Ho 2022, appendix D)."""
    a = _bcast(alpha_bar, x_t)
    return (1 - a).sqrt() * x_t + a.sqrt() * v


def to_x0_eps(prediction: str, output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor):
    """Convert a network output in the given parameterization to the pair (x0_hat, eps_hat)."""
    if prediction == "eps":
        return x0_from_eps(x_t, output, alpha_bar), output
    if prediction == "x0":
        return output, eps_from_x0(x_t, output, alpha_bar)
    if prediction == "v":
        return x0_from_v(x_t, output, alpha_bar), eps_from_v(x_t, output, alpha_bar)
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
