"""Generative adversarial networks as a method: a DCGAN pair (:mod:`genlab.nn.dcgan`) trained by the one loop with
the method's own two optimizers and step.

The game (Goodfellow et al. 2014, "Generative Adversarial Nets"): the discriminator D scores images, real ones
high and generated ones G(z) low; the generator G learns to raise the score of its images. Two losses
(``gan.loss``), both on D's logits d = D(x):

- ``ns``, the non-saturating loss (Goodfellow et al. 2014, sec. 3): L_D = softplus(-d_real) + softplus(d_fake)
  (the logistic loss of telling real from fake), L_G = softplus(-d_fake) (maximize log D(G(z)) instead of
  minimizing log(1 - D(G(z))), which saturates early in training); regularized by the R1 penalty
  (Mescheder et al. 2018, "Which Training Methods for GANs do actually Converge?", eq. 9),
  (gamma / 2) E_real ||grad_x D(x)||^2, applied every ``gan.r1_every`` steps with its weight multiplied by the
  interval (lazy regularization, Karras et al. 2020, StyleGAN2, sec. 3.1);
- ``hinge`` (Lim & Ye 2017, "Geometric GAN"; Miyato et al. 2018, "Spectral Normalization for GANs", eq. 17):
  L_D = relu(1 - d_real) + relu(1 + d_fake), L_G = -d_fake, with ``gan.spectral_norm=true`` (every layer of D
  divided by its largest singular value, estimated by one power iteration per step; Miyato et al. 2018, sec. 2.1).

One step: a discriminator update on the step's real batch and a fresh batch of fakes, then a generator update on
another batch of fakes (with D frozen). Both optimizers are Adam with ``gan.betas`` (DCGAN: 0.5, 0.999), the
schedule's learning rate for G and ``gan.d_lr_mult`` times it for D (the two time-scale rule of Heusel et al.
2017 when != 1). The EMA of the generator (``train.ema_decay``; Yazici et al. 2019, "The Unusual Effectiveness of
Averaging in GAN Training") is what samples by default; its batch-norm statistics are averaged like its weights
(see :func:`genlab.train.loop.ema_update`). Under several processes the gradients are all-reduced by hand (DDP
cannot take R1's double backward) and the losses checked for finiteness are averaged over the processes, so a
non-finite loss stops them all; the generator's batch-norm statistics are then per process.

The logged ``loss`` is the discriminator's; ``g_loss``, ``d_real`` and ``d_fake`` (mean logits) and ``r1`` are
logged beside it. There is no likelihood (``likelihood = "none"``) and no validation loss: a GAN's losses say
how the game stands, not how good the samples are, so its checkpoints are chosen by FID, not by a loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import choice, num, opt
from ..diffusion import PerSampleNoise
from ..nn.dcgan import GAN
from .base import Method, NoOptions, register, unwrap
from .categorical import square_shape

LOSSES = ("ns", "hinge")
G_NORMS = ("batch", "none")


@dataclass
class GANConfig:
    """The ``gan`` config section (method ``gan``)."""
    loss: str = choice("ns", LOSSES, help="ns: non-saturating (with R1); hinge (with spectral norm)")
    z_dim: int = num(64, 1, 4096)
    d_width: Optional[int] = num(None, 1, 4096, integer=True)   # discriminator channels (None: model.width)
    g_norm: str = choice("batch", G_NORMS, help="generator normalization: batch norm (DCGAN) or none")
    spectral_norm: bool = opt(False, help="spectral normalization of every discriminator layer (Miyato 2018)")
    r1_gamma: float = num(1.0, 0.0, 1e6)        # R1 weight gamma (0: off)
    r1_every: int = num(4, 1, 10 ** 6)          # lazy R1: every k steps, weight k * gamma / 2
    d_lr_mult: float = num(1.0, 0.0, 1e3, lo_open=True)
    betas: list = num(None, 0.0, 1.0, hi_open=True, integer=False, length=(2, 2), factory=lambda: [0.5, 0.999])


# ------------------------------------------------------------------------------------------------ pure functions

def d_loss(loss: str, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss per image (N,) from its logits on real and generated images."""
    if loss == "hinge":
        return F.relu(1 - d_real) + F.relu(1 + d_fake)
    return F.softplus(-d_real) + F.softplus(d_fake)


def g_loss(loss: str, d_fake: torch.Tensor) -> torch.Tensor:
    """The generator's loss per image (N,) from the discriminator's logits on its images."""
    if loss == "hinge":
        return -d_fake
    return F.softplus(-d_fake)


def r1_penalty(disc, x: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
    """||grad_x D(x)||^2 per real image (N,) (Mescheder et al. 2018, eq. 9 without gamma / 2), differentiable
    (create_graph) so that its gradient reaches D's weights; computed in fp32."""
    x = x.detach().float().requires_grad_(True)
    with torch.autocast(x.device.type, enabled=False):
        out = disc(x, y)
        (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return g.flatten(1).pow(2).sum(1)


# ------------------------------------------------------------------------------------------------ the method

@register
class GANMethod(Method):
    name = "gan"
    family = "GAN"
    label = "GAN"
    section = "gan"
    Section = GANConfig
    Options = NoOptions
    likelihood = "none"
    has_validation_loss = False
    conditions = ("class",)

    def build_model(self, shape: tuple, num_classes: int = 0, levels: int = 256, **_) -> GAN:
        c, h = square_shape(shape)
        g = self.cfg.gan
        return GAN(c, h, z_dim=g.z_dim, width=self.cfg.model.width, d_width=g.d_width or self.cfg.model.width,
                   num_classes=num_classes if self.cfg.model.class_cond else 0, g_norm=g.g_norm,
                   spectral_norm=g.spectral_norm)

    def configure_optimizers(self, model, train_cfg) -> list:
        """[Adam of the generator, Adam of the discriminator] with ``gan.betas`` (no weight decay)."""
        betas = tuple(self.cfg.gan.betas)
        return [torch.optim.Adam(model.generator.parameters(), lr=train_cfg.lr, betas=betas),
                torch.optim.Adam(model.discriminator.parameters(), lr=train_cfg.lr * self.cfg.gan.d_lr_mult,
                                 betas=betas)]

    def _labels(self, net, batch):
        return batch.get("y") if net.num_classes else None

    def loss(self, model, batch: dict, rng) -> torch.Tensor:
        """The discriminator's loss on a batch and as many fakes (the logged training loss; not a quality)."""
        net = unwrap(model)
        y = self._labels(net, batch)
        with torch.no_grad():
            fake = net.generator(rng.randn(net.z_dim), y)
        return d_loss(self.cfg.gan.loss, net.discriminator(batch["x"], y), net.discriminator(fake, y)).mean()

    def train_step(self, tr, lr: float):
        """One discriminator update, then one generator update (see the module docstring)."""
        kit = tr.kit                 # the loop's pieces (genlab.train.loop), handed in with the Trainer
        g_cfg, t = self.cfg.gan, tr.cfg.train
        net = tr.model
        G, D = net.generator, net.discriminator
        g_opt, d_opt = tr.optimizers
        kit.set_lr([g_opt], lr)
        kit.set_lr([d_opt], lr * g_cfg.d_lr_mult)
        r1_now = g_cfg.loss == "ns" and g_cfg.r1_gamma > 0 and tr.state.step % g_cfg.r1_every == 0
        k = t.grad_accum
        micro = [kit.micro_batch(tr, m) for m in range(k)]
        zero = torch.zeros((), device=tr.device)
        logs = {"d_real": zero.clone(), "d_fake": zero.clone(), "r1": zero.clone(), "g_loss": zero.clone()}
        total_d = zero.clone()

        # the discriminator: real batch against fakes of the current generator
        D.requires_grad_(True)
        for batch, rng in micro:
            y = self._labels(net, batch)
            z = rng.randn(net.z_dim)
            with torch.no_grad(), tr.autocast():
                fake = G(z, y)
            with tr.autocast():
                d_real, d_fake = D(batch["x"], y), D(fake, y)
                loss = d_loss(g_cfg.loss, d_real.float(), d_fake.float()).mean()
            if r1_now:
                r1 = r1_penalty(D, batch["x"], y).mean()
                loss = loss + g_cfg.r1_gamma / 2 * g_cfg.r1_every * r1
                logs["r1"] += r1.detach() / k
            (tr.scaler.scale(loss / k) if tr.scaler else loss / k).backward()
            total_d += loss.detach() / k
            logs["d_real"] += d_real.detach().float().mean() / k
            logs["d_fake"] += d_fake.detach().float().mean() / k
        d_params = list(D.parameters())
        kit.average_gradients(tr, d_params)
        kit.check_finite(tr, kit.mean_over_processes(tr, total_d), kit.clip_gradients(tr, d_params), lr)
        kit.apply_gradients(tr, [d_opt])

        # the generator: fresh fakes, the discriminator frozen
        D.requires_grad_(False)
        for batch, rng in micro:
            y = self._labels(net, batch)
            z = rng.randn(net.z_dim)
            with tr.autocast():
                loss = g_loss(g_cfg.loss, D(G(z, y), y).float()).mean()
            (tr.scaler.scale(loss / k) if tr.scaler else loss / k).backward()
            logs["g_loss"] += loss.detach() / k
        D.requires_grad_(True)
        g_params = list(G.parameters())
        kit.average_gradients(tr, g_params)
        kit.check_finite(tr, kit.mean_over_processes(tr, logs["g_loss"]), kit.clip_gradients(tr, g_params), lr)
        kit.apply_gradients(tr, [g_opt])
        d_opt.zero_grad(set_to_none=True)

        out = kit.reduce_step(tr, total_d)
        kit.ema_update(tr.ema, tr.model, kit.ema_decay_at(t, tr.state.step))
        extras = logs if tr.lazy else {key: v.item() for key, v in logs.items()}
        if not r1_now:
            extras.pop("r1")
        return kit.StepResult(loss=out.loss, step_time=out.step_time, stop=out.stop, extras=extras)

    def sample_batch(self, model, seeds: range, opts, *, y=None, device=None, callback=None):
        """G(z) with z ~ N(0, I) drawn per sample (one network evaluation)."""
        net = unwrap(model)
        dev = device or next(net.parameters()).device
        z = PerSampleNoise(seeds).randn((len(seeds), net.z_dim), dev)
        if net.num_classes and y is None:
            y = torch.as_tensor([s % net.num_classes for s in seeds], device=dev)
        x = net.generator(z, y if net.num_classes else None).float().clamp(-1, 1)
        if callback is not None:
            callback({"step": 0, "x": x, "known": torch.ones_like(x, dtype=torch.bool)})   # all at once
        return x, 1
