"""Masked (absorbing-state) discrete diffusion: every sub-pixel is either its clean level or [MASK]; the forward
process masks each sub-pixel independently, with probability 1 - alpha(t) at time t in [0, 1], and the network
predicts the clean level of every masked sub-pixel from the unmasked ones (D3PM absorbing state, Austin et al.
2021; MDLM, Sahoo et al. 2024; MD4, Shi et al. 2024).

Schedules (``masked.schedule``): linear alpha(t) = 1 - t, cosine alpha(t) = cos(pi t / 2). The backbone is the
any-order network (:class:`~genlab.methods.any_order.AnyOrderNet`): it sees x * mask, the mask and the number of
unmasked sub-pixels, but not t: given the mask, the absorbing-state model's conditionals do not depend on the
time (Ou et al. 2024, "Your absorbing discrete diffusion secretly models the conditional distributions of clean
data"), so the model is a mixture over orders, like any-order AR.

Training (MDLM eq. 10-11): per image draw t ~ U(t_min, 1), mask, and score the masked sub-pixels,

    NELBO(x) = E_t [ -alpha'(t) / (1 - alpha(t)) * sum_{k masked} -log p(x_k | x_unmasked) ]  (nats),

reported in bits/dim (/ (D ln 2)). The weight is 1/t for the linear schedule. Summed over the number m of masked
sub-pixels, E = sum_{m=1..D} (1/m) E_{|masked| = m}[sum of the masked cross-entropies], for every schedule:
the same expectation as any-order AR's estimator (ARDM), an upper bound on -log2 p(x) / D of the order mixture.

Sampling (``sample.sampler``): ``ancestral`` unmasks k sub-pixels per network evaluation in a random order per
sample, each drawn from its conditional (k = 1: exact ancestral sampling of the model; ceil(D / k) evaluations);
``maskgit`` (Chang et al. 2022, sec. 3.2) draws every masked sub-pixel at each of S steps, keeps the most
confident draws and re-masks the others, so that floor(D cos(pi/2 (i + 1) / S)) stay masked after step i.
Inpainting: the known sub-pixels start unmasked and are kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..config import choice, num
from ..rng import StepRNG
from .any_order import _raster_logits, any_order_net, raster, reveal, unraster
from .base import Method, register
from .categorical import (LN2, DiscreteOptions, PerSampleUniform, drop_labels, filter_logits, from_levels,
                          known_pixels, labels_or_none, nll_nats, sample_from, to_levels, unwrap)

SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ancestral", "maskgit")


@dataclass
class MaskedConfig:
    """The ``masked`` section: the forward process of method ``masked_diffusion``."""
    schedule: str = choice("linear", SCHEDULES, help="alpha(t): linear 1 - t, cosine cos(pi t / 2)")
    cond_drop: float = num(0.0, 0.0, 1.0, hi_open=True)   # probability of replacing the label by the null class
    t_min: float = num(1e-3, 0.0, 1.0, lo_open=True, hi_open=True)  # smallest t drawn (bounds the weight)


@dataclass
class MaskedOptions(DiscreteOptions):
    sampler: str = choice("ancestral", SAMPLERS, help="ancestral (k per step, random order) | maskgit (confidence)")
    k: int = num(1, 1, 2 ** 31 - 1, late=True, help="sub-pixels unmasked per network evaluation (1..C*H*W)")
    steps: int = num(12, 1, 100_000, help="maskgit steps (1..C*H*W, checked against the image)")
    choice_temperature: float = num(4.5, 0.0, 1e6, help="maskgit: Gumbel noise on the confidences, annealed "
                                                          "linearly to 0 (0: pure confidence order)")


# ------------------------------------------------------------------------------------------------ the process

def mask_rate(schedule: str, t: torch.Tensor) -> torch.Tensor:
    """1 - alpha(t): the probability that a sub-pixel is masked at time t."""
    if schedule == "linear":
        return t
    if schedule == "cosine":
        return 2 * torch.sin(math.pi * t / 4) ** 2          # 1 - cos(pi t / 2), exact near 0
    raise ValueError(f"masked.schedule={schedule!r} is not allowed; choose one of {', '.join(SCHEDULES)}")


def loss_weight(schedule: str, t: torch.Tensor) -> torch.Tensor:
    """-alpha'(t) / (1 - alpha(t)): 1/t (linear), (pi/2) / tan(pi t / 4) (cosine)."""
    if schedule == "linear":
        return 1 / t
    if schedule == "cosine":
        return (math.pi / 2) / torch.tan(math.pi * t / 4)
    raise ValueError(f"masked.schedule={schedule!r} is not allowed; choose one of {', '.join(SCHEDULES)}")


def masked_nats(model, x: torch.Tensor, y, masked: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropies (nats) of the masked sub-pixels of each image (N,), the network seeing the
    unmasked ones (``masked``: (N, C, H, W) bool) and their count."""
    net = unwrap(model)
    revealed = ~masked
    logits = model(x, revealed, revealed.flatten(1).sum(1), y)
    nll = nll_nats(logits, to_levels(x, net.levels))
    return (nll * masked).flatten(1).sum(1)


def nelbo_bits(model, x: torch.Tensor, y, t: torch.Tensor, u: torch.Tensor, schedule: str) -> torch.Tensor:
    """One-draw NELBO in bits/dim per image (N,), given times t (N,) and uniforms u (N, D) in raster order:
    sub-pixel k is masked when u_k < 1 - alpha(t)."""
    net = unwrap(model)
    masked = unraster(u < mask_rate(schedule, t)[:, None], net.in_channels, net.image_size)
    nats = masked_nats(model, x, y, masked)
    return loss_weight(schedule, t).to(nats.dtype) * nats / (net.dims * LN2)


def maskgit_schedule(masked: int, steps: int) -> list:
    """Sub-pixels still masked after each of ``steps`` MaskGIT steps, from ``masked`` at the start: the cosine
    counts floor(masked * cos(pi/2 * (i + 1) / steps)), at least one fewer per step, none after the last."""
    out, prev = [], masked
    for i in range(steps):
        n = 0 if i == steps - 1 else min(math.floor(masked * math.cos(math.pi / 2 * (i + 1) / steps)), prev - 1)
        prev = max(n, 0)
        out.append(prev)
    return out


def _gumbel(u: torch.Tensor) -> torch.Tensor:
    return -torch.log(-torch.log(u.clamp_min(1e-20)))


# ------------------------------------------------------------------------------------------------ the method

@register
class MaskedDiffusionMethod(Method):
    name = "masked_diffusion"
    family = "masked diffusion"
    label = "masked diffusion"
    section = "masked"
    Section = MaskedConfig
    Options = MaskedOptions
    inputs = ("known", "known_mask")
    likelihood = "bound"
    likelihood_draws = 16

    def nfe(self, opts, shape: tuple) -> int:
        d = shape[0] * shape[1] * shape[2]
        return min(opts.steps, d) if opts.sampler == "maskgit" else -(-d // opts.k)

    def sampling_label(self, opts) -> str:
        return f"maskgit-{opts.steps}" if opts.sampler == "maskgit" else f"ancestral k={opts.k}"

    def process_options(self, option_list: list) -> dict:
        """MaskGIT's few steps show the canvas filling in best; else the largest k."""
        gits = [s for s in option_list if s.get("sampler") == "maskgit"]
        if gits:
            return gits[0]
        return max(option_list, key=lambda s: s.get("k") or 1)

    def build_model(self, shape: tuple, num_classes: int = 0, levels: int = 256) -> nn.Module:
        return any_order_net(self.cfg, shape, num_classes, levels)

    # ------------------------------------------------------------------ training and likelihood
    def loss(self, model, batch: dict, rng: StepRNG) -> torch.Tensor:
        """Mean one-draw NELBO (bits/dim) of the batch: t ~ U(t_min, 1) and a mask per image."""
        x = batch["x"]
        net = unwrap(model)
        sec = self.cfg.masked
        t = sec.t_min + (1 - sec.t_min) * rng.rand()
        u = rng.rand(net.dims)
        drop = rng.rand()
        y = drop_labels(batch.get("y") if net.num_classes else None, drop, sec.cond_drop, net.num_classes)
        return nelbo_bits(model, x, y, t, u, sec.schedule).mean()

    @torch.no_grad()
    def log_likelihood(self, model, x: torch.Tensor, y: Optional[torch.Tensor] = None, *,
                       draws: Optional[int] = None, seed: int = 0, **_) -> torch.Tensor:
        """Monte Carlo estimate of the NELBO of each image in bits/dim (N,): the mean of ``draws`` one-draw
        estimates (the training loss's, t ~ U(t_min, 1)), each one network evaluation. Its expectation is the
        bound sum_m (1/m) E_{|masked|=m}[masked cross-entropies] / (D ln 2) up to the sliver t < t_min (a
        relative change of order t_min), an upper bound on -log2 p(x) / D of the model's order mixture."""
        net = unwrap(model)
        sec = self.cfg.masked
        draws = self.likelihood_draws if draws is None else draws
        g = torch.Generator().manual_seed(seed)
        y = labels_or_none(net, y)
        total = torch.zeros(x.shape[0], dtype=torch.float64)
        for _ in range(draws):
            t = sec.t_min + (1 - sec.t_min) * torch.rand(x.shape[0], generator=g)
            u = torch.rand(x.shape[0], net.dims, generator=g)
            total += nelbo_bits(net, x, y, t.to(x.device), u.to(x.device), sec.schedule).double().cpu()
        return (total / draws).float()

    # ------------------------------------------------------------------ sampling
    def prepare_inputs(self, model, n: int, opts, inputs: dict) -> dict:
        net = unwrap(model)
        d, c, size = net.dims, net.in_channels, net.image_size
        if opts.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)} for masked_diffusion models; "
                             f"got {opts.sampler!r}")
        name, v = ("k (sub-pixels unmasked per step)", opts.k) if opts.sampler == "ancestral" else \
            ("steps (maskgit steps)", opts.steps)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= d:
            raise ValueError(f"{name} must be an integer in 1..{d} for {c}x{size}x{size} images, got {v!r}")
        known, mask = known_pixels(inputs, n, (c, size, size))
        return {} if known is None else {"known": known, "known_mask": mask}

    def sample_batch(self, model, seeds: range, opts, *, y=None, device=None, callback=None, known=None,
                     known_mask=None):
        """One batch with the ``ancestral`` or ``maskgit`` sampler (see the module docstring): (images,
        network evaluations per sample). ``known`` / ``known_mask`` (N, C, H, W): those sub-pixels start
        unmasked and are kept."""
        net = unwrap(model)
        d, b = net.dims, len(seeds)
        lv = torch.zeros(b, d, dtype=torch.long, device=device)
        revealed = torch.zeros(b, d, dtype=torch.bool, device=device)
        if known is not None:
            revealed = raster(known_mask.to(device).bool())
            lv = torch.where(revealed, raster(to_levels(known.to(device), net.levels)), lv)
        run = self._ancestral if opts.sampler == "ancestral" else self._maskgit
        return run(model, PerSampleUniform(seeds), opts, lv, revealed, labels_or_none(net, y), device, callback)

    @staticmethod
    def _logits(model, lv, revealed, y):
        """The network's logits (N, D, L) in raster order, seeing the unmasked levels and their count."""
        net = unwrap(model)
        c, size = net.in_channels, net.image_size
        x = from_levels(unraster(lv, c, size), net.levels)
        return _raster_logits(model(x, unraster(revealed, c, size), revealed.sum(1), y))

    @staticmethod
    def _report(net, callback, step, lv, revealed):
        if callback is not None:
            c, size = net.in_channels, net.image_size
            callback({"step": step, "x": from_levels(unraster(lv, c, size), net.levels),
                      "known": unraster(revealed, c, size).clone()})

    def _ancestral(self, model, gen, opts, lv, revealed, y, dev, callback):
        """k sub-pixels per evaluation in a random order per sample (the known ones first): any-order AR's
        sampler (:func:`~genlab.methods.any_order.reveal`) on this model."""
        draws = gen.rand(2, unwrap(model).dims, device=dev)
        keys, u = draws[:, 0], draws[:, 1]
        perm = torch.where(revealed, keys - 2, keys).argsort(1)     # known positions first, then a random order
        return reveal(unwrap(model), lv, revealed, perm, u, opts.k, opts.temperature, opts.top_k, y, callback)

    def _maskgit(self, model, gen, opts, lv, revealed, y, dev, callback):
        """MaskGIT's confidence-based parallel decoding with the cosine schedule (Chang et al. 2022, sec. 3.2)."""
        net = unwrap(model)
        d, s = net.dims, opts.steps
        start = (~revealed).sum(1).tolist()
        table = {m: maskgit_schedule(m, s) for m in set(start)}
        left = torch.tensor([table[m] for m in start], dtype=torch.long, device=dev).view(len(start), s)
        steps = 0
        for i in range(s):
            if not bool((~revealed).any()):
                break
            u = gen.rand(2, d, device=dev)      # every sample draws at every step: its stream is its own
            logits = filter_logits(self._logits(model, lv, revealed, y), opts.temperature, opts.top_k)
            v = sample_from(logits, u[:, 0])
            logp = torch.log_softmax(logits, -1).gather(-1, v[..., None]).squeeze(-1)
            tau = opts.choice_temperature * (1 - (i + 1) / s)
            conf = torch.where(revealed, float("inf"), logp + tau * _gumbel(u[:, 1]))
            order = torch.sort(conf, dim=1, descending=True, stable=True).indices
            rank = order.argsort(1)
            new = (rank < (d - left[:, i])[:, None]) & ~revealed   # the most confident stay unmasked
            lv = torch.where(new, v, lv)
            revealed = revealed | new
            steps += 1
            self._report(net, callback, steps, lv, revealed)
        return from_levels(unraster(lv, net.in_channels, net.image_size), net.levels), steps
