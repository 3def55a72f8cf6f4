""""Diffusion beats GANs", measured: GAN and diffusion trained with 3 training seeds each at one budget, under one
harness (issue 14; protocol in benchmarks/README.md).

For each family (the ``digits_gan`` / ``digits_ddpm`` recipes on digits, 300 s; ``mnist_gan`` / ``mnist_ddpm`` on
MNIST, 30 minutes) and each training seed (``train.seed`` = 0, 1, 2), the run is trained (or reused, or resumed:
compare's ``train_or_reuse``, as every benchmark's runner does), then ``--n`` samples (diffusion: DPM-Solver++(2M),
20 evaluations; the GAN: 1) are scored with the in-repo feature network: FID against the train split, precision
and recall (Kynkaanniemi et al. 2019: recall is the mode coverage), the entropy of the feature network's class
histogram of the samples (ln 10 = 2.303 when the 10 classes are equally frequent).

The automatic criterion of a failed run, stated before any run: a run **diverged** when its loss became
non-finite (the loop stops it: TrainingDiverged); it **collapsed** when its samples' class-histogram entropy is
below 0.7 ln 10 = 1.61 (fewer than about 5 equally used classes) or their recall is below 0.1. The table gives
per family the mean and standard deviation over training seeds of every metric, and the fraction of runs that
diverged or collapsed; the loss curves of every run are plotted (the GAN's discriminator and generator losses,
diffusion's training loss) against training time.

    OMP_NUM_THREADS=2 .venv-bench/bin/python benchmarks/gan_vs_diffusion.py --data digits          # ~35 min
    OMP_NUM_THREADS=2 .venv-bench/bin/python benchmarks/gan_vs_diffusion.py --data mnist --family gan
    OMP_NUM_THREADS=2 .venv-bench/bin/python benchmarks/gan_vs_diffusion.py --data mnist --family diffusion
    .venv-bench/bin/python benchmarks/gan_vs_diffusion.py --data digits --smoke --out /tmp/gvd      # pipeline check

Resumable: rerun the same command; finished runs and their evaluations (``OUT/results.json``) are reused. The
MNIST study (6 x 30 min of training) runs in two parts of about 100 minutes each (``--family``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import jsonable, log  # noqa: E402

RECIPES = {"digits": {"gan": "digits_gan", "diffusion": "digits_ddpm"},
           "mnist": {"gan": "mnist_gan", "diffusion": "mnist_ddpm"}}
BUDGETS = {"digits": "300s", "mnist": "30m"}
SAMPLING = {"gan": {}, "diffusion": {"sampler": "dpmpp-2m", "steps": 20}}
COLLAPSE_ENTROPY = 0.7 * math.log(10)
COLLAPSE_RECALL = 0.1
METRICS = ("fid_train", "precision", "recall", "entropy")


def failed(ev: dict) -> str:
    """'' for a healthy run, else why it failed by the criterion of the module docstring."""
    if ev.get("diverged"):
        return "diverged"
    if ev["entropy"] < COLLAPSE_ENTROPY or ev["recall"] < COLLAPSE_RECALL:
        return "collapsed"
    return ""


def curves(run_dir: Path) -> dict:
    """time -> loss (and the GAN's g_loss) from a run's metrics.jsonl."""
    out = {"time": [], "loss": [], "g_loss": []}
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "loss" in r:
            out["time"].append(r["time_used"])
            out["loss"].append(r["loss"])
            out["g_loss"].append(r.get("g_loss"))
    return out


class Study:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out or REPO / "bench_out" / f"gan_vs_diffusion_{args.data}")
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "results.json"
        self.results = json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self):
        from genlab.files import write_text_atomic

        write_text_atomic(self.path, json.dumps(jsonable(self.results), indent=1))

    def overrides(self, family: str, seed: int) -> list:
        a = self.args
        over = [f"train.seed={seed}", f"train.time_budget={BUDGETS[a.data]}", f"train.num_threads={a.threads}"]
        if a.data == "mnist":
            over.append(f"data.root={a.mnist}")
        if a.smoke:
            over += ["train.time_budget=null", "train.max_steps=20", "model.width=8"]
        return over

    def run(self, family: str, seed: int) -> dict:
        from genlab.report.compare import train_or_reuse
        from genlab.train import checkpoint as ck
        from genlab.train.loop import TrainingDiverged

        a = self.args
        name = f"{family}-seed{seed}"
        rec = self.results.get(name, {})
        try:
            t = train_or_reuse(name, RECIPES[a.data][family], self.overrides(family, seed), self.out / "runs",
                               progress=False, budget_label=BUDGETS[a.data], log_prefix="[gan-vs-diffusion]")
        except TrainingDiverged as e:
            rec = self.results[name] = {"name": name, "family": family, "seed": seed, "diverged": True,
                                        "why": str(e), "curves": curves(self.out / "runs" / name)}
            self.save()
            log(f"  {name}: diverged ({e})")
            return rec
        state = ck.read_state(ck.resolve_checkpoint(t.run_dir))
        train_id = f"{state['step']}:{state['time_used']:.6f}"
        if rec.get("train_id") == train_id and rec.get("n") == a.n:
            return rec
        import genlab.api
        from genlab.eval.evaluate import evaluate_samples

        t0 = time.perf_counter()
        x, nfe, _ = genlab.api.sample(t.run_dir, n=a.n, seed=0, batch_size=250, device="cpu", progress=False,
                                      **SAMPLING[family])
        secs = time.perf_counter() - t0
        levels = state["data"]["levels"]
        from genlab.data import from_model

        ev = evaluate_samples(from_model(x, levels).numpy(), a.data, root=a.mnist if a.data == "mnist" else None)
        from genlab.report.images import save_grid

        save_grid(x[:64], self.out / "grids" / f"{name}.png", nrow=8)
        rec = self.results[name] = {
            "name": name, "family": family, "seed": seed, "train_id": train_id, "n": a.n, "steps": state["step"],
            "time_used": state["time_used"], "nfe": nfe, "seconds_per_1000": 1000 * secs / a.n, "diverged": False,
            **{k: ev[k] for k in METRICS}, "curves": curves(t.run_dir),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}
        self.save()
        log(f"  {name}: FID {ev['fid_train']:.3f}, precision {ev['precision']:.3f}, recall {ev['recall']:.3f}, "
            f"entropy {ev['entropy']:.3f}, {state['step']} steps {failed(rec) or ''}")
        return rec

    # -------------------------------------------------------------- report
    def table(self) -> str:
        fams = [f for f in ("gan", "diffusion") if any(r["family"] == f for r in self.results.values())]
        lines = [f"| family | runs | FID (mean ± sd over seeds) | precision | recall | class entropy | failed "
                 f"(diverged / collapsed) | evals/sample | s / 1000 samples |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for f in fams:
            rs = [r for r in self.results.values() if r["family"] == f]
            ok = [r for r in rs if not r["diverged"]]

            def ms(k, d=3):
                v = [r[k] for r in ok]
                if not v:
                    return "-"
                return f"{np.mean(v):.{d}f} ± {np.std(v, ddof=1):.{d}f}" if len(v) > 1 else f"{v[0]:.{d}f}"
            div = sum(r["diverged"] for r in rs)
            col = sum(failed(r) == "collapsed" for r in rs)
            lines.append(f"| {'GAN' if f == 'gan' else 'diffusion'} | {len(rs)} | {ms('fid_train')} | "
                         f"{ms('precision')} | {ms('recall')} | {ms('entropy')} | {(div + col) / len(rs):.2f} "
                         f"({div} / {col}) | {ok[0]['nfe'] if ok else '-'} | "
                         f"{ms('seconds_per_1000', 1)} |")
        per = ["", "| run | steps | FID | precision | recall | entropy | status |", "|---|---:|---:|---:|---:|---:|---|"]
        for r in sorted(self.results.values(), key=lambda r: (r["family"], r["seed"])):
            if r["diverged"]:
                per.append(f"| {r['name']} | - | - | - | - | - | diverged |")
            else:
                per.append(f"| {r['name']} | {r['steps']} | {r['fid_train']:.3f} | {r['precision']:.3f} | "
                           f"{r['recall']:.3f} | {r['entropy']:.3f} | {failed(r) or 'ok'} |")
        return "\n".join(lines + per) + "\n"

    def plot(self) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for r in sorted(self.results.values(), key=lambda r: (r["family"], r["seed"])):
            c = r["curves"]
            if not c["time"]:
                continue
            if r["family"] == "gan":
                axes[0].plot(c["time"], c["loss"], lw=1, label=f"D, seed {r['seed']}")
                axes[0].plot(c["time"], c["g_loss"], lw=1, ls="--", label=f"G, seed {r['seed']}")
            else:
                axes[1].plot(c["time"], c["loss"], lw=1, label=f"seed {r['seed']}")
        axes[0].set_title("GAN: discriminator (solid) and generator (dashed) loss")
        axes[1].set_title("diffusion: training loss")
        for ax in axes:
            ax.set_xlabel("training time (s)")
            ax.legend(fontsize=6)
        axes[1].set_yscale("log")
        fig.tight_layout()
        p = self.out / "loss_curves.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        return p

    def summary(self) -> list[str]:
        """Plain statements from the numbers only (they change when the numbers do)."""
        fam = {f: [r for r in self.results.values() if r["family"] == f] for f in ("gan", "diffusion")}
        if not fam["gan"] or not fam["diffusion"]:
            return []
        ok = {f: [r for r in rs if not r["diverged"]] for f, rs in fam.items()}
        out = []
        if ok["gan"] and ok["diffusion"]:
            g = np.array([r["fid_train"] for r in ok["gan"]])
            d = np.array([r["fid_train"] for r in ok["diffusion"]])
            better = "diffusion" if d.mean() < g.mean() else "the GAN"
            out.append(f"Mean FID over training seeds: diffusion {d.mean():.2f} (sd {d.std(ddof=1) if len(d) > 1 else 0:.2f}), "
                       f"GAN {g.mean():.2f} (sd {g.std(ddof=1) if len(g) > 1 else 0:.2f}): {better} is better by "
                       f"{max(g.mean(), d.mean()) / max(min(g.mean(), d.mean()), 1e-9):.2f}x; the spread over seeds "
                       f"is {'larger' if g.std() > d.std() else 'not larger'} for the GAN.")
            rg = np.mean([r["recall"] for r in ok["gan"]])
            rd = np.mean([r["recall"] for r in ok["diffusion"]])
            out.append(f"Mode coverage (recall): diffusion {rd:.3f}, GAN {rg:.3f}.")
        for f, name in (("gan", "GAN"), ("diffusion", "diffusion")):
            bad = [r["name"] for r in fam[f] if failed(r)]
            out.append(f"{name}: {len(bad)} of {len(fam[f])} runs failed by the stated criterion"
                       + (f" ({', '.join(bad)})." if bad else "."))
        return out

    def report(self) -> None:
        a = self.args
        md = [f"# GAN vs diffusion on {a.data}: {BUDGETS[a.data]} of training per run, {a.n} samples per run\n",
              f"Failed: diverged (non-finite loss) or collapsed (class entropy < {COLLAPSE_ENTROPY:.2f} or recall < "
              f"{COLLAPSE_RECALL}).\n", *[f"- {line}" for line in self.summary()], "", self.table(),
              "![loss curves](loss_curves.png)\n"]
        if self.results:
            self.plot()
        (self.out / "README.md").write_text("\n".join(md))
        log((self.out / "README.md").read_text())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=("digits", "mnist"), default="digits")
    ap.add_argument("--family", choices=("gan", "diffusion", "both"), default="both")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n", type=int, default=None, help="samples per run (default: 1000 digits, 2000 MNIST)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mnist", default=str(REPO.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="20 training steps of a tiny model: a pipeline check")
    ap.add_argument("--copy-docs", action="store_true",
                    help="copy the table and loss curves to docs/gvd_<data>.md and docs/gvd_<data>_losses.png")
    a = ap.parse_args(argv)
    a.n = a.n or (2000 if a.data == "mnist" else 1000)
    if a.smoke:
        a.n = min(a.n, 100)
    import torch

    torch.set_num_threads(a.threads)
    study = Study(a)
    log(f"GAN vs diffusion on {a.data}: {a.seeds} training seeds, {BUDGETS[a.data]} each, {a.n} samples; output "
        f"{study.out}")
    for family in (("gan", "diffusion") if a.family == "both" else (a.family,)):
        for seed in range(a.seeds):
            study.run(family, seed)
    study.report()
    if a.copy_docs:
        import shutil

        shutil.copy(study.out / "loss_curves.png", REPO / "docs" / f"gvd_{a.data}_losses.png")
        md = (study.out / "README.md").read_text().replace("](loss_curves.png)", f"](gvd_{a.data}_losses.png)")
        (REPO / "docs" / f"gvd_{a.data}.md").write_text(md)


if __name__ == "__main__":
    main()
