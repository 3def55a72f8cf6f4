"""Raster autoregression: p(x) = prod_i p(x_i | x_<i) over sub-pixels in raster order (rows, then columns, then
channels within a pixel), each a categorical over the dataset's levels (PixelRNN/PixelCNN, van den Oord et al.
2016, eq. 1-2). The likelihood is exact: one network evaluation gives every conditional at once (teacher forcing),
so bits/dim is computed in one pass. Sampling needs one evaluation per sub-pixel (C * H * W); the transformer
backbone makes each of them cheap with a key/value cache, the PixelCNN re-runs the whole network.

Backbones (``ar.backbone``): ``pixelcnn`` (:class:`genlab.nn.pixelcnn.GatedPixelCNN`) and ``transformer``
(:class:`genlab.nn.transformer.PixelTransformer`).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ..config import Config
from ..diffusion.guidance import guided_logits
from .categorical import (square_shape, PerSampleUniform, TeacherForced, check_sample_options, filter_logits, from_levels,
                          known_pixels, labels_or_none, sample_from, to_levels, unwrap)

BACKBONES = ("pixelcnn", "transformer")


class AutoregressiveMethod(TeacherForced):
    name = "autoregressive"
    sample_options = ("temperature", "top_k", "use_cache", "known", "known_mask", "guidance")

    def __init__(self, cfg: Config):
        self.cfg = cfg

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

    @torch.no_grad()
    def sample(self, model, n: int, *, y: Optional[torch.Tensor] = None, seed: int = 0, batch_size: int = 256,
               callback: Optional[Callable] = None, device=None, progress: bool = False,
               **opts) -> tuple[torch.Tensor, int]:
        """n images drawn sub-pixel by sub-pixel in raster order; returns (images, evaluations per sample = C*H*W).

        Options: temperature (> 0; < 1 sharpens), top_k (0 = all levels), use_cache (transformer only: False
        re-runs the full network for every sub-pixel, as a PixelCNN must), and ``known`` (N, C, H, W) model-space
        images with ``known_mask`` (N, C, H, W) bool: those sub-pixels are kept instead of drawn. Raster AR can
        only condition on known pixels that come before a position (any_order conditions on all of them)."""
        check_sample_options(self.name, self.sample_options, opts)
        s = self.cfg.sample
        temperature = opts.get("temperature", s.temperature)
        top_k = opts.get("top_k", s.top_k)
        use_cache = opts.get("use_cache", True)
        net = unwrap(model)
        dev = device or next(net.parameters()).device
        was_training = net.training
        net.eval()
        c, size = net.in_channels, net.image_size
        d = c * size * size
        known_x, known_mask = known_pixels(opts, n, (c, size, size))
        guidance = opts.get("guidance")
        guided = guidance is not None and float(guidance) != 1.0
        if guided and (not net.conditional or y is None):
            raise ValueError("classifier-free guidance needs a class- or text-conditional model (model.class_cond or "
                             "model.text_cond, trained with diffusion.cond_drop > 0) and labels or a prompt")
        out = []
        starts = range(0, n, batch_size)
        if progress:
            from tqdm import tqdm
            starts = tqdm(starts, desc=f"sampling {self.cfg.ar.backbone}", unit="batch", leave=False)
        for b0 in starts:
            b = min(batch_size, n - b0)
            u = PerSampleUniform(range(seed + b0, seed + b0 + b)).rand(d, device=dev)
            yb = None if y is None else labels_or_none(net, y[b0:b0 + b].to(dev))
            levels = torch.zeros(b, c, size, size, dtype=torch.long, device=dev)
            known = torch.zeros(b, c, size, size, dtype=torch.bool, device=dev)
            cache = net.new_cache(b, dev) if use_cache and hasattr(net, "step") else None
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
                if known_x is not None:
                    fixed = known_mask[b0:b0 + b, ch, i, j].to(dev)
                    v = torch.where(fixed, to_levels(known_x[b0:b0 + b, ch, i, j].to(dev), net.levels), v)
                levels[:, ch, i, j] = v
                known[:, ch, i, j] = True
                prev = v
                if callback is not None and b0 == 0:
                    callback({"step": p, "x": from_levels(levels, net.levels), "known": known.clone()})
            out.append(from_levels(levels, net.levels).cpu())
        net.train(was_training)
        return torch.cat(out), 2 * d if guided else d
