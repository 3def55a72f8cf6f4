"""Peer adapters: other libraries' diffusion models, trained with their own published recipes and sampled with
their own samplers, behind one small interface so a benchmark treats every peer alike.

A peer adapter is a class with a ``family`` name and

``Peer(batch_size=128, shape=(C, H, W), levels=L, ...)``
    the training batch, the data's image shape and number of levels (8x8 digits with 17 levels by default; B3
    uses 28x28 with 256), plus the network's size arguments.
``peer.variants() -> list[Variant]``
    the trainings a benchmark runs by default: the published learning rate and one higher one.
``peer.describe() -> dict``
    ``params``, ``batch_size``, ``shape`` and ``details`` (the recipe in words); part of the training signature.
``peer.network() -> nn.Module``
    a fresh denoiser, callable as ``net(x, t)`` (what a time estimate measures).
``peer.train(variant, budget_s, out_dir, data) -> record``
    trains from scratch on ``data`` (model space [-1, 1], N x C x H x W, on the CPU) until its steps have used
    ``budget_s`` seconds of wall clock (:func:`common.timed_training`: only the steps are timed), writes
    ``out_dir/model.safetensors`` (raw weights) and ``out_dir/ema.safetensors``, and returns a JSON-able record
    with at least ``steps``, ``images``, ``time_used``, ``final_loss`` and ``weights`` (= ``out_dir``).
``peer.sampler(record) -> sampler``
    whose ``sample(n, sampler, steps, seed, use_ema, batch_size)`` returns ``(levels, nfe, label)``: uint8
    levels N x C x H x W, network evaluations per sample (counted with a forward hook,
    :class:`common.CallCounter`) and a label naming the peer's own sampler; ``sampler`` is ``ddim`` or ``ddpm``.

:func:`common.train_or_reuse_peer` wraps ``train`` with a cache: ``out_dir/done.json`` holds the training's
signature (variant, budget, :meth:`describe`) and record, and a training with the same signature is reused.

Each adapter uses its library's own model, scheduler, optimizer and EMA classes (that is the point of a peer:
its recipe, not genlab's); only the data order (``genlab.train.loop.data_indices``), the timer and the output
levels are shared with genlab, so every system sees the same batches and is measured alike.
"""
from __future__ import annotations

from .common import Variant, train_or_reuse_peer  # noqa: F401

import importlib.util

FAMILIES = ("diffusers", "ddpm-pytorch")
MODULES = {"diffusers": "diffusers", "ddpm-pytorch": "denoising_diffusion_pytorch"}   # what each adapter imports


def missing_library(family: str):
    """None when the peer's library can be imported here, else one sentence naming it and the fix."""
    mod = MODULES[family]
    if importlib.util.find_spec(mod) is not None:
        return None
    return (f"peer {family}: its library ({mod}) is not installed in this Python ({__import__('sys').executable}); "
            "run `make bench-env` and use .venv-bench/bin/python, or leave it out with --systems genlab")


def get_peer(family: str, **kw):
    """A peer adapter by family name (its library is imported only when it is used)."""
    if family == "diffusers":
        from .diffusers_peer import DiffusersPeer

        return DiffusersPeer(**kw)
    if family == "ddpm-pytorch":
        from .ddpm_pytorch_peer import DdpmPytorchPeer

        return DdpmPytorchPeer(**kw)
    raise ValueError(f"unknown peer {family!r}; choose from {', '.join(FAMILIES)}")
