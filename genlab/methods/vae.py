"""Variational autoencoders as a method: a convolutional VAE (:mod:`genlab.nn.vae`) whose decoder is a distribution
over the dataset's levels, so its bound is on the same discrete likelihood as every other family's bits/dim.

Model (Kingma & Welling 2014, "Auto-Encoding Variational Bayes"): p(z) = N(0, I), p(x | z) the decoder's
categorical (``vae.decoder=categorical``) or discretized-logistic (``logistic``; Salimans et al. 2017, PixelCNN++,
eq. 2, one component per sub-pixel) distribution over the L levels of each sub-pixel independently, and
q(z | x) = N(mu(x), diag sigma^2(x)) from the encoder. Training maximizes the evidence lower bound (eq. 10):

    log p(x) >= ELBO = E_q[log p(x | z)] - KL(q(z | x) || p(z)),

one reparameterized draw z = mu + sigma eps per image, the KL in closed form (appendix B); the loss is -ELBO in
bits/dim. Evaluation: the ELBO, and the importance-weighted bound (Burda et al. 2016, "Importance Weighted
Autoencoders", eq. 8) with k draws from q,

    log p(x) >= L_k = E[log (1/k) sum_i p(x, z_i) / q(z_i | x)],

which tightens to log p(x) as k grows (``log_likelihood(..., draws=k)``; draws=1 gives the ELBO with the closed-form
KL). Both are bounds (``likelihood = "bound"``). Samples: z ~ N(0, I) through the decoder, shown as the
decoder's mean (``decode=mean``, the usual VAE picture: blurry where the decoder is unsure) or as a draw of every
sub-pixel (``decode=sample``: the model's actual samples, noisy because the sub-pixels are independent given z).
``reconstruct`` encodes and decodes real images; the report shows them beside the originals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import choice, num
from ..diffusion import PerSampleNoise
from ..nn.vae import ConvVAE
from .base import Method, register, unwrap
from .categorical import LN2, PerSampleUniform, from_levels, nll_nats, sample_from, square_shape, to_levels

DECODERS = ("logistic", "categorical")
LOG_2PI = math.log(2 * math.pi)


@dataclass
class VAEConfig:
    """The ``vae`` config section (method ``vae``)."""
    z_dim: int = num(32, 1, 65536)
    decoder: str = choice("logistic", DECODERS, help="p(x | z): discretized logistic or categorical over the levels")


@dataclass
class VAEOptions:
    decode: str = choice("mean", ("mean", "sample"), help="show the decoder's mean (blurry) or draw every sub-pixel")


# ------------------------------------------------------------------------------------------------ pure functions

def discretized_logistic_logp(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                              levels: int) -> torch.Tensor:
    """log P(x) per sub-pixel of a logistic(mean, exp(log_scale)) discretized to ``levels`` bins of [-1, 1]
    (Salimans et al. 2017, eq. 2): the CDF over [x - h, x + h] with h = 1 / (L - 1), the two edge bins taking the
    tails; ``x`` on the level grid. Where a bin's mass underflows, its density at the centre times the width
    (as PixelCNN++'s released code)."""
    x, mean, log_scale = x.float(), mean.float(), log_scale.float()
    h = 1.0 / (levels - 1)
    inv_s = torch.exp(-log_scale)
    plus, minus = inv_s * (x - mean + h), inv_s * (x - mean - h)
    log_cdf_plus = -F.softplus(-plus)                  # log sigmoid(plus): the lowest bin
    log_sf_minus = -F.softplus(minus)                  # log (1 - sigmoid(minus)): the highest bin
    delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv_s * (x - mean)
    log_pdf_mid = mid - log_scale - 2 * F.softplus(mid) + math.log(2 * h)
    middle = torch.where(delta > 1e-5, torch.log(delta.clamp_min(1e-12)), log_pdf_mid)
    return torch.where(x < -1 + h / 2, log_cdf_plus, torch.where(x > 1 - h / 2, log_sf_minus, middle))


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) in nats per row (Kingma & Welling 2014, appendix B)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)


def gaussian_logpdf(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag exp(logvar)) in nats, summed over the last axis (the latent's dimensions)."""
    return (-0.5 * (LOG_2PI + logvar + (z - mean).pow(2) / logvar.exp())).sum(-1)


def params_logp(net: ConvVAE, x: torch.Tensor, params) -> torch.Tensor:
    """log p(x | z) in nats per image (N,) under decoder parameters ``params`` (:meth:`ConvVAE.decode`)."""
    if net.decoder_kind == "categorical":
        return -nll_nats(params, to_levels(x, net.levels)).flatten(1).sum(1)
    mean, log_scale = params
    xq = from_levels(to_levels(x, net.levels), net.levels)
    return discretized_logistic_logp(xq, mean, log_scale, net.levels).flatten(1).sum(1)


def decoder_logp(net: ConvVAE, x: torch.Tensor, z: torch.Tensor, y=None) -> torch.Tensor:
    """log p(x | z) in nats per image (N,): the decoder's distribution at the images' levels."""
    return params_logp(net, x, net.decode(z, y))


def elbo_nats(model, x: torch.Tensor, eps: torch.Tensor, y=None) -> torch.Tensor:
    """The ELBO in nats per image with one reparameterized draw z = mu + sigma eps and the closed-form KL;
    ``model`` the ConvVAE or its DDP wrapper (called, so that DDP syncs the gradients)."""
    params, mean, logvar = model(x, eps, y)
    return params_logp(unwrap(model), x, params) - gaussian_kl(mean, logvar)


def iwae_nats(net: ConvVAE, x: torch.Tensor, k: int, generator: torch.Generator, y=None,
              max_outputs: int = 2 ** 25) -> torch.Tensor:
    """The importance-weighted bound L_k in nats per image (Burda et al. 2016, eq. 8), the k draws from q(z | x)
    taken a chunk at a time (at most ``max_outputs`` decoder outputs per chunk) and combined by a running
    logsumexp."""
    mean, logvar = net.encoder(x)
    n = x.shape[0]
    per_image = x[0].numel() * (net.levels if net.decoder_kind == "categorical" else 2)
    chunk = max(1, min(k, max_outputs // (n * per_image)))
    total = torch.full((n,), -math.inf, device=x.device)
    done = 0
    while done < k:
        c = min(chunk, k - done)
        eps = torch.randn((c, *mean.shape), generator=generator).to(x.device)
        z = mean + torch.exp(0.5 * logvar) * eps                                   # (c, N, z_dim)
        zf = z.reshape(c * n, -1)
        xr = x.repeat(c, *[1] * (x.dim() - 1))
        yr = None if y is None else y.repeat(c)
        log_w = (decoder_logp(net, xr, zf, yr).view(c, n) + gaussian_logpdf(z, torch.zeros_like(z),
                                                                           torch.zeros_like(z)).view(c, n)
                 - gaussian_logpdf(z, mean.expand_as(z), logvar.expand_as(z)).view(c, n))
        total = torch.logaddexp(total, torch.logsumexp(log_w, dim=0))
        done += c
    return total - math.log(k)


# ------------------------------------------------------------------------------------------------ the method

@register
class VAEMethod(Method):
    name = "vae"
    family = "VAE"
    label = "VAE"
    section = "vae"
    Section = VAEConfig
    Options = VAEOptions
    likelihood = "bound"
    likelihood_draws = 1
    conditions = ("class",)

    def build_model(self, shape: tuple, num_classes: int = 0, levels: int = 256, **_) -> ConvVAE:
        c, h = square_shape(shape)
        v = self.cfg.vae
        return ConvVAE(c, h, levels, z_dim=v.z_dim, width=self.cfg.model.width, decoder=v.decoder,
                       num_classes=num_classes if self.cfg.model.class_cond else 0)

    def _y(self, net, y):
        return y if net.num_classes else None

    def loss(self, model, batch: dict, rng) -> torch.Tensor:
        """-ELBO in bits/dim, mean over the batch."""
        net = unwrap(model)
        x = batch["x"]
        eps = rng.randn(net.z_dim)
        return (-elbo_nats(model, x, eps, self._y(net, batch.get("y"))) / (x[0].numel() * LN2)).mean()

    @torch.no_grad()
    def log_likelihood(self, model, x: torch.Tensor, y: Optional[torch.Tensor] = None, *,
                       draws: Optional[int] = None, seed: int = 0, **_) -> torch.Tensor:
        """Bits/dim per image (N,) of the ELBO (draws 1 or None, one draw of z with the closed-form KL) or of the
        importance-weighted bound with k = draws (Burda et al. 2016)."""
        net = unwrap(model)
        k = draws or 1
        g = torch.Generator().manual_seed(seed)
        y = self._y(net, y)
        if k == 1:
            eps = torch.randn((x.shape[0], net.z_dim), generator=g).to(x.device)
            nats = elbo_nats(net, x, eps, y)
        else:
            nats = iwae_nats(net, x, k, g, y)
        return -nats / (x[0].numel() * LN2)

    @torch.no_grad()
    def decode_images(self, net: ConvVAE, z: torch.Tensor, y, decode: str, seeds=None) -> torch.Tensor:
        """Images in [-1, 1] on the level grid from latents: the decoder's mean, or a draw of every sub-pixel."""
        params = net.decode(z, y)
        L = net.levels
        if net.decoder_kind == "categorical":
            logits = params.float().movedim(2, -1)                         # (N, C, H, W, L)
            if decode == "mean":
                lv = torch.arange(L, device=logits.device, dtype=torch.float32)
                return from_levels(torch.round((logits.softmax(-1) * lv).sum(-1)), L)
            u = PerSampleUniform(seeds).rand(*logits.shape[1:-1], device=logits.device)
            return from_levels(sample_from(logits, u), L)
        mean, log_scale = params
        if decode == "sample":
            u = PerSampleUniform(seeds).rand(*mean.shape[1:], device=mean.device).clamp(1e-6, 1 - 1e-6)
            mean = mean + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
        return from_levels(to_levels(mean.clamp(-1, 1), L), L)

    def sample_batch(self, model, seeds: range, opts, *, y=None, device=None, callback=None):
        """z ~ N(0, I) per sample through the decoder (one network evaluation)."""
        net = unwrap(model)
        dev = device or next(net.parameters()).device
        z = PerSampleNoise(seeds).randn((len(seeds), net.z_dim), dev)
        if net.num_classes and y is None:
            y = torch.as_tensor([s % net.num_classes for s in seeds], device=dev)
        # the draws of decode=sample come from per-sample generators seeded apart from z's
        x = self.decode_images(net, z, self._y(net, y), opts.decode, seeds=[s + 2 ** 40 for s in seeds])
        if callback is not None:
            callback({"step": 0, "x": x, "known": torch.ones_like(x, dtype=torch.bool)})
        return x, 1

    @torch.no_grad()
    def reconstruct(self, model, x: torch.Tensor, y=None) -> torch.Tensor:
        """Real images (N, C, H, W) in [-1, 1] encoded (the posterior mean) and decoded (the decoder's mean)."""
        net = unwrap(model)
        mean, _ = net.encoder(x)
        return self.decode_images(net, mean, self._y(net, y), "mean")

    def sampling_label(self, opts) -> str:
        return "VAE" if opts.decode == "mean" else "VAE sampled"

    def extra_pictures(self, model, data=None) -> dict:
        """Reconstructions: a row of real held-out images over a row of their reconstructions."""
        if data is None or len(data) == 0:
            return {}
        from ..data import to_model

        net = unwrap(model)
        x = to_model(data.x[:8], data.levels).to(next(net.parameters()).device)
        was = net.training
        net.eval()
        try:
            r = self.reconstruct(net, x, None if data.y is None else data.y[:8].long().to(x.device))
        finally:
            net.train(was)
        return {"reconstructions": torch.cat([x.cpu(), r.cpu()])}
