"""Naive one-shot generation: every sub-pixel predicted independently, from nothing or from the class.

The model is p(x | y) = prod_i Cat(x_i; softmax(theta_{y, i})): a table of logits per class, channel, level and
position. It is the best any independent-pixel model can do (its optimum is each pixel's marginal histogram),
so it isolates what "predicting all pixels at once" costs: its mean image is the blurry average of the data
(per class), and its samples are independent-pixel noise, because nothing ties neighbouring pixels together.
One network evaluation per sample; exact bits/dim.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .base import Method, register
from .categorical import (square_shape, DiscreteOptions, PerSampleUniform, TeacherForced, filter_logits, from_levels,
                          labels_or_none, sample_from, unwrap)


class OneShotTable(nn.Module):
    """Logits of shape (K + 1 or 1, C, L, H, W): one table per class plus a null class (index K), or one table."""

    def __init__(self, in_channels: int, image_size: int, levels: int, num_classes: int = 0):
        super().__init__()
        self.in_channels, self.image_size, self.levels, self.num_classes = in_channels, image_size, levels, num_classes
        rows = num_classes + 1 if num_classes else 1
        self.logits = nn.Parameter(torch.zeros(rows, in_channels, levels, image_size, image_size))

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        n = x.shape[0]
        if not self.num_classes:
            return self.logits.expand(n, *self.logits.shape[1:])
        if y is None:
            y = torch.full((n,), self.num_classes, dtype=torch.long, device=x.device)
        return self.logits[y]


@register
class OneShotMethod(TeacherForced, Method):
    name = "oneshot"
    family = "one-shot"
    label = "one-shot"
    Options = DiscreteOptions
    likelihood = "exact"

    def build_model(self, shape: tuple, num_classes: int = 0, levels: int = 256) -> nn.Module:
        c, h = square_shape(shape)
        return OneShotTable(c, h, levels, num_classes if self.cfg.model.class_cond else 0)

    def sampling_label(self, opts) -> str:
        return discrete_label("one-shot", opts)

    def extra_pictures(self, model, data=None) -> dict:
        return {"mean": self.mean_image(model, 1)}

    @torch.no_grad()
    def mean_image(self, model, n: int = 1, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The expected image under the model (the blurry average), in model space."""
        net = unwrap(model)
        dev = net.logits.device
        probs = torch.softmax(net(torch.zeros(n, 1, device=dev), labels_or_none(net, y)).float(), dim=2)
        lv = torch.arange(net.levels, device=dev, dtype=torch.float32).view(1, 1, -1, 1, 1)
        return from_levels((probs * lv).sum(2), net.levels).cpu()

    def sample_batch(self, model, seeds: range, opts, *, y=None, device=None, callback=None):
        """All pixels drawn at once and independently (1 network evaluation per sample)."""
        net = unwrap(model)
        dev = device or net.logits.device
        shape = (net.in_channels, net.image_size, net.image_size)
        b = len(seeds)
        u = PerSampleUniform(seeds).rand(*shape, device=dev)
        logits = filter_logits(net(torch.zeros(b, 1, device=dev), labels_or_none(net, y)), opts.temperature,
                               opts.top_k)
        x = from_levels(sample_from(logits.movedim(2, -1), u), net.levels)
        if callback is not None:
            callback({"step": 0, "x": x, "known": torch.ones_like(x, dtype=torch.bool)})
        return x, 1


def discrete_label(kind: str, opts) -> str:
    """``raster``, ``one-shot T=0.9 top-5``: the kind plus the options that differ from plain sampling."""
    extra = [f"T={opts.temperature}"] if opts.temperature != 1.0 else []
    extra += [f"top-{opts.top_k}"] if opts.top_k else []
    return " ".join([kind] + extra)
