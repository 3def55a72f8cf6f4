"""Shared pieces of the discrete (categorical-over-levels) methods: one-shot, raster AR and any-order AR.

Images live in model space [-1, 1] (see :func:`genlab.data.to_model`); these methods model the integer levels
0..L-1 of each sub-pixel with a categorical distribution, so their likelihoods are exact discrete ones, in
bits per dimension (bits/dim = negative log2-likelihood / (C * H * W)), comparable with the diffusion bound
computed on the same levels.

Sampling randomness is drawn per sample (sample i from a generator seeded with seed + i), as uniform numbers
consumed by inverse-CDF draws, so a sample does not depend on the batch it is drawn in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import num
from .base import unwrap

LN2 = math.log(2.0)


def to_levels(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Model-space floats in [-1, 1] to integer levels 0..L-1 (long), the inverse of ``to_model``."""
    return torch.round((x.float() + 1) / 2 * (levels - 1)).clamp_(0, levels - 1).long()


def from_levels(v: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer levels to model space: v / (L-1) * 2 - 1."""
    return v.float() / (levels - 1) * 2 - 1


def nll_nats(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sub-pixel negative log-likelihood in nats; logits (N, C, L, H, W), target levels (N, C, H, W)."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(logits.transpose(1, 2), target, reduction="none")


def bits_per_dim(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Exact bits/dim of each image under independent categoricals given by ``logits``: (N,)."""
    return nll_nats(logits, target).flatten(1).mean(1) / LN2


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """Logits divided by the temperature, with all but the ``top_k`` largest set to -inf (0 keeps all)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 keeps every level), got {top_k}")
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits


def sample_from(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from categoricals over the last axis of ``logits`` with uniforms ``u`` (logits.shape[:-1])."""
    cdf = torch.softmax(logits.float(), dim=-1).cumsum(-1)
    # u = 0 exactly (torch.rand can return it) must not pick a level of probability 0 (e.g. cut by top-k)
    target = (u.float().clamp_min(1e-12) * cdf[..., -1]).unsqueeze(-1).contiguous()
    idx = torch.searchsorted(cdf, target).squeeze(-1)
    return idx.clamp_(max=logits.shape[-1] - 1)


class PerSampleUniform:
    """Uniform numbers from one CPU generator per sample (sample i is seeded with seed + i)."""

    def __init__(self, seeds):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def rand(self, *shape: int, device=None) -> torch.Tensor:
        return torch.stack([torch.rand(shape, generator=g) for g in self.generators]).to(device)


@dataclass
class DiscreteOptions:
    """Sampling options of every method that draws levels from categoricals."""
    temperature: float = num(1.0, 0.0, 100.0, lo_open=True, help="softmax temperature (< 1 sharpens)")
    top_k: int = num(0, 0, 2 ** 31 - 1, help="sample among the k likeliest levels (0: all)")


def drop_labels(y: Optional[torch.Tensor], drop: torch.Tensor, p: float, null: int) -> Optional[torch.Tensor]:
    """Condition dropout for classifier-free guidance (Ho & Salimans 2022): each label becomes the null class
    when its uniform draw ``drop`` is below ``p``."""
    if y is None or p <= 0:
        return y
    return torch.where(drop < p, torch.full_like(y, null), y)


class TeacherForced:
    """loss and log_likelihood of a method whose network returns every conditional at once, logits
    (N, C, L, H, W) from ``model(x, y)``: exact bits/dim in one pass (one-shot, raster AR)."""

    def loss(self, model, batch: dict, rng) -> torch.Tensor:
        """Mean exact bits/dim of the batch; with classes, a fraction ``diffusion.cond_drop`` of the labels is
        replaced by the null class."""
        x = batch["x"]
        net = unwrap(model)
        y = training_condition(model, batch, rng.rand(), self.cfg.diffusion.cond_drop)
        return bits_per_dim(model(x, y), to_levels(x, net.levels)).mean()

    @torch.no_grad()
    def log_likelihood(self, model, x: torch.Tensor, y: Optional[torch.Tensor] = None, **_) -> torch.Tensor:
        """Exact bits/dim of each image (N,)."""
        net = unwrap(model)
        return bits_per_dim(net(x, labels_or_none(net, y)), to_levels(x, net.levels))


def square_shape(shape: tuple) -> tuple[int, int]:
    """(channels, side) of a (C, H, W) image shape; every backbone here takes square images only."""
    c, h, w = shape
    if h != w:
        raise ValueError(f"the models take square images, got {h}x{w} (set data.image_size for a folder)")
    return c, h


def known_pixels(opts: dict, n: int, shape: tuple):
    """The inpainting options ``known`` (images in [-1, 1]) and ``known_mask`` (True = keep), checked against
    n samples of ``shape`` (C, H, W): (known, bool mask), or (None, None) when not inpainting."""
    known, mask = opts.get("known"), opts.get("known_mask")
    if (known is None) != (mask is None):
        raise ValueError("inpainting needs both known (images) and known_mask")
    if known is None:
        return None, None
    want = (n, *shape)
    if tuple(known.shape) != want or tuple(mask.shape) != want:
        raise ValueError(f"known and known_mask must have shape {want}; got {tuple(known.shape)} and "
                         f"{tuple(mask.shape)}")
    return known, mask.bool()


def labels_or_none(model, y: Optional[torch.Tensor]):
    """y for a conditional network (labels, or caption tokens for a text model), else None."""
    net = unwrap(model)
    return y if getattr(net, "conditional", net.num_classes) else None


def training_condition(model, batch: dict, drop: torch.Tensor, p: float) -> Optional[torch.Tensor]:
    """A conditional network's y for a training batch: its labels, or its captions as tokens (text models), each
    replaced by the null condition (null class, empty caption) when its uniform ``drop`` is below ``p`` (condition
    dropout for classifier-free guidance); None for an unconditional network. With ``p = 0`` (``drop`` may be
    None) it is the condition of an evaluation batch, e.g. for likelihoods."""
    net = unwrap(model)
    if getattr(net, "text", None) is not None:
        if "text" not in batch:
            raise ValueError("a text-conditional model needs captions: the batch has none")
        tokens = net.text.tokenizer.encode(batch["text"]).to(batch["x"].device)
        return torch.where((drop < p)[:, None], net.null_like(tokens), tokens) if p > 0 else tokens
    return drop_labels(batch.get("y") if net.num_classes else None, drop, p, net.num_classes)
