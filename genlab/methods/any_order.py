"""Generalized (any-order) autoregression: one network predicts every unknown sub-pixel given any revealed
subset, told which sub-pixels are known and how many (order-agnostic AR; Uria et al. 2014 "A deep and tractable
density estimator"; Hoogeboom et al. 2022 "Autoregressive Diffusion Models" (ARDM), sec. 3).

Training (ARDM eq. 4-5): draw t ~ U{0..D-1} and a random order sigma, reveal the first t sub-pixels of sigma, and
score the D - t unknown ones; the loss

    L(x) = E_t [ 1/(D - t) * sum_{k unknown} -log p(x_k | x_known, t) ]        (nats per dimension)

is an unbiased estimate of E_sigma[-log p_sigma(x)] / D, the order-averaged negative log-likelihood, which upper
bounds the model's -log p(x) / D. The same estimator (averaged over several draws) is the reported test bits/dim.

Sampling reveals k sub-pixels per step (k = 1 is exact autoregression in the chosen order; larger k draws k
sub-pixels independently from their conditionals in one network evaluation, ceil(D / k) evaluations in all), in a
random or raster order. Inpainting comes for free: start with the known sub-pixels revealed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from ..config import choice, num
from ..nn import UNet
from ..rng import StepRNG
from .base import Method, register
from .categorical import (square_shape, LN2, DiscreteOptions, PerSampleUniform, drop_labels, filter_logits,
                          from_levels, known_pixels, labels_or_none, nll_nats, sample_from, to_levels, unwrap)

ORDERS = ("random", "raster")


@dataclass
class AnyOrderOptions(DiscreteOptions):
    k: int = num(1, 1, 2 ** 31 - 1, late=True, help="sub-pixels revealed per network evaluation (1..C*H*W)")
    order: str = choice("random", ORDERS, help="order of the reveal", other="a permutation of 0..D-1")


def raster(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, D) in raster order: rows, then columns, then channels within a pixel."""
    return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1)


def unraster(t: torch.Tensor, c: int, size: int) -> torch.Tensor:
    """(N, D, ...) in raster order -> (N, C, H, W, ...)."""
    n, rest = t.shape[0], t.shape[2:]
    return t.reshape(n, size, size, c, *rest).permute(0, 3, 1, 2, *range(4, 4 + len(rest)))


class AnyOrderNet(nn.Module):
    """A UNet that sees the known sub-pixels (x * mask), the mask itself, and the number revealed (as its time
    input, scaled to 0..1000), and returns logits (N, C, L, H, W) for every sub-pixel."""

    def __init__(self, in_channels: int, image_size: int, levels: int, num_classes: int = 0, **unet):
        super().__init__()
        self.in_channels, self.image_size, self.levels, self.num_classes = in_channels, image_size, levels, num_classes
        self.dims = in_channels * image_size * image_size
        self.unet = UNet(in_channels=2 * in_channels, image_size=image_size, num_classes=num_classes,
                         out_channels=in_channels * levels, **unet)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, t: torch.Tensor,
                y: Optional[torch.Tensor] = None) -> torch.Tensor:
        m = mask.to(x.dtype)
        out = self.unet(torch.cat([x * m, m], dim=1), t.float() * (1000.0 / self.dims), y)
        n, _, h, w = out.shape
        return out.reshape(n, self.in_channels, self.levels, h, w)


def any_order_net(cfg, shape: tuple, num_classes: int, levels: int) -> AnyOrderNet:
    """The any-order network of a config's ``model`` section (any-order AR and masked diffusion share it)."""
    m = cfg.model
    c, h = square_shape(shape)
    return AnyOrderNet(c, h, levels, num_classes if m.class_cond else 0, width=m.width,
                       channel_mults=tuple(m.channel_mults), num_res_blocks=m.num_res_blocks,
                       attn_resolutions=tuple(m.attn_resolutions), num_heads=m.num_heads, dropout=m.dropout)


@register
class AnyOrderMethod(Method):
    name = "any_order"
    family = "any-order AR"
    label = "any-order AR"
    Options = AnyOrderOptions
    inputs = ("known", "known_mask")
    likelihood = "estimate"
    likelihood_draws = 16

    def nfe(self, opts, shape: tuple) -> int:
        d = shape[0] * shape[1] * shape[2]
        return -(-d // opts.k)

    def sampling_label(self, opts) -> str:
        return f"k={opts.k} {opts.order if isinstance(opts.order, str) else 'custom'} order"

    def process_options(self, option_list: list) -> dict:
        """A few big steps show the k-pixel reveal best."""
        return max(option_list, key=lambda s: s.get("k", 1)) if len(option_list) > 1 else option_list[0]

    def build_model(self, shape: tuple, num_classes: int = 0, levels: int = 256) -> nn.Module:
        return any_order_net(self.cfg, shape, num_classes, levels)

    # ------------------------------------------------------------------ training and likelihood
    def _estimate(self, model, x, y, t, r) -> torch.Tensor:
        """ARDM's one-draw estimate of bits/dim per image, given revealed counts t (N,) and order keys r (N, D)."""
        net = unwrap(model)
        c, size, d = net.in_channels, net.image_size, net.dims
        rank = r.argsort(1).argsort(1)                      # position of each sub-pixel in the random order
        mask = unraster(rank < t[:, None], c, size)
        nll = nll_nats(model(x, mask, t, y), to_levels(x, net.levels))
        per_dim = (nll * ~mask).flatten(1).sum(1) / (d - t).to(nll.dtype)
        return per_dim / LN2

    def loss(self, model, batch: dict, rng: StepRNG) -> torch.Tensor:
        x = batch["x"]
        net = unwrap(model)
        t = rng.randint(net.dims)
        r = rng.rand(net.dims)
        drop = rng.rand()
        y = drop_labels(batch.get("y") if net.num_classes else None, drop, self.cfg.diffusion.cond_drop,
                        net.num_classes)
        return self._estimate(model, x, y, t, r).mean()

    @torch.no_grad()
    def log_likelihood(self, model, x: torch.Tensor, y: Optional[torch.Tensor] = None, *,
                       draws: Optional[int] = None, seed: int = 0, **_) -> torch.Tensor:
        """Unbiased estimate of the order-averaged bits/dim of each image (N,), the mean of ``draws`` one-draw
        estimates (ARDM eq. 5), each one network evaluation."""
        net = unwrap(model)
        draws = self.likelihood_draws if draws is None else draws
        g = torch.Generator().manual_seed(seed)
        y = labels_or_none(net, y)
        total = torch.zeros(x.shape[0], dtype=torch.float64)
        for _ in range(draws):
            t = torch.randint(net.dims, (x.shape[0],), generator=g).to(x.device)
            r = torch.rand(x.shape[0], net.dims, generator=g).to(x.device)
            total += self._estimate(net, x, y, t, r).double().cpu()
        return (total / draws).float()

    @torch.no_grad()
    def order_log_likelihood(self, model, x: torch.Tensor, order: Sequence[int],
                             y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Exact bits/dim of each image under one fixed order (D network evaluations): -log2 p_sigma(x) / D."""
        net = unwrap(model)
        n, c, size = x.shape[0], net.in_channels, net.image_size
        order = self._check_order(order, net.dims)
        lv = raster(to_levels(x, net.levels))
        known = torch.zeros(n, net.dims, dtype=torch.bool, device=x.device)
        total = torch.zeros(n, device=x.device, dtype=torch.float64)
        for t, p in enumerate(order.tolist()):
            logits = net(x, unraster(known, c, size), torch.full((n,), t, device=x.device), labels_or_none(net, y))
            lp = torch.log_softmax(_raster_logits(logits).double(), dim=-1)
            total -= lp[:, p].gather(1, lv[:, p:p + 1]).squeeze(1)
            known[:, p] = True
        return (total / net.dims / LN2).cpu()

    # ------------------------------------------------------------------ sampling
    @staticmethod
    def _check_order(order, d: int) -> torch.Tensor:
        o = torch.as_tensor(order, dtype=torch.long).flatten()
        if o.numel() != d or not torch.equal(o.sort().values, torch.arange(d)):
            seen = set(o.tolist())
            missing = [i for i in range(d) if i not in seen][:5]
            dup = len(o) - len(seen)
            raise ValueError(f"order must be a permutation of the {d} sub-pixel positions 0..{d - 1} (raster "
                             f"index); got {o.numel()} entries, {dup} repeated, missing e.g. {missing}")
        return o

    def prepare_inputs(self, model, n: int, opts, inputs: dict) -> dict:
        net = unwrap(model)
        d, c, size = net.dims, net.in_channels, net.image_size
        k = opts.k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d:
            raise ValueError(f"k (sub-pixels revealed per step) must be an integer in 1..{d} for "
                             f"{c}x{size}x{size} images, got {k!r}")
        if isinstance(opts.order, str):
            if opts.order not in ORDERS:
                raise ValueError(f"order must be one of {', '.join(ORDERS)} or a permutation of 0..{d - 1}; "
                                 f"got {opts.order!r}")
            fixed = torch.arange(d) if opts.order == "raster" else None
        else:
            fixed = self._check_order(opts.order, d)
        known, mask = known_pixels(inputs, n, (c, size, size))
        out = {"fixed": fixed} if fixed is not None else {}
        return out if known is None else dict(out, known=known, known_mask=mask)

    def sample_batch(self, model, seeds: range, opts, *, y=None, device=None, callback=None, known=None,
                     known_mask=None, fixed=None):
        """Reveal k sub-pixels per network evaluation (ceil(D / k) evaluations per sample).

        Options: k (1..D), order ("random": a fresh random order per sample; "raster"; or an explicit
        permutation of 0..D-1 in raster index), temperature, top_k, and for inpainting ``known`` (N, C, H, W)
        model-space images with ``known_mask`` (N, C, H, W) bool: those sub-pixels are revealed from the start
        and kept."""
        net = unwrap(model)
        d = net.dims
        k, temperature, top_k, dev = opts.k, opts.temperature, opts.top_k, device
        b = len(seeds)
        draws = PerSampleUniform(seeds).rand(2, d, device=dev)
        keys, u = draws[:, 0], draws[:, 1]
        if fixed is not None:   # rank[p] = place of sub-pixel p in the order
            rank = fixed.to(dev).argsort().expand(b, d).float()
        else:
            rank = keys.argsort(1).argsort(1).float()
        lv = torch.zeros(b, d, dtype=torch.long, device=dev)
        mask = torch.zeros(b, d, dtype=torch.bool, device=dev)
        if known is not None:
            mask = raster(known_mask.to(dev).bool())
            lv = torch.where(mask, raster(to_levels(known.to(dev), net.levels)), lv)
            rank = torch.where(mask, rank - d, rank)    # known positions first, then the chosen order
        perm = rank.argsort(1)
        return reveal(net, lv, mask, perm, u, k, temperature, top_k, labels_or_none(net, y), callback)


def reveal(net, lv: torch.Tensor, mask: torch.Tensor, perm: torch.Tensor, u: torch.Tensor, k: int,
           temperature: float, top_k: int, y, callback=None):
    """Reveal k sub-pixels per network evaluation in the order ``perm`` (N, D) until every one is known; each is
    drawn from its conditional with the uniforms ``u`` (N, D). ``lv`` (N, D) levels and ``mask`` (N, D) the known
    ones, in raster order. Returns (images in [-1, 1], evaluations). Any-order AR's sampler, and masked
    diffusion's ancestral one."""
    d, c, size = net.dims, net.in_channels, net.image_size
    dev = lv.device
    t = mask.sum(1)
    steps = 0
    while bool((t < d).any()):
        pos = t[:, None] + torch.arange(k, device=dev)[None]
        valid = pos < d
        idx = perm.gather(1, pos.clamp(max=d - 1))
        x = from_levels(unraster(lv, c, size), net.levels)
        logits = _raster_logits(net(x, unraster(mask, c, size), t, y))
        chosen = logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1]))
        v = sample_from(filter_logits(chosen, temperature, top_k), u.gather(1, idx))
        # near the end, positions past D are clamped to D-1 and repeat it: add only the valid draws
        # (scatter_add, since with repeated indices a plain scatter may keep an invalid write)
        hit = torch.zeros_like(lv).scatter_add_(1, idx, valid.long()) > 0
        drawn = torch.zeros_like(lv).scatter_add_(1, idx, v * valid)
        lv = torch.where(hit, drawn, lv)
        mask = mask | hit
        t = mask.sum(1)
        steps += 1
        if callback is not None:
            callback({"step": steps, "x": from_levels(unraster(lv, c, size), net.levels),
                      "known": unraster(mask, c, size).clone()})
    return from_levels(unraster(lv, c, size), net.levels), steps


def _raster_logits(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, L, H, W) -> (N, D, L) with D in raster order."""
    n, c, l, h, w = logits.shape
    return logits.permute(0, 3, 4, 1, 2).reshape(n, h * w * c, l)

