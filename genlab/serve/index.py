"""What the web app knows of a runs directory, read from the files training writes and never from a loaded model:
``config.yaml``, ``metrics.jsonl``, ``status.json`` (the loop's heartbeat), ``checkpoints/*/state.json``, the
sample grids ``samples/step_N.png`` and ``samples.png``, and compare reports (``index.html`` beside
``results.json``). Every reader tolerates a run that is half written or damaged: it becomes an error card with
the reason, never an exception.
"""
from __future__ import annotations

import json
import math
import os
import re
import socket
import time
from pathlib import Path
from typing import Optional

import yaml

STATUS_STALE_S = 600          # a status from another host counts as alive while its heartbeat is this recent
GRID = re.compile(r"step_(\d+)\.png$")


def finite(obj):
    """``obj`` with every non-finite float (inf, nan: an FID ratio over a zero floor, a diverged loss) as None, so
    that it is valid JSON for the page."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


def _read_json(path: Path):
    return finite(json.loads(path.read_text()))


def read_metrics(run_dir: Path, since: int = 0) -> tuple[list[dict], int]:
    """(the records of metrics.jsonl from its line ``since`` on, the number of complete lines): damaged lines
    (cut by a kill) are skipped, a last line still being written is left for the next read, so that a page that
    follows a training asks for ``since`` = the count it got and misses nothing (validation and FID records come
    after the training record of their step)."""
    p = run_dir / "metrics.jsonl"
    out = []
    try:
        text = p.read_text(errors="replace")
    except OSError:
        return out, since
    lines = text.split("\n")
    complete = lines[:-1]                     # the last element is "" or a line still being written
    for line in complete[since:]:
        try:
            rec = finite(json.loads(line))
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            out.append(rec)
    return out, len(complete)


def _alive(st: dict) -> bool:
    """Whether the process that wrote a running status still exists (same host: its pid; else the heartbeat)."""
    if st.get("host") == socket.gethostname() and isinstance(st.get("pid"), int):
        try:
            os.kill(st["pid"], 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return time.time() - float(st.get("heartbeat", 0)) < STATUS_STALE_S


def run_status(run_dir: Path) -> str:
    """running | done | interrupted | diverged | unknown (a run older than status files: done when it has a
    final sample grid, else unknown)."""
    p = run_dir / "status.json"
    try:
        st = _read_json(p)
    except (OSError, ValueError):
        return "done" if (run_dir / "samples.png").exists() else "unknown"
    s = st.get("status")
    if s == "running":
        return "running" if _alive(st) else "interrupted"
    return s if s in ("done", "interrupted", "diverged") else "unknown"


def checkpoints(run_dir: Path) -> list[dict]:
    """Every checkpoint directory with its step and training time (from its state.json; damaged: an error)."""
    out = []
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            st = _read_json(d / "state.json")
            out.append({"name": d.name, "step": st.get("step"), "time_used": st.get("time_used")})
        except (OSError, ValueError) as e:
            out.append({"name": d.name, "error": f"state.json unreadable: {type(e).__name__}"})
    return out


def grids(run_dir: Path) -> list[dict]:
    """The sample grids written during training (step order), then the final one."""
    out = []
    d = run_dir / "samples"
    if d.is_dir():
        for p in sorted(d.iterdir()):
            m = GRID.search(p.name)
            if m:
                out.append({"step": int(m.group(1)), "path": f"samples/{p.name}"})
    if (run_dir / "samples.png").is_file():
        out.append({"step": None, "path": "samples.png", "final": True})
    return out


def summary(run_dir: Path, root: Path) -> dict:
    """One row of the runs list (or an error card): name, method, data, steps, training time, best validation
    loss, latest FID, status."""
    name = run_dir.relative_to(root).as_posix()
    row = {"name": name, "kind": "run"}
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        if not isinstance(cfg, dict):
            raise ValueError("config.yaml is not a mapping")
    except (OSError, ValueError, yaml.YAMLError) as e:
        return {**row, "error": f"config.yaml cannot be read ({type(e).__name__}: {str(e)[:120]})"}
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    metrics, _ = read_metrics(run_dir)
    losses = [r for r in metrics if "loss" in r]
    vals = [r["val_loss"] for r in metrics if isinstance(r.get("val_loss"), (int, float))]
    fids = [r for r in metrics if isinstance(r.get("fid_train"), (int, float))]
    st = {}
    try:
        st = _read_json(run_dir / "status.json")
    except (OSError, ValueError):
        pass
    cond = "text" if model.get("text_cond") else "class" if model.get("class_cond") else ""
    row.update({"method": cfg.get("method"), "data": data.get("name"), "condition": cond,
                "steps": st.get("step", losses[-1]["step"] if losses else 0),
                "time_used": st.get("time_used", losses[-1].get("time_used") if losses else 0.0),
                "best_val_loss": min(vals) if vals else None, "latest_fid": fids[-1]["fid_train"] if fids else None,
                "status": run_status(run_dir), "checkpoints": len(checkpoints(run_dir))})
    return row


def report_summary(d: Path, root: Path) -> dict:
    """A compare report's row: its title and methods (from results.json)."""
    row = {"name": d.relative_to(root).as_posix(), "kind": "report"}
    try:
        res = _read_json(d / "results.json")
        spec = res.get("_spec", {}) if isinstance(res, dict) else {}
        row.update({"data": spec.get("data"), "budget": spec.get("budget"),
                    "methods": [k for k in (spec.get("order") or []) if k in res]})
    except (OSError, ValueError, AttributeError) as e:
        row["error"] = f"results.json cannot be read ({type(e).__name__})"
    return row


def scan(root: Path, depth: int = 3) -> list[dict]:
    """Runs (directories with config.yaml) and compare reports (index.html + results.json) under ``root``, down
    to ``depth`` levels (a report's own runs/ included), without following symbolic links."""
    out = []

    def walk(d: Path, level: int):
        try:
            entries = sorted(p for p in d.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
        except OSError:
            return
        for p in entries:
            if p.name in ("checkpoints", "samples", "img", "grids"):
                continue
            if (p / "config.yaml").exists():
                out.append(summary(p, root))
            elif (p / "index.html").exists() and (p / "results.json").exists():
                out.append(report_summary(p, root))
            if level < depth:
                walk(p, level + 1)
    walk(root, 1)
    return out


def run_detail(run_dir: Path, root: Path) -> dict:
    """Everything the run page shows: the summary, the config text, the metric records, grids, checkpoints."""
    row = summary(run_dir, root)
    try:
        row["config_text"] = (run_dir / "config.yaml").read_text()
    except OSError:
        row["config_text"] = ""
    metrics, lines = read_metrics(run_dir)
    row.update({"metrics": metrics, "lines": lines, "grids": grids(run_dir), "checkpoint_list": checkpoints(run_dir)})
    return row


def find_dir(root: Path, name: str) -> Optional[Path]:
    """``root/name`` when it is a directory inside ``root`` after resolving links, else None (``..``, absolute
    paths and links that leave the root are refused)."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        return None
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    p = (root / name)
    try:
        r = p.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not r.is_dir() or not r.is_relative_to(root.resolve()):
        return None
    return r
