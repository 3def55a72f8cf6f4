"""Short tuning runs of a recipe: a grid of overrides, each trained for the same short budget and scored by FID,
so that a recipe's header can say what was tried and what won.

Every combination of the ``--grid`` axes is trained (compare's ``train_or_reuse``: reused when finished with the
same config, resumed when interrupted) for ``--budget`` of training steps, then ``--n`` samples with the recipe's
own sampling settings are scored with the in-repo feature network (FID against the train split, precision,
recall). The table (``OUT/README.md``, ``OUT/results.json``) lists every combination, best first.

    OMP_NUM_THREADS=2 .venv-bench/bin/python benchmarks/tune_recipe.py --config mnist_ddpm --budget 3m \\
        --grid model.width=16,24,32 train.batch_size=32,64,128 --set data.root=../shared/data/mnist

``--score val`` ranks by the runs' best validation loss instead and draws no samples: for the likelihood
recipes (PixelCNN, transformer, any-order, one-shot) that loss is validation bits/dim, the number B3 targets.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/tune_recipe.py --config mnist_pixelcnn --budget 10m --score val \
        --grid train.lr=1e-3,2e-3 --set data.root=../shared/data/mnist

Short budgets rank settings for short budgets: a winner at 3 minutes is a candidate for 10, to be confirmed
at 10 (``--budget 10m --grid ...`` with the two best).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import jsonable, log  # noqa: E402


def combos(grid: list[str]) -> list[list[str]]:
    """``["a.b=1,2", "c.d=x,y"]`` -> every combination as override lists."""
    axes = []
    for g in grid:
        key, _, values = g.partition("=")
        if not key or not values:
            raise SystemExit(f"--grid {g!r}: write section.key=v1,v2,...")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(c) for c in itertools.product(*axes)] if axes else [[]]


def slug(over: list[str]) -> str:
    return "_".join(o.split(".", 1)[-1].replace("=", "") for o in over).replace("/", "-") or "default"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--budget", default="3m")
    ap.add_argument("--grid", nargs="*", default=[])
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every run (data.root=...)")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--score", choices=("fid", "val"), default="fid",
                    help="fid: FID of --n samples vs train; val: the run's best validation loss (bits/dim for "
                         "likelihood models), no sampling")
    a = ap.parse_args(argv)
    import torch

    import genlab.api
    from genlab.data import from_model
    from genlab.eval.evaluate import evaluate_samples
    from genlab.files import write_text_atomic
    from genlab.report.compare import train_or_reuse
    from genlab.train import checkpoint as ck

    torch.set_num_threads(a.threads)
    out = Path(a.out or REPO / "bench_out" / f"tune_{a.config}_{a.budget}" + ("_val" if a.score == "val" else ""))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    from genlab.eval.features import load_featnet
    from genlab.runs import resolve_config

    base = resolve_config(a.config, list(a.set))
    if a.score == "fid":
        load_featnet(base.data.name, root=base.data.root)   # fail before training, not after the first run
    for over in combos(a.grid):
        name = slug(over)
        full = [*a.set, *over, f"train.time_budget={a.budget}", f"train.num_threads={a.threads}"]
        t = train_or_reuse(name, a.config, full, out / "runs", progress=False, budget_label=a.budget,
                           log_prefix="[tune]")
        state = ck.read_state(ck.resolve_checkpoint(t.run_dir))
        tid = f"{state['step']}:{state['time_used']:.6f}"
        if a.score == "val":
            if state.get("best_val") is None:
                raise SystemExit(f"{name}: the run has no validation loss (no validation split?); use --score fid")
            results[name] = {"overrides": over, "train_id": tid, "steps": state["step"],
                             "images": state["samples_seen"], "val": state["best_val"]}
            write_text_atomic(path, json.dumps(jsonable(results), indent=1))
            log(f"  {name}: best validation loss {state['best_val']:.4f} ({state['step']} steps, "
                f"{state['samples_seen']:,} images)")
            continue
        if results.get(name, {}).get("train_id") == tid and results[name].get("n") == a.n:
            continue
        t0 = time.perf_counter()
        x, nfe, _ = genlab.api.sample(t.run_dir, n=a.n, seed=0, batch_size=250, device="cpu", progress=False)
        secs = time.perf_counter() - t0
        cfg = t.config
        ev = evaluate_samples(from_model(x, state["data"]["levels"]).numpy(), cfg.data.name, root=cfg.data.root)
        results[name] = {"overrides": over, "train_id": tid, "n": a.n, "steps": state["step"],
                         "images": state["samples_seen"], "fid": ev["fid_train"], "precision": ev["precision"],
                         "recall": ev["recall"], "nfe": nfe, "sample_s": secs}
        write_text_atomic(path, json.dumps(jsonable(results), indent=1))
        log(f"  {name}: FID {ev['fid_train']:.2f} ({state['step']} steps, {state['samples_seen']:,} images)")
    if a.score == "val":
        rows = sorted(results.values(), key=lambda r: r["val"])
        md = [f"# {a.config}: {a.budget} of training per setting, best validation loss (EMA weights)\n",
              "| overrides | steps | images seen | validation loss |", "|---|---:|---:|---:|"]
        md += [f"| {' '.join(r['overrides']) or '(recipe)'} | {r['steps']} | {r['images']:,} | {r['val']:.4f} |"
               for r in rows]
        (out / "README.md").write_text("\n".join(md) + "\n")
        log("\n".join(md))
        return
    rows = sorted(results.values(), key=lambda r: r["fid"])
    md = [f"# {a.config}: {a.budget} of training per setting, FID of {a.n} samples (vs train)\n",
          "| overrides | steps | images seen | FID | precision | recall |", "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {' '.join(r['overrides']) or '(recipe)'} | {r['steps']} | {r['images']:,} | {r['fid']:.2f} | "
           f"{r['precision']:.3f} | {r['recall']:.3f} |" for r in rows]
    (out / "README.md").write_text("\n".join(md) + "\n")
    log("\n".join(md))


if __name__ == "__main__":
    main()
