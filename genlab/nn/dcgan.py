"""DCGAN-style generator and discriminator (Radford et al. 2016, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks", sec. 3: strided convolutions instead of pooling, batch norm in
the generator, ReLU in the generator with a tanh output, LeakyReLU(0.2) in the discriminator, no fully connected
hidden layers except the projection of z).

Sizes: the generator starts from a ``start_size(image_size)`` square (halving the side while it stays even and
above 4: 8 -> 4, 28 -> 7, 32 -> 4, 64 -> 4) and doubles it with 4x4 transposed convolutions (stride 2), each
followed by a 3x3 convolution; channels halve at every doubling, from ``width * 2^levels`` (at most 8 * width)
down to ``width``. The discriminator mirrors it with 4x4 stride-2 convolutions. It has no normalization layers:
it is regularized by the R1 penalty or by spectral normalization (see :mod:`genlab.methods.gan`), which keeps
every image's score independent of the rest of its batch.

Class conditioning: the generator takes a learned embedding of the label beside z (Mirza & Osindero 2014); the
discriminator is a projection discriminator (Miyato & Koyama 2018, "cGANs with Projection Discriminator", eq. 3):
D(x, y) = psi(phi(x)) + <embed(y), phi(x)>.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn


def start_size(image_size: int) -> int:
    """The side the generator starts from: ``image_size`` halved while it stays even and above 4."""
    s = image_size
    while s % 2 == 0 and s > 4:
        s //= 2
    return s


def level_channels(image_size: int, width: int) -> list[int]:
    """Channels per resolution, from the start square up to the full image: width * 2^k, at most 8 * width."""
    levels = round(math.log2(image_size // start_size(image_size)))
    return [width * min(2 ** (levels - k), 8) for k in range(levels + 1)]


class Generator(nn.Module):
    """z (N, z_dim) [and labels y (N,)] -> images (N, C, S, S) in [-1, 1] (``tanh=False``: the last layer's raw
    outputs, e.g. a VAE decoder's distribution parameters)."""

    def __init__(self, z_dim: int, out_channels: int, image_size: int, width: int = 32, num_classes: int = 0,
                 norm: str = "batch", tanh: bool = True):
        super().__init__()
        self.tanh = tanh
        self.z_dim, self.num_classes, self.s0 = z_dim, num_classes, start_size(image_size)
        chans = level_channels(image_size, width)
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        in_dim = 2 * z_dim if num_classes else z_dim

        def bn(c):
            return nn.BatchNorm2d(c) if norm == "batch" else nn.Identity()

        self.project = nn.Linear(in_dim, chans[0] * self.s0 ** 2, bias=norm != "batch")
        self.norm0 = bn(chans[0])
        blocks = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            blocks.append(nn.Sequential(
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=norm != "batch"), bn(c_out), nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=norm != "batch"), bn(c_out), nn.ReLU()))
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(chans[-1], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.embed is not None:
            if y is None:
                raise ValueError("this generator is class-conditional: give labels y")
            z = torch.cat([z, self.embed(y)], dim=1)
        h = self.project(z).view(z.shape[0], -1, self.s0, self.s0)
        h = self.out(self.blocks(torch.relu(self.norm0(h))))
        return torch.tanh(h) if self.tanh else h


class Discriminator(nn.Module):
    """images (N, C, S, S) [and labels y (N,)] -> one real/fake logit per image (N,)."""

    def __init__(self, in_channels: int, image_size: int, width: int = 32, num_classes: int = 0,
                 spectral_norm: bool = False):
        super().__init__()
        self.num_classes, s0 = num_classes, start_size(image_size)
        chans = level_channels(image_size, width)[::-1]           # width at full size ... most at the start size
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers = [sn(nn.Conv2d(in_channels, chans[0], 3, padding=1)), nn.LeakyReLU(0.2)]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [sn(nn.Conv2d(c_in, c_out, 4, 2, 1)), nn.LeakyReLU(0.2),
                       sn(nn.Conv2d(c_out, c_out, 3, padding=1)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        feat = 8 * width
        self.phi = nn.Sequential(nn.Flatten(), sn(nn.Linear(chans[-1] * s0 * s0, feat)), nn.LeakyReLU(0.2))
        self.psi = sn(nn.Linear(feat, 1))
        self.embed = sn(nn.Embedding(num_classes, feat)) if num_classes else None

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.phi(self.features(x))
        out = self.psi(h).squeeze(1)
        if self.embed is not None:
            if y is None:
                raise ValueError("this discriminator is class-conditional: give labels y")
            out = out + (self.embed(y) * h).sum(1)
        return out


class GAN(nn.Module):
    """The pair, as one module so that checkpoints, EMA and resume treat it like any other network; calling it
    runs the generator."""

    def __init__(self, in_channels: int, image_size: int, *, z_dim: int = 64, width: int = 32, d_width: int = 32,
                 num_classes: int = 0, g_norm: str = "batch", spectral_norm: bool = False):
        super().__init__()
        self.in_channels, self.image_size, self.z_dim, self.num_classes = in_channels, image_size, z_dim, num_classes
        self.generator = Generator(z_dim, in_channels, image_size, width, num_classes, g_norm)
        self.discriminator = Discriminator(in_channels, image_size, d_width, num_classes, spectral_norm)

    def forward(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.generator(z, y)
