"""Checkpoints: a directory of safetensors files plus a JSON state, written atomically; loading runs no code.

    step_000500/
      model.safetensors      raw weights
      ema.safetensors        EMA weights (used for sampling by default)
      optimizer.safetensors  optimizer tensors; the rest of the optimizer state is in state.json
      state.json             config, step, time used, RNG states, data position, metrics, data shape

A checkpoint is written to a hidden temporary directory and renamed into place, so an interrupted save never
damages the checkpoint that was there before; incomplete directories are ignored and cleaned up.
"""
from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STEP_RE = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match the configuration."""


# ------------------------------------------------------------------------------------------------ state pieces

def _tensors(state_dict: dict) -> dict:
    return {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}


def optimizer_to_flat(sd: dict) -> tuple[dict, dict]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON-able metadata."""
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        meta["state"][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().to("cpu").contiguous()
                meta["state"][str(idx)][k] = "__tensor__"
            else:
                meta["state"][str(idx)][k] = v
    return tensors, meta


def optimizer_from_flat(tensors: dict, meta: dict) -> dict:
    state = {}
    for idx, st in meta["state"].items():
        state[int(idx)] = {k: (tensors[f"{idx}.{k}"] if v == "__tensor__" else v) for k, v in st.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state(device=None) -> dict:
    """The global RNG states (python, numpy, torch CPU, and the CUDA device in use), as JSON (base64 bytes)."""
    b64 = lambda t: base64.b64encode(t.numpy().tobytes()).decode()  # noqa: E731
    np_state = np.random.get_state()
    st = {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
          "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
          "torch": b64(torch.get_rng_state())}
    if device is not None and torch.device(device).type == "cuda":
        st["cuda"] = b64(torch.cuda.get_rng_state(device))
    return st


def set_rng_state(st: dict) -> None:
    unb64 = lambda s: torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)  # noqa: E731
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = st["numpy"]
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(unb64(st["torch"]))
    if isinstance(st.get("cuda"), str) and torch.cuda.is_available():
        torch.cuda.set_rng_state(unb64(st["cuda"]), torch.cuda.current_device())


# ------------------------------------------------------------------------------------------------ save / load

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(path, *, model: dict, ema: Optional[dict] = None, optimizer: Optional[dict] = None,
                    state: dict) -> Path:
    """Write the checkpoint directory ``path`` atomically (temp directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = dict(state)
    save_file(_tensors(model), str(tmp / "model.safetensors"))
    if ema is not None:
        save_file(_tensors(ema), str(tmp / "ema.safetensors"))
    if optimizer is not None:
        tensors, meta = optimizer_to_flat(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state["optimizer"] = meta
    for f in tmp.glob("*.safetensors"):  # on disk before state.json marks the checkpoint complete
        _fsync_file(f)
    with open(tmp / "state.json", "w") as f:  # written last: its presence marks a complete checkpoint
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def is_checkpoint(path) -> bool:
    path = Path(path)
    return (path / "state.json").is_file() and (path / "model.safetensors").is_file()


def read_state(path) -> dict:
    path = Path(path)
    try:
        return json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path / 'state.json'}: {e}") from None


def load_checkpoint(path, *, weights: tuple[str, ...] = ("model", "ema", "optimizer")) -> dict:
    """Read a checkpoint directory: {'state': dict, 'model': tensors, 'ema': ..., 'optimizer': state_dict}."""
    path = Path(path)
    if not is_checkpoint(path):
        raise CheckpointError(f"{path} is not a complete genlab checkpoint (needs state.json and model.safetensors)")
    out = {"state": read_state(path), "path": path}
    for name in weights:
        f = path / f"{name}.safetensors"
        if not f.exists():
            continue
        try:
            tensors = load_file(str(f))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {f}: {e}") from None
        if name == "optimizer":
            out[name] = optimizer_from_flat(tensors, out["state"].get("optimizer", {"state": {}, "param_groups": []}))
        else:
            out[name] = tensors
    return out


def recover(ckpt_root: Path) -> None:
    """Undo what an interrupted save can leave: a renamed-away old directory whose replacement never arrived,
    and stale temporary directories."""
    if not ckpt_root.is_dir():
        return
    for old in ckpt_root.glob(".*.old-*"):
        name = old.name[1:].split(".old-")[0]
        if not (ckpt_root / name).exists() and is_checkpoint(old):
            os.replace(old, ckpt_root / name)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in ckpt_root.glob(".*.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def step_checkpoints(ckpt_root) -> list[Path]:
    """Complete step_N checkpoints under ckpt_root, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and is_checkpoint(p)]
    return [p for _, p in sorted(found)]


def prune(ckpt_root, keep_last: int) -> None:
    ckpts = step_checkpoints(ckpt_root)
    for p in ckpts[:-keep_last] if keep_last > 0 else ckpts[:-1]:
        shutil.rmtree(p, ignore_errors=True)


def resolve_checkpoint(path, which: str = "latest") -> Path:
    """A checkpoint directory from a checkpoint directory itself or a run directory (``which``: latest | best).
    Read-only: it never changes the directory (a run may be writing it)."""
    path = Path(path)
    if is_checkpoint(path):
        return path
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; give a run directory (runs/NAME) or a checkpoint directory")
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if which == "best":  # read-only: a save of best/ interrupted between its two renames left it as .best.old-*
        for cand in [root / "best", *sorted(root.glob(".best.old-*"))]:
            if is_checkpoint(cand):
                return cand
    ckpts = step_checkpoints(root)
    if which == "best" and not ckpts:
        raise CheckpointError(f"no best checkpoint under {root}")
    if not ckpts:
        raise CheckpointError(f"no complete checkpoint under {root}; has the run saved one yet?")
    return ckpts[-1]


def load_weights(module: torch.nn.Module, tensors: dict, what: str) -> None:
    """load_state_dict with an error that names the mismatched parameters instead of a stack of shapes."""
    own = module.state_dict()
    missing = [k for k in own if k not in tensors]
    extra = [k for k in tensors if k not in own]
    shapes = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or extra or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch for " + "; ".join(shapes[:3]) + (" ..." if len(shapes) > 3 else ""))
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
        if extra:
            parts.append(f"unexpected {len(extra)} tensors (e.g. {extra[0]})")
        raise CheckpointError(f"{what} does not match the model built from the config: " + ", ".join(parts)
                              + ". Were model.* settings changed since it was saved?")
    module.load_state_dict(tensors)
