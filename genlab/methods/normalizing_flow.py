"""Normalizing flows as a method: a RealNVP / Glow-style multi-scale flow of affine couplings
(:mod:`genlab.nn.realnvp`) on dequantized images, with bits/dim on the dataset's levels.

Dequantization (Theis et al. 2016, "A note on the evaluation of generative models", sec. 3.1): an image of
integer levels k in 0..L-1 becomes v = (k + u) / L in [0, 1)^D with u in [0, 1)^D, and for any density p on the
unit cube, log P(k) >= E_u[log p(v)] - D log L. ``nflow.dequantization=uniform`` draws u ~ U[0, 1)^D (RealNVP,
Glow); ``variational`` draws it from a learned q(u | k) (Ho et al. 2019, Flow++, sec. 3.1, eq. 12:
log P(k) >= E_q[log p(v) - log q(u | k)] - D log L), here a logistic-normal u = sigmoid(mu(k) + sigma(k) eps) whose
mean and scale come from a small convolutional network of the image. The flow sees y = logit(alpha + (1 - 2
alpha) v) (RealNVP sec. 4.1, alpha = 0.05), whose Jacobian enters the density. The density of v is exact;
as a likelihood of the discrete image it is the dequantization bound above (what RealNVP and Glow report), so
``likelihood = "bound"``; every image's value is a one-draw (or ``draws``-draw average) estimate of it.

Samples: z ~ N(0, T^2 I) (temperature T, Glow sec. 5: T < 1 trades diversity for quality), the inverse flow,
the inverse logit, and v's level floor(L v). One network evaluation (the inverse flow) per sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import choice, num
from ..diffusion import PerSampleNoise
from ..nn.realnvp import MultiScaleFlow, standard_normal_logp
from .base import Method, register, unwrap
from .categorical import LN2, from_levels, square_shape, to_levels

DEQUANTIZATIONS = ("uniform", "variational")


@dataclass
class NFlowConfig:
    """The ``nflow`` config section (method ``normalizing_flow``)."""
    scales: int = num(2, 1, 16)                # squeezes (stopping where the side becomes odd)
    steps: int = num(4, 1, 256)                # flow steps per scale
    width: int = num(64, 1, 4096)              # channels of the coupling networks
    dequantization: str = choice("uniform", DEQUANTIZATIONS, help="u ~ U[0, 1) or a learned q(u | x) (Flow++)")
    alpha: float = num(0.05, 0.0, 0.5, lo_open=True, hi_open=True)   # logit transform margin (RealNVP sec. 4.1)


@dataclass
class NFlowOptions:
    temperature: float = num(1.0, 0.0, 100.0, lo_open=True, help="prior temperature T: z ~ N(0, T^2 I)")


# ------------------------------------------------------------------------------------------------ pure functions

def logit_transform(v: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """y = logit(alpha + (1 - 2 alpha) v) and log |dy/dv| per row (RealNVP sec. 4.1)."""
    s = alpha + (1 - 2 * alpha) * v
    y = torch.log(s) - torch.log1p(-s)
    logdet = (math.log(1 - 2 * alpha) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
    return y, logdet


def inverse_logit_transform(y: torch.Tensor, alpha: float) -> torch.Tensor:
    """v from y, the inverse of :func:`logit_transform`."""
    return (torch.sigmoid(y) - alpha) / (1 - 2 * alpha)


def dequantized_bound_nats(log_p_v: torch.Tensor, log_q_u: torch.Tensor, dims: int, levels: int) -> torch.Tensor:
    """log P(k) >= log p(v) - log q(u | k) - D log L per image (uniform u: log q = 0)."""
    return log_p_v - log_q_u - dims * math.log(levels)


class Dequantizer(nn.Module):
    """q(u | x): u = sigmoid(mu + exp(log_sigma) eps), mu and log_sigma from a small convolutional network of the
    image in model space; returns u and log q(u | x) per row (change of variables from N(eps; 0, I))."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, 2 * channels, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_sigma = self.net(x).chunk(2, dim=1)
        log_sigma = log_sigma.clamp(-7.0, 3.0)
        h = mu + log_sigma.exp() * eps
        u = torch.sigmoid(h)
        # log q(u) = log N(eps) - log sigma - log sigmoid'(h), sigmoid'(h) = sigmoid(h) sigmoid(-h)
        log_q = standard_normal_logp(eps) - (log_sigma + F.logsigmoid(h) + F.logsigmoid(-h)).flatten(1).sum(1)
        return u.clamp(0.0, 1.0 - 1e-6), log_q


class FlowModel(nn.Module):
    """The flow and, with variational dequantization, its q(u | x)."""

    def __init__(self, in_channels: int, image_size: int, levels: int, cfg: NFlowConfig):
        super().__init__()
        self.in_channels, self.image_size, self.levels, self.num_classes = in_channels, image_size, levels, 0
        self.alpha = cfg.alpha
        self.flow = MultiScaleFlow(in_channels, image_size, scales=cfg.scales, steps=cfg.steps, width=cfg.width)
        self.dequantizer = Dequantizer(in_channels, cfg.width // 2 or 1) \
            if cfg.dequantization == "variational" else None

    def bound_nats(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The dequantization bound of log P(x) in nats per image; ``x`` in model space on the level grid,
        ``noise``: uniform u (uniform dequantization) or N(0, I) eps (variational), shaped like x."""
        k = to_levels(x, self.levels).to(x.dtype)
        if self.dequantizer is None:
            u, log_q = noise, torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        else:
            u, log_q = self.dequantizer(x, noise)
        y, logdet_logit = logit_transform((k + u) / self.levels, self.alpha)
        log_p_v = self.flow.log_prob(y) + logdet_logit
        return dequantized_bound_nats(log_p_v, log_q, x[0].numel(), self.levels)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.bound_nats(x, noise)


@register
class NormalizingFlowMethod(Method):
    name = "normalizing_flow"
    family = "normalizing flow"
    label = "normalizing flow"
    section = "nflow"
    Section = NFlowConfig
    Options = NFlowOptions
    likelihood = "bound"
    likelihood_draws = 1
    conditions = ()

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        from ..config import ConfigError

        if cfg.model.class_cond or cfg.model.text_cond or cfg.model.image_cond != "none":
            raise ConfigError("method=normalizing_flow is unconditional here: set model.class_cond=false (and no "
                              "text or image condition)")

    def build_model(self, shape: tuple, num_classes: int = 0, levels: int = 256, **_) -> FlowModel:
        c, h = square_shape(shape)
        return FlowModel(c, h, levels, self.cfg.nflow)

    def _noise(self, net, shape_rows, rng_or_gen, device):
        variational = net.dequantizer is not None
        if isinstance(rng_or_gen, torch.Generator):
            draw = torch.randn if variational else torch.rand
            return draw(shape_rows, generator=rng_or_gen).to(device)
        return (rng_or_gen.randn if variational else rng_or_gen.rand)(*shape_rows[1:])

    def loss(self, model, batch: dict, rng) -> torch.Tensor:
        """Minus the dequantization bound in bits/dim, mean over the batch."""
        x = batch["x"]
        noise = self._noise(unwrap(model), tuple(x.shape), rng, x.device)
        return (-model(x, noise) / (x[0].numel() * LN2)).mean()

    @torch.no_grad()
    def log_likelihood(self, model, x: torch.Tensor, y: Optional[torch.Tensor] = None, *,
                       draws: Optional[int] = None, seed: int = 0, **_) -> torch.Tensor:
        """Bits/dim per image (N,) of the dequantization bound, averaged over ``draws`` draws of u (default 1)."""
        net = unwrap(model)
        g = torch.Generator().manual_seed(seed)
        total = torch.zeros(x.shape[0], device=x.device)
        k = draws or 1
        for _ in range(k):
            total += -net.bound_nats(x, self._noise(net, tuple(x.shape), g, x.device)).float()
        return total / k / (x[0].numel() * LN2)

    def sample_batch(self, model, seeds: range, opts, *, y=None, device=None, callback=None):
        """z ~ N(0, T^2 I) per sample through the inverse flow (one network evaluation)."""
        net = unwrap(model)
        dev = device or next(net.parameters()).device
        noise = PerSampleNoise(seeds)
        shapes = net.flow.latent_shapes()
        flat = noise.randn((len(seeds), sum(math.prod(s) for s in shapes)), dev) * opts.temperature
        zs, off = [], 0
        for s in shapes:
            zs.append(flat[:, off:off + math.prod(s)].view(len(seeds), *s))
            off += math.prod(s)
        v = inverse_logit_transform(net.flow.inverse(zs), net.alpha)
        k = torch.floor(v.float().clamp(0, 1 - 1e-6) * net.levels).long()
        x = from_levels(k, net.levels)
        if callback is not None:
            callback({"step": 0, "x": x, "known": torch.ones_like(x, dtype=torch.bool)})
        return x, 1

    def sampling_label(self, opts) -> str:
        return "flow" + (f" T={opts.temperature}" if opts.temperature != 1.0 else "")
