"""Helpers shared by the peer adapters: the training timer, the network-evaluation counter, weights files, the
training cache (``done.json`` beside the weights, the peers' analogue of ``genlab.report.compare.train_or_reuse``)."""
from __future__ import annotations

import json
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from genlab.data import from_model

TRAIN_SEED = 0


@dataclass(frozen=True)
class Variant:
    """One trained system: a family, a name (``diffusers-lr2e-4``), its learning rate (None: genlab's config
    decides) and a few words on the recipe (``published (example defaults)``, ``higher LR``)."""
    family: str
    name: str
    lr: Optional[float]
    recipe: str


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def to_levels(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Model-space images in [-1, 1] -> uint8 levels 0..levels-1 (round and clip), N x C x H x W."""
    return from_model(x.float().cpu(), levels)


class CallCounter:
    """Counts the forward calls of a network (a forward pre-hook): network evaluations of a peer's sampler."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1

    def close(self):
        self.handle.remove()


def timed_training(step_fn, budget_s: float) -> dict:
    """Call ``step_fn(step, fraction_of_budget_used) -> loss`` until the summed wall clock of the steps reaches
    the budget (as genlab's loop does: the step that crosses the budget is the last). Only the steps are timed."""
    used, step, losses = 0.0, 0, []
    while used < budget_s:
        t0 = time.perf_counter()
        loss = step_fn(step, used / budget_s)
        used += time.perf_counter() - t0
        step += 1
        losses.append(loss)
        if not math.isfinite(loss):
            raise RuntimeError(f"the loss became {loss} at step {step}; lower the learning rate")
    tail = losses[-min(50, len(losses)):]
    return {"steps": step, "time_used": used, "final_loss": sum(tail) / len(tail)}


def save_tensors(state: dict, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


WEIGHTS = ("model.safetensors", "ema.safetensors")


def signature(peer, variant: Variant, budget_s: float) -> dict:
    """What a peer's training depends on: the variant, the budget and the peer's description (network size,
    batch, image shape, recipe)."""
    sig = {"variant": asdict(variant), "budget_s": budget_s, "seed": TRAIN_SEED, "peer": peer.describe()}
    return json.loads(json.dumps(sig))       # as done.json reads back (tuples become lists)


def cached_record(out_dir: Path, sig: dict) -> Optional[dict]:
    """The record of a finished training in ``out_dir`` with this signature (its done.json), else None."""
    try:
        d = json.loads((Path(out_dir) / "done.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict) or d.get("signature") != sig or not all((Path(out_dir) / w).is_file() for w in WEIGHTS):
        return None
    return d.get("record")


def train_or_reuse_peer(peer, variant: Variant, budget_s: float, out_dir: Path,
                        data: torch.Tensor) -> tuple[dict, bool]:
    """(record, trained): the cached record of ``out_dir`` when it finished with the same signature, else
    ``peer.train(...)``'s record (plus a fresh ``train_id``) written to ``out_dir/done.json``. A peer's training is
    not resumable (its optimizer and EMA state are not saved): an interrupted one starts over."""
    out_dir = Path(out_dir)
    sig = signature(peer, variant, budget_s)
    rec = cached_record(out_dir, sig)
    if rec is not None:
        return rec, False
    (out_dir / "done.json").unlink(missing_ok=True)
    rec = {**peer.train(variant, budget_s, out_dir, data), "train_id": uuid.uuid4().hex[:12]}
    tmp = out_dir / ".done.json.tmp"
    tmp.write_text(json.dumps({"signature": sig, "record": rec}, indent=1))
    os.replace(tmp, out_dir / "done.json")
    return rec, True
