"""Test-set likelihood in bits/dim for every method, on the same discrete levels.

Each method defines ``log_likelihood(model, x, y, **kw) -> bits/dim per image``: exact for raster
autoregression and the one-shot baseline, an unbiased estimate of the order-averaged likelihood for any-order
autoregression, and the variational bound (DDPM eq. 5, discretized decoder) for diffusion.
"""
from __future__ import annotations

import math
import time

import torch

from ..methods.categorical import training_condition


def per_image_bits_per_dim(method, model, dataset, *, batch_size: int = 256, **kw) -> tuple[torch.Tensor, float]:
    """Bits/dim of every image of a dataset under a model, (N,) float64 on the CPU in the dataset's order, and
    the seconds it took: ``method.log_likelihood`` per batch (exact for raster AR and one-shot, an unbiased
    estimate for any-order AR, the variational bound for diffusion; stochastic ones draw fresh randomness for
    every batch, from ``seed`` + the batch's first index). What an out-of-distribution score needs."""
    dev = next(model.parameters()).device
    t0 = time.perf_counter()
    vals = []
    was_training = model.training
    model.eval()                                   # no dropout in a likelihood
    seed = kw.pop("seed", 0)
    for b0 in range(0, len(dataset), batch_size):
        idx = torch.arange(b0, min(b0 + batch_size, len(dataset)))
        b = dataset.batch(idx)
        y = training_condition(model, b, None, 0.0)      # labels, or a text model's captions as tokens
        # stochastic estimates (any-order, the diffusion bound) draw fresh randomness for every batch
        vals.append(method.log_likelihood(model, b["x"].to(dev), None if y is None else y.to(dev),
                                          seed=seed + b0, **kw).cpu())
    model.train(was_training)
    return torch.cat(vals).double(), time.perf_counter() - t0


def bits_per_dim(method, model, dataset, *, batch_size: int = 256, **kw) -> dict:
    """Test bits/dim of a model on a dataset (``method.log_likelihood``: exact for raster AR and one-shot, an
    unbiased estimate for any-order AR, the variational bound for diffusion), with its standard error over
    images and the seconds it took (per image: :func:`per_image_bits_per_dim`)."""
    v, seconds = per_image_bits_per_dim(method, model, dataset, batch_size=batch_size, **kw)
    return {"bpd": float(v.mean()), "bpd_sem": float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0,
            "n": len(v), "seconds": seconds}
