"""A multi-scale normalizing flow of affine couplings (Dinh et al. 2017, "Density Estimation using Real NVP";
Kingma & Dhariwal 2018, "Glow"): an invertible map y -> z with a tractable log-determinant, so that
log p(y) = log N(z; 0, I) + log |det dz/dy| exactly (RealNVP eq. 3).

Per scale: a squeeze (each 2x2 block of pixels becomes 4 channels, RealNVP sec. 3.6), then ``steps`` steps of
flow, each an actnorm (Glow sec. 3.1; initialized to the identity here, not from data, so that a run's first step
does not depend on its first batch), an invertible 1x1 convolution (Glow sec. 3.2; log-determinant
H W log |det W|) and an affine coupling (RealNVP eq. 7, with Glow's sigmoid scale s = sigmoid(h + 2): the second
half of the channels is shifted and scaled by a network of the first half, log-determinant sum log s); after
every scale but the last, half of the channels leave as latents (RealNVP sec. 3.6, "factoring out"), each with a
N(0, I) prior. The squeezes stop where the side becomes odd (28 -> 14 -> 7).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 4C, H/2, W/2): each 2x2 block of a channel becomes 4 channels."""
    n, c, h, w = x.shape
    return x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`squeeze`."""
    n, c, h, w = x.shape
    return x.view(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // 4, 2 * h, 2 * w)


def standard_normal_logp(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) in nats per row."""
    return -0.5 * (z.pow(2) + LOG_2PI).flatten(1).sum(1)


class ActNorm(nn.Module):
    """y = (x + loc) * exp(log_scale), per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        return (x + self.loc) * self.log_scale.exp(), self.log_scale.sum() * x.shape[2] * x.shape[3]

    def inverse(self, y):
        return y * torch.exp(-self.log_scale) - self.loc


class InvConv1x1(nn.Module):
    """y = W x at every pixel with an invertible C x C matrix W (a random rotation at initialization)."""

    def __init__(self, channels: int):
        super().__init__()
        w, _ = torch.linalg.qr(torch.randn(channels, channels))
        self.weight = nn.Parameter(w)

    def forward(self, x):
        logdet = torch.linalg.slogdet(self.weight.double())[1].to(x.dtype) * x.shape[2] * x.shape[3]
        return F.conv2d(x, self.weight[:, :, None, None]), logdet

    def inverse(self, y):
        return F.conv2d(y, torch.linalg.inv(self.weight.double()).to(y.dtype)[:, :, None, None])


class AffineCoupling(nn.Module):
    """The second half x_b -> (x_b + t(x_a)) * s(x_a) with s = sigmoid(h(x_a) + 2); the last layer of the
    network starts at zero, so the coupling starts near the identity (scale sigmoid(2) = 0.88)."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.ca = channels // 2
        cb = channels - self.ca
        self.net = nn.Sequential(nn.Conv2d(self.ca, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 1), nn.ReLU(), nn.Conv2d(width, 2 * cb, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _shift_scale(self, xa):
        shift, raw = self.net(xa).chunk(2, dim=1)
        return shift, torch.sigmoid(raw + 2.0)

    def forward(self, x):
        xa, xb = x[:, :self.ca], x[:, self.ca:]
        shift, s = self._shift_scale(xa)
        return torch.cat([xa, (xb + shift) * s], 1), torch.log(s).flatten(1).sum(1)

    def inverse(self, y):
        ya, yb = y[:, :self.ca], y[:, self.ca:]
        shift, s = self._shift_scale(ya)
        return torch.cat([ya, yb / s - shift], 1)


class FlowStep(nn.Module):
    """actnorm, invertible 1x1 convolution, affine coupling (Glow Fig. 2a)."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.layers = nn.ModuleList([ActNorm(channels), InvConv1x1(channels), AffineCoupling(channels, width)])

    def forward(self, x):
        total = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for layer in self.layers:
            x, ld = layer(x)
            total = total + ld
        return x, total

    def inverse(self, y):
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y


def usable_scales(image_size: int, scales: int) -> int:
    """How many of ``scales`` squeezes an image side allows (each needs an even side)."""
    s, k = image_size, 0
    while k < scales and s % 2 == 0:
        s //= 2
        k += 1
    return k


class MultiScaleFlow(nn.Module):
    """y (N, C, S, S) -> a list of latents (one per scale) and log |det dz/dy| (N,)."""

    def __init__(self, in_channels: int, image_size: int, *, scales: int = 2, steps: int = 4, width: int = 64):
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        self.scales = usable_scales(image_size, scales)
        if self.scales == 0:
            raise ValueError(f"a multi-scale flow needs an even image side to squeeze, got {image_size}")
        c = in_channels
        self.levels = nn.ModuleList()
        for k in range(self.scales):
            c *= 4
            self.levels.append(nn.ModuleList([FlowStep(c, width) for _ in range(steps)]))
            if k < self.scales - 1:
                c //= 2                         # half of the channels leave as latents

    def forward(self, y):
        zs, total = [], torch.zeros(y.shape[0], device=y.device, dtype=y.dtype)
        h = y
        for k, steps in enumerate(self.levels):
            h = squeeze(h)
            for step in steps:
                h, ld = step(h)
                total = total + ld
            if k < self.scales - 1:
                half = h.shape[1] // 2
                zs.append(h[:, half:])
                h = h[:, :half]
        zs.append(h)
        return zs, total

    def inverse(self, zs: list):
        h = zs[-1]
        for k in reversed(range(self.scales)):
            if k < self.scales - 1:
                h = torch.cat([h, zs[k]], 1)
            for step in reversed(self.levels[k]):
                h = step.inverse(h)
            h = unsqueeze(h)
        return h

    def latent_shapes(self) -> list[tuple]:
        """The shape (C, H, W) of each latent, in the order of :meth:`forward`."""
        c, s, out = self.in_channels, self.image_size, []
        for k in range(self.scales):
            c, s = c * 4, s // 2
            if k < self.scales - 1:
                out.append((c // 2, s, s))
                c //= 2
        out.append((c, s, s))
        return out

    def log_prob(self, y):
        """log p(y) in nats per image: the latents' N(0, I) densities plus the log-determinant."""
        zs, logdet = self(y)
        return sum(standard_normal_logp(z) for z in zs) + logdet
