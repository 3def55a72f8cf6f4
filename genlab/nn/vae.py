"""A convolutional VAE: an encoder to the mean and log-variance of a diagonal Gaussian over z, and a decoder from z
to the parameters of a distribution over every sub-pixel's levels (Kingma & Welling 2014, "Auto-Encoding
Variational Bayes", appendix C.2, with convolutions). The encoder mirrors the DCGAN discriminator and the decoder
is the DCGAN generator without batch norm and without its tanh (:mod:`genlab.nn.dcgan`), so the three share
their shapes and sizes.

Decoder outputs: ``categorical``: logits (N, C, L, H, W) over the L levels; ``logistic``: a mean and a log-scale
per sub-pixel (N, 2C, H, W) of a discretized logistic (Salimans et al. 2017, PixelCNN++, eq. 2, one component).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .dcgan import Generator, level_channels, start_size


class Encoder(nn.Module):
    """images (N, C, S, S) -> (mean, log-variance) of q(z | x), each (N, z_dim)."""

    def __init__(self, in_channels: int, image_size: int, z_dim: int, width: int = 32):
        super().__init__()
        chans = level_channels(image_size, width)[::-1]
        s0 = start_size(image_size)
        layers = [nn.Conv2d(in_channels, chans[0], 3, padding=1), nn.SiLU()]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.SiLU()]
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(chans[-1] * s0 * s0, 2 * z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.head(self.features(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)


class ConvVAE(nn.Module):
    """Encoder and decoder. ``decoder``: ``categorical`` or ``logistic`` (see the module docstring); class labels
    (``num_classes`` > 0) condition the decoder only."""

    def __init__(self, in_channels: int, image_size: int, levels: int, *, z_dim: int = 32, width: int = 32,
                 decoder: str = "logistic", num_classes: int = 0):
        super().__init__()
        if decoder not in ("categorical", "logistic"):
            raise ValueError(f"decoder must be categorical or logistic, got {decoder!r}")
        self.in_channels, self.image_size, self.levels = in_channels, image_size, levels
        self.z_dim, self.decoder_kind, self.num_classes = z_dim, decoder, num_classes
        out = in_channels * levels if decoder == "categorical" else 2 * in_channels
        self.encoder = Encoder(in_channels, image_size, z_dim, width)
        self.decoder = Generator(z_dim, out, image_size, width, num_classes, norm="none", tanh=False)

    def decode(self, z: torch.Tensor, y: Optional[torch.Tensor] = None):
        """The decoder's distribution parameters: logits (N, C, L, H, W), or (mean, log_scale) each (N, C, H, W)."""
        h = self.decoder(z, y if self.num_classes else None)
        n, s, c = z.shape[0], self.image_size, self.in_channels
        if self.decoder_kind == "categorical":
            return h.view(n, c, self.levels, s, s)
        mean, log_scale = h.chunk(2, dim=1)
        return torch.tanh(mean), log_scale.clamp(-7.0, 5.0)

    def forward(self, x: torch.Tensor, eps: torch.Tensor, y: Optional[torch.Tensor] = None):
        """One reparameterized pass (Kingma & Welling 2014, eq. 10): z = mu(x) + sigma(x) eps, then the decoder:
        (decoder parameters at z, mu, log-variance). The whole ELBO's graph goes through this call, so DDP sees
        every parameter."""
        mean, logvar = self.encoder(x)
        z = mean + torch.exp(0.5 * logvar) * eps
        return self.decode(z, y), mean, logvar
