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
import errno
import hashlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import faults

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


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (no space, no permission); its temporary directory is removed and the
    message names the newest intact checkpoint."""


FILES = ("model", "ema", "optimizer")              # the weights files of a training checkpoint
STATE_KEYS = {"config": dict, "step": int, "time_used": (int, float), "data": dict, "rng": dict}
_verified: dict = {}     # file -> (size, mtime, digest) of a file known to match its digest (written or hashed)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _state_digest(state: dict) -> str:
    """SHA-256 of the state's canonical JSON without its own ``check`` entry."""
    body = {k: v for k, v in state.items() if k != "check"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save_checkpoint(path, *, model: dict, ema: Optional[dict] = None, optimizer: Optional[dict] = None,
                    state: dict) -> Path:
    """Write the checkpoint directory ``path`` atomically: files go to a temporary directory, each with its size
    and SHA-256 in state.json (written last, with a digest of itself), which is then renamed into place. A
    failed write removes the temporary directory and raises CheckpointWriteError naming the newest intact
    checkpoint; the checkpoint that was at ``path`` before is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        files = _write(tmp, model=model, ema=ema, optimizer=optimizer, state=state)
        faults.point("ckpt.rename")
        if path.exists():
            os.replace(path, old)
            faults.point("ckpt.swap")           # between the two renames: recover() puts the old one back
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
        for name, rec in files.items():     # just hashed while writing: readers in this process need not again
            st = (path / name).stat()
            _verified[path / name] = (st.st_size, st.st_mtime_ns, rec["sha256"])
    except (OSError, SafetensorError) as e:      # the disk or the file system; anything else is a bug
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)                    # failed between the two renames: put the old one back
        need = tuple(n for n, v in (("model", model), ("ema", ema), ("optimizer", optimizer)) if v is not None)
        good = newest_intact(path.parent, need)
        where = (f"the newest intact checkpoint is {good} (step {read_state(good).get('step')}): fix the cause "
                 "(free disk space, check permissions), then continue from it with --resume" if good else
                 "no intact checkpoint exists yet: fix the cause (free disk space, check permissions) and train again")
        cause = "no space left on the disk" if getattr(e, "errno", None) == errno.ENOSPC or \
            "No space left" in str(e) else f"{type(e).__name__}: {e}"
        raise CheckpointWriteError(f"could not write checkpoint {path} ({cause}); {where}") from None
    except BaseException:           # Ctrl-C during the write: no half-written directory stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write(tmp: Path, *, model, ema, optimizer, state) -> dict:
    """Write the files into ``tmp``; returns their sizes and digests by file name."""
    parts = {"model": _tensors(model)}
    if ema is not None:
        parts["ema"] = _tensors(ema)
    if optimizer is not None:
        parts["optimizer"], meta = optimizer_to_flat(optimizer)
        state = {**state, "optimizer": meta}
    files = {}
    for name, tensors in parts.items():
        f = tmp / f"{name}.safetensors"
        save_file(tensors, str(f))
        _fsync_file(f)           # on disk before state.json marks the checkpoint complete
        files[f.name] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
        faults.point(f"ckpt.{name}")
    state = json.loads(json.dumps({**state, "files": files}))   # as it will read back (string keys, lists)
    state["check"] = _state_digest(state)
    faults.point("ckpt.state")
    with open(tmp / "state.json", "w") as f:  # written last: its presence marks a complete checkpoint
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    return files


def is_checkpoint(path) -> bool:
    """Cheap test that ``path`` looks like a checkpoint directory (state.json and model.safetensors present);
    :func:`verify` says whether it is intact."""
    path = Path(path)
    return (path / "state.json").is_file() and (path / "model.safetensors").is_file()


def _load_state(path: Path) -> dict:
    f = path / "state.json"
    try:
        raw = f.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise CheckpointError("state.json is missing") from None
    # other OSErrors (no permission, I/O error, too many open files) are faults of the environment, not damage:
    # they propagate, so that an older checkpoint is not silently chosen
    if not raw.strip():
        raise CheckpointError("state.json is empty")
    try:
        state = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"state.json is not valid JSON ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointError("state.json does not hold a mapping")
    if "check" in state and state["check"] != _state_digest(state):
        raise CheckpointError("state.json was altered after it was written (its digest does not match)")
    for key, tp in STATE_KEYS.items():
        if key not in state:
            raise CheckpointError(f"state.json lacks {key!r}")
        if not isinstance(state[key], tp) or isinstance(state[key], bool):
            raise CheckpointError(f"state.json has a bad {key!r} ({type(state[key]).__name__})")
    return state


def read_state(path) -> dict:
    """The checked state.json of a checkpoint directory (CheckpointError naming the file otherwise)."""
    path = Path(path)
    try:
        return _load_state(path)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None


def problems(path, need: tuple[str, ...] = FILES) -> list[str]:
    """What is wrong with checkpoint directory ``path`` for a use that needs the weights files ``need``: missing,
    truncated, altered or unreadable files, an incomplete state. Empty when it is intact."""
    path = Path(path)
    if not path.is_dir():
        return [f"{path} is not a directory"]
    try:
        state = _load_state(path)
    except CheckpointError as e:
        return [str(e)]
    out = []
    recorded = state.get("files") if isinstance(state.get("files"), dict) else {}
    for name in need:
        f = path / f"{name}.safetensors"
        if not f.is_file():
            out.append(f"{f.name} is missing")
            continue
        rec = recorded.get(f.name)
        if isinstance(rec, dict):                # written with sizes and digests: compare them
            st = f.stat()
            stamp = (st.st_size, st.st_mtime_ns, rec.get("sha256"))
            if size_ok := st.st_size == rec.get("bytes"):
                if _verified.get(f) == stamp:    # hashed already, unchanged since
                    continue
                if _sha256(f) == rec.get("sha256"):
                    _verified[f] = stamp
                    continue
            out.append(f"{f.name} is damaged (its SHA-256 differs from the one written)" if size_ok else
                       f"{f.name} is {'truncated' if st.st_size < (rec.get('bytes') or 0) else 'longer than written'}"
                       f" ({st.st_size} of {rec.get('bytes')} bytes)")
            continue
        try:                                     # an older checkpoint: the tensors must at least load
            load_file(str(f))
        except MemoryError:
            raise
        except Exception as e:  # safetensors raises its own error types
            out.append(f"{f.name} cannot be read ({str(e).splitlines()[0][:120] or type(e).__name__})")
    if "optimizer" in need and not isinstance(state.get("optimizer"), dict):
        out.append("state.json lacks the optimizer state")
    return out


def verify(path, need: tuple[str, ...] = FILES) -> Path:
    """``path`` if the checkpoint is intact for ``need``, else CheckpointError listing its problems."""
    bad = problems(path, need)
    if bad:
        raise CheckpointError(f"checkpoint {path} is damaged: {'; '.join(bad)}")
    return Path(path)


def load_checkpoint(path, *, weights: tuple[str, ...] = FILES) -> dict:
    """Read a verified checkpoint directory: {'state': dict, 'model': tensors, 'ema': ..., 'optimizer':
    state_dict}, for the weights files named in ``weights`` (each must be present and intact)."""
    path = verify(path, weights)
    out = {"state": _load_state(path), "path": path}
    for name in weights:
        f = path / f"{name}.safetensors"
        try:
            tensors = load_file(str(f))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {f}: {e}") from None
        if name == "optimizer":
            out[name] = optimizer_from_flat(tensors, out["state"]["optimizer"])
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


def step_dirs(ckpt_root) -> list[Path]:
    """Every step_N directory under ckpt_root, intact or not, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def step_checkpoints(ckpt_root) -> list[Path]:
    """Complete-looking step_N checkpoints under ckpt_root, oldest first (:func:`problems` checks them)."""
    return [p for p in step_dirs(ckpt_root) if is_checkpoint(p)]


def newest_intact(ckpt_root, need: tuple[str, ...] = FILES) -> Optional[Path]:
    for p in reversed(step_dirs(ckpt_root)):
        if not problems(p, need):
            return p
    return None


def prune(ckpt_root, keep_last: int) -> None:
    """Keep the newest ``keep_last`` intact step checkpoints (at least one); damaged ones neither count nor are
    removed here (a resumed run overwrites them when it reaches their step)."""
    intact = [p for p in step_dirs(ckpt_root) if not problems(p)]
    for p in intact[:-max(keep_last, 1)]:
        shutil.rmtree(p, ignore_errors=True)


def _warn(msg: str) -> None:
    print(msg, file=sys.stderr)


def resolve_checkpoint(path, which: str = "latest", *, need: tuple[str, ...] = FILES,
                       log: Callable[[str], None] = _warn) -> Path:
    """The checkpoint to use, from a checkpoint directory itself (which must be intact) or a run directory
    (``which``: latest | best): the newest intact one, each damaged one newer than it named through ``log`` and
    skipped; with none intact, one CheckpointError that lists what is wrong with each. ``need``: the weights
    files the caller will read. Read-only: it never changes the directory (a run may be writing it)."""
    path = Path(path)
    if (path / "state.json").exists() or (not (path / "checkpoints").is_dir() and path.is_dir() and (
            STEP_RE.match(path.name) or path.name == "best")):
        return verify(path, need)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; give a run directory (runs/NAME) or a checkpoint directory")
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    cands = list(reversed(step_dirs(root)))
    if which == "best":  # read-only: a save of best/ interrupted between its two renames left it as .best.old-*
        bests = [c for c in [root / "best", *sorted(root.glob(".best.old-*"))] if c.exists()]
        if not bests and not cands:
            raise CheckpointError(f"no best checkpoint under {root}")
        cands = bests + cands
    if not cands:
        raise CheckpointError(f"no checkpoint under {root}; has the run saved one yet?")
    damaged = []
    for c in cands:
        bad = problems(c, need)
        if not bad:
            for d, why in damaged:
                log(f"skipping damaged checkpoint {d}: {'; '.join(why)}")
            if damaged:
                kind = " (not the best by validation loss: that one is damaged)" if which == "best" and \
                    c.name != "best" and not c.name.startswith(".best") else ""
                log(f"using {c}{kind}")
            return c
        damaged.append((c, bad))
    raise CheckpointError(f"no intact checkpoint under {root}: " + "; ".join(
        f"{d.name}: {', '.join(why)}" for d, why in damaged) + ". Train again (--force) or restore the files")


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
