"""Raster autoregression: p(x) = prod_i p(x_i | x_<i) over sub-pixels in raster order (rows, then columns, then
channels within a pixel), each a categorical over the dataset's levels (PixelRNN/PixelCNN, van den Oord et al.
2016, eq. 1-2). The likelihood is exact: one network evaluation gives every conditional at once (teacher forcing),
so bits/dim is computed in one pass. Sampling needs one evaluation per sub-pixel (C * H * W); both backbones make
each of them cheap with a cache: the transformer's keys and values, the PixelCNN's convolution inputs (Ramachandran
et al. 2017). Without it (``use_cache=False``) every sub-pixel re-runs the whole network.

Backbones (``ar.backbone``): ``pixelcnn`` (:class:`genlab.nn.pixelcnn.GatedPixelCNN`) and ``transformer``
(:class:`genlab.nn.transformer.PixelTransformer`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..config import Config, num, opt
from ..diffusion.guidance import guided_logits
from .base import Method, register
from .categorical import (square_shape, DiscreteOptions, PerSampleUniform, TeacherForced, filter_logits, from_levels,
                          known_pixels, labels_or_none, sample_from, to_levels, unwrap)
from .oneshot import discrete_label

BACKBONES = ("pixelcnn", "transformer")


@dataclass
class AutoregressiveOptions(DiscreteOptions):
    use_cache: bool = opt(True, help="incremental sampling: the transformer's key/value cache, the PixelCNN's "
                                     "cached convolution inputs (false re-runs the network per sub-pixel)")
    guidance: float = num(1.0, 0.0, 1000.0, help="classifier-free guidance scale (1: none, 0: unconditional)")


@register
class AutoregressiveMethod(TeacherForced, Method):
    name = "autoregressive"
    family = "autoregressive"
    label = "raster AR"
    Options = AutoregressiveOptions
    inputs = ("known", "known_mask")
    likelihood = "exact"
    conditions = ("class", "text")

    @classmethod
    def supports(cls, kind: str, cfg: Config) -> bool:
        return kind == "text_cond" and cfg.ar.backbone == "transformer"

    @classmethod
    def support_note(cls, kind: str) -> str:
        return "method=autoregressive with ar.backbone=transformer" if kind == "text_cond" else ""

    @classmethod
    def support_detail(cls, kind: str, cfg: Config) -> str:
        return f" with ar.backbone={cfg.ar.backbone}" if kind == "text_cond" else ""

    def nfe(self, opts, shape: tuple) -> int:
        d = shape[0] * shape[1] * shape[2]
        return 2 * d if opts.guidance != 1.0 else d

    def sampling_label(self, opts) -> str:
        return discrete_label("raster", opts)

    def build_model(self, shape: tuple, num_classes: int = 0, levels: int = 256,
                    vocab: Optional[dict] = None) -> nn.Module:
        """vocab: the tokenizer of a text-conditional transformer (saved with the run)."""
        a, m = self.cfg.ar, self.cfg.model
        c, h = square_shape(shape)
        k = num_classes if m.class_cond else 0
        if a.backbone == "pixelcnn":
            from ..nn.pixelcnn import GatedPixelCNN

            return GatedPixelCNN(in_channels=c, image_size=h, levels=levels, width=a.width, layers=a.layers,
                                 kernel_size=a.kernel_size, dropout=a.dropout, num_classes=k)
        from ..nn.text import build_text_encoder
        from ..nn.transformer import PixelTransformer

        text = build_text_encoder(m, vocab) if m.text_cond else None
        return PixelTransformer(in_channels=c, image_size=h, levels=levels, width=a.width, layers=a.layers,
                                heads=a.heads, dropout=a.dropout, num_classes=k, text_encoder=text)

    def prepare_inputs(self, model, n: int, opts, inputs: dict) -> dict:
        net = unwrap(model)
        known, mask = known_pixels(inputs, n, (net.in_channels, net.image_size, net.image_size))
        return {} if known is None else {"known": known, "known_mask": mask}

    def sample_batch(self, model, seeds: range, opts, *, y=None, device=None, callback=None, known=None,
                     known_mask=None):
        """Sub-pixel by sub-pixel in raster order (evaluations per sample = C*H*W, twice that with guidance).

        Options: temperature (> 0; < 1 sharpens), top_k (0 = all levels), use_cache (the backbone's ``step``
        cache; False re-runs the full network for every sub-pixel), and ``known`` (N, C, H, W) model-space
        images with ``known_mask`` (N, C, H, W) bool: those sub-pixels are kept instead of drawn. Raster AR can
        only condition on known pixels that come before a position (any_order conditions on all of them)."""
        temperature, top_k, guidance = opts.temperature, opts.top_k, opts.guidance
        net = unwrap(model)
        dev = device
        c, size = net.in_channels, net.image_size
        d = c * size * size
        guided = float(guidance) != 1.0
        if guided and (not net.conditional or y is None):
            raise ValueError("classifier-free guidance needs a class- or text-conditional model (model.class_cond or "
                             "model.text_cond, trained with diffusion.cond_drop > 0) and labels or a prompt")
        b = len(seeds)
        u = PerSampleUniform(seeds).rand(d, device=dev)
        yb = labels_or_none(net, y)
        levels = torch.zeros(b, c, size, size, dtype=torch.long, device=dev)
        done = torch.zeros(b, c, size, size, dtype=torch.bool, device=dev)
        cache = net.new_cache(b, dev) if opts.use_cache and hasattr(net, "step") else None
        null = net.null_like(yb) if guided else None
        cache_u = net.new_cache(b, dev) if guided and cache is not None else None
        prev = None
        for p in range(d):
            ch, pix = p % c, p // c
            i, j = divmod(pix, size)
            if cache is not None:
                logits = net.step(cache, prev, yb)
                if guided:
                    logits = guided_logits(logits, net.step(cache_u, prev, null), guidance)
            else:
                canvas = from_levels(levels, net.levels)
                logits = net(canvas, yb)[:, ch, :, i, j]
                if guided:
                    logits = guided_logits(logits, net(canvas, null)[:, ch, :, i, j], guidance)
            v = sample_from(filter_logits(logits, temperature, top_k), u[:, p])
            if known is not None:
                fixed = known_mask[:, ch, i, j].to(dev)
                v = torch.where(fixed, to_levels(known[:, ch, i, j].to(dev), net.levels), v)
            levels[:, ch, i, j] = v
            done[:, ch, i, j] = True
            prev = v
            if callback is not None:
                callback({"step": p, "x": from_levels(levels, net.levels), "known": done.clone()})
        return from_levels(levels, net.levels), 2 * d if guided else d
