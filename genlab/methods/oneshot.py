"""Naive one-shot generation: every sub-pixel predicted independently, from nothing or from the class.

The model is p(x | y) = prod_i Cat(x_i; softmax(theta_{y, i})): a table of logits per class, channel, level and
position. It is the best any independent-pixel model can do (its optimum is each pixel's marginal histogram),
so it isolates what "predicting all pixels at once" costs: its mean image is the blurry average of the data
(per class), and its samples are independent-pixel noise, because nothing ties neighbouring pixels together.
One network evaluation per sample; exact bits/dim.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ..config import Config
from .categorical import (square_shape, PerSampleUniform, TeacherForced, check_sample_options, filter_logits, from_levels,
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


class OneShotMethod(TeacherForced):
    name = "oneshot"
    sample_options = ("temperature", "top_k")

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def build_model(self, shape: tuple, num_classes: int = 0, levels: int = 256) -> nn.Module:
        c, h = square_shape(shape)
        return OneShotTable(c, h, levels, num_classes if self.cfg.model.class_cond else 0)

    @torch.no_grad()
    def mean_image(self, model, n: int = 1, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The expected image under the model (the blurry average), in model space."""
        net = unwrap(model)
        dev = net.logits.device
        probs = torch.softmax(net(torch.zeros(n, 1, device=dev), labels_or_none(net, y)).float(), dim=2)
        lv = torch.arange(net.levels, device=dev, dtype=torch.float32).view(1, 1, -1, 1, 1)
        return from_levels((probs * lv).sum(2), net.levels).cpu()

    @torch.no_grad()
    def sample(self, model, n: int, *, y: Optional[torch.Tensor] = None, seed: int = 0, batch_size: int = 256,
               callback: Optional[Callable] = None, device=None, progress: bool = False,
               **opts) -> tuple[torch.Tensor, int]:
        """n images, all pixels drawn at once and independently (1 network evaluation per sample)."""
        check_sample_options(self.name, self.sample_options, opts)
        s = self.cfg.sample
        temperature = opts.get("temperature", s.temperature)
        top_k = opts.get("top_k", s.top_k)
        net = unwrap(model)
        dev = device or net.logits.device
        shape = (net.in_channels, net.image_size, net.image_size)
        out = []
        for b0 in range(0, n, batch_size):
            b = min(batch_size, n - b0)
            u = PerSampleUniform(range(seed + b0, seed + b0 + b)).rand(*shape, device=dev)
            yb = None if y is None else y[b0:b0 + b].to(dev)
            logits = filter_logits(net(torch.zeros(b, 1, device=dev), labels_or_none(net, yb)), temperature, top_k)
            v = sample_from(logits.movedim(2, -1), u)
            x = from_levels(v, net.levels)
            if callback is not None and b0 == 0:
                callback({"step": 0, "x": x, "known": torch.ones_like(x, dtype=torch.bool)})
            out.append(x.cpu())
        return torch.cat(out), 1
