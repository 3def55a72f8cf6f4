"""Pictures: sample grids, strips of the generation process, loss curves. PNG via Pillow, plots via matplotlib.

The helpers that need only numpy/Pillow/torch live in :mod:`genlab.pictures` (a utility module, so the
evaluation code can use them without importing the report) and are re-exported here."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..pictures import UNKNOWN_RGB, auto_scale, grid, mark_unknown, process_strip, reveal_strip, save_grid, to_uint8

__all__ = ["UNKNOWN_RGB", "auto_scale", "grid", "loss_plot", "mark_unknown", "process_strip", "reveal_strip",
           "save_grid", "to_uint8"]


def loss_plot(metrics_jsonl, path) -> Optional[Path]:
    """Training loss (and validation loss) against step, from a run's metrics.jsonl."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = []
    for line in Path(metrics_jsonl).read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except ValueError:          # a line cut short by a kill
            continue
    tr = [(r["step"], r["loss"]) for r in recs if "loss" in r]
    va = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
    if not tr:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(*zip(*tr), label="train loss", lw=1.2)
    if va:
        ax.plot(*zip(*va), "o-", label="val loss (EMA)", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
