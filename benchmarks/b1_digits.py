"""B1 (digits): sample quality per training budget, genlab against diffusers and denoising-diffusion-pytorch.

The protocol is section B1 of benchmarks/README.md. In one process, one after the other (never in parallel):

1. sanity rows through the same evaluation: real test images, per-class means, Gaussian and uniform noise, one
   mean image repeated (``genlab.eval.evaluate.sanity_samples``);
2. each system trained from scratch for each budget (default 60 s and 300 s of training-step wall clock on
   2 CPU threads; only training steps are timed, for the peers too) on the 1437-image B1 train split:
   - genlab: ``digits_ddpm`` through ``genlab.report.compare.train_or_reuse`` (plus ``--genlab-overrides``);
   - the peers, through their adapters in ``benchmarks/peers/`` with their own published recipes and one
     higher learning rate each: diffusers (``peers/diffusers_peer.py``) and denoising-diffusion-pytorch
     (``peers/ddpm_pytorch_peer.py``);
3. the sample matrix, each row evaluated on ``--n`` samples by ``genlab.eval.evaluate.evaluate_samples``:
   every system x budget with EMA weights and DDIM-50 and with raw weights and DDIM-50; genlab also with
   DPM-Solver++(2M) at 10 and 20 network evaluations and Heun at about 10 and 20; DDPM-1000 at the largest
   budget for genlab and, per peer, for the learning rate that did better (FID vs train, EMA, DDIM-50).

Everything is cached under ``--out`` (default bench_out/b1) the way ``genlab compare`` caches: genlab's run
directories (``runs/NAME`` with done.json: a finished run is reused, an interrupted one resumed), the peers'
weights (``weights/NAME/{model,ema}.safetensors`` with their done.json) and every evaluated row in results.json
(compare's format: one record per training, its rows keyed by their sampling options; the sanity rows under
``_sanity``), so a rerun skips finished work (``--fresh`` redoes it). The tables of b1.md are written by
compare's ``markdown_table`` and the figure by its ``fid_nfe_plot``.
Outputs: b1.md (tables), b1_fid_vs_nfe.png, results.json and grids/*.png (first 64 samples of each row).

    .venv-bench/bin/python benchmarks/b1_digits.py                     # the full B1, about an hour on 2 cores
    .venv-bench/bin/python benchmarks/b1_digits.py --quick             # tiny budgets, n=200: a few minutes
    .venv-bench/bin/python benchmarks/b1_digits.py --systems genlab --genlab-overrides train.lr=3e-3
    .venv-bench/bin/python benchmarks/b1_digits.py --seeds 3 --copy-docs
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from genlab.data import load_dataset, to_model
from genlab.diffusion.samplers import heun_steps_for
from genlab.report.compare import fid_nfe_plot, load_results, markdown_table, open_results, row_key, save_results, \
    table_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))  # peers/, quality.py, throughput.machine()
from peers import get_peer  # noqa: E402
from peers.common import Variant  # noqa: E402
from quality import FAMILIES, GenlabSystem, QualityBench, RowSpec, jsonable, log, record_order, trainings  # noqa: E402,F401

LEVELS = 17                # digits: integer levels 0..16
SHAPE = (1, 8, 8)
REPO = Path(__file__).resolve().parent.parent
GENLAB = Variant("genlab", "genlab", None, "digits_ddpm config")


# ------------------------------------------------------------------------------------------------ genlab

def genlab_system(overrides, threads: int, out: Path) -> GenlabSystem:
    """genlab's side of B1, with the peers' interface: ``digits_ddpm`` trained by compare's train_or_reuse into
    ``out/runs/NAME``."""
    overrides = list(overrides)

    def train_overrides(budget: float) -> list[str]:
        # data.val_size=0: genlab trains on the whole 1437-image B1 train split, like the peers (B1 picks no
        # checkpoint, so no validation subset is needed)
        return [f"train.time_budget={budget:g}s", f"train.num_threads={threads}", "train.device=cpu",
                "data.val_size=0", *overrides]

    def details(cfg) -> str:
        return (f"genlab UNet width {cfg.model.width} mults {cfg.model.channel_mults}, "
                f"{cfg.diffusion.prediction}-prediction, {cfg.diffusion.schedule} schedule, "
                f"loss weight {cfg.diffusion.loss_weight}, "
                f"AdamW lr {cfg.train.lr:g}, EMA {cfg.train.ema_decay}, "
                f"trains on the whole 1437-image train split (data.val_size=0)")

    return GenlabSystem("digits_ddpm", train_overrides, lambda v, b: out / "runs" / record_name(v, b),
                        shape=SHAPE, levels=LEVELS, details=details, variant=GENLAB, extra_overrides=overrides,
                        log_prefix="[b1]")


# ------------------------------------------------------------------------------------------------ the matrix

def record_name(variant: Variant, budget: float) -> str:
    """A training's name: its record in results.json, genlab's run directory, a peer's weights directory."""
    return f"{variant.name}-{budget:g}s"


def rows_for(variant: Variant, budget: float) -> list[RowSpec]:
    """The per-training rows (DDPM-1000 rows are added once the better LR variant is known)."""
    rows = [RowSpec(variant, budget, "ema", "ddim", 50, True), RowSpec(variant, budget, "raw", "ddim", 50, False)]
    if variant.family == "genlab":
        rows += [RowSpec(variant, budget, "ema", "dpmpp-2m", 10, True),
                 RowSpec(variant, budget, "ema", "dpmpp-2m", 20, True),
                 RowSpec(variant, budget, "ema", "heun", heun_steps_for(10), True),
                 RowSpec(variant, budget, "ema", "heun", heun_steps_for(20), True)]
    return rows


MEANS = ("fid_all", "precision", "recall", "entropy", "confidence", "dup_fraction")


class Bench(QualityBench):
    """B1 on the shared quality runner (benchmarks/quality.py): digits data, its evaluation and its cache."""
    shape, levels = SHAPE, LEVELS
    fid_key = "fid_train"
    means = MEANS

    def __init__(self, args):
        self.args = args
        out = Path(args.out)
        self.out = out
        self.results_path = out / "results.json"
        super().__init__(args, out, self._load_results())
        self.data = None

    # -------------------------------------------------------------- cache
    def _load_results(self) -> dict:
        a = self.args
        if a.fresh and self.out.exists():
            for sub in ("runs", "weights", "grids"):
                shutil.rmtree(self.out / sub, ignore_errors=True)
            self.results_path.unlink(missing_ok=True)
        try:
            old = load_results(self.out)
            if "trainings" in old and "_mode" not in old:
                raise ValueError(f"{self.results_path} holds results of an older b1_digits.py (before compare's "
                                 "format); rerun with --fresh, or --out another directory")
            res = open_results(self.out, "quick" if a.quick else "full", {"n": a.n, "sample_batch": a.sample_batch})
        except ValueError as e:
            sys.exit(str(e))
        res.setdefault("_sanity", {})
        return res

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.results["_spec"] = {"benchmark": "B1", "data": "digits", "eval_n": self.args.n,
                                 "order": record_order(self.results)}
        save_results(jsonable(self.results), self.out)

    # -------------------------------------------------------------- pieces
    def train_data(self) -> torch.Tensor:
        if self.data is None:
            ds = load_dataset("digits", "train+val")
            self.data = to_model(ds.x, LEVELS)  # the 1437-image B1 train split in [-1, 1]
        return self.data

    def make_system(self, family: str):
        a = self.args
        return genlab_system(a.genlab_overrides, a.threads, self.out) if family == "genlab" else \
            get_peer(family, batch_size=a.batch_size, shape=SHAPE, levels=LEVELS)

    def record_name(self, variant: Variant, budget: float) -> str:
        return record_name(variant, budget)

    def evaluate(self, levels: np.ndarray) -> dict:
        from genlab.eval.evaluate import evaluate_samples

        return evaluate_samples(levels, data="digits", seed=0)

    def row_stats(self, row: dict) -> dict:
        return {"matched_ratio": float(np.mean([e["matched"]["ratio"] for e in row["evals"]]))}

    def row_message(self, spec: RowSpec, row: dict) -> str:
        e0 = row["evals"][0]
        fids = row["evals"]
        spread = f" +- {row['fid_std']:.3f} ({len(fids)} seeds)" if row["fid_std"] is not None else ""
        return (f"  row {spec.id}: FID train {row['fid']:.3f}{spread}, matched ratio "
                f"{e0['matched']['ratio']:.2f}, FID all {e0['fid_all']:.3f}, entropy {e0['entropy']:.3f}, "
                f"dup {e0['dup_fraction']:.3f}, {row['nfe']} evals/sample, {row['seconds_per_1000']:.1f}s per 1000")

    def sanity(self) -> None:
        from genlab.eval.evaluate import sanity_samples

        if self.results["_sanity"]:
            return
        log("sanity rows ...")
        for name, levels in sanity_samples(data="digits").items():
            ev = jsonable(self.evaluate(np.asarray(levels)))
            self.results["_sanity"][name] = {"n": int(len(levels)), **ev}
            log(f"  sanity {name}: n={len(levels)}, FID train {ev['fid_train']:.3f}, FID all {ev['fid_all']:.3f}, "
                f"entropy {ev['entropy']:.3f}, dup {ev['dup_fraction']:.3f}")
        self.save()

    # -------------------------------------------------------------- plan
    def better(self, family: str, budget: float) -> Optional[str]:
        """The LR variant of a peer family with the lower FID vs train (EMA, DDIM-50) at this budget."""
        return best_variants(self.results).get((family, budget))

    def ddpm_steps(self) -> int:
        return 100 if self.args.quick else 1000

    def run(self) -> None:
        a = self.args
        self.sanity()
        for fam in a.systems:
            for v in self.variants(fam):
                for b in a.budgets:
                    for spec in rows_for(v, b):
                        self.run_row(spec)
        top = max(a.budgets)
        for fam in a.systems:
            name = GENLAB.name if fam == "genlab" else self.better(fam, top)
            v = next(v for v in self.variants(fam) if v.name == name)
            self.run_row(RowSpec(v, top, "ema", "ddpm", self.ddpm_steps(), False))

    def print_plan(self) -> None:
        a = self.args
        for fam in a.systems:
            for v in self.variants(fam):
                for b in a.budgets:
                    cached = "cached" if self.cached(v, b) else "to train"
                    log(f"{v.name}@{b:g}s ({v.recipe}, lr {v.lr if v.lr is not None else 'config'}): {cached}; rows "
                        + ", ".join(f"{s.weights} {s.sampler}-{s.steps}" for s in rows_for(v, b)))
            which = "genlab" if fam == "genlab" else "the better LR"
            log(f"{fam}: DDPM-{self.ddpm_steps()} (EMA) at {max(a.budgets):g}s for {which}")

    # -------------------------------------------------------------- estimate
    def estimate(self) -> None:
        """Print the expected duration of the work not yet cached: the training budgets, plus sampling from a
        measured forward pass of each network (batch of --sample-batch) times evaluations, plus evaluation."""
        a = self.args
        per_eval = {}  # seconds per network evaluation of 1000 images
        for fam in a.systems:
            per_eval[fam] = self.forward_seconds(fam, min(a.sample_batch, a.n)) * 1000
        train_s, sample_s, n_rows = 0.0, 0.0, 0
        top = max(a.budgets)
        for fam in a.systems:
            variants = self.variants(fam)
            for v in variants:
                for b in a.budgets:
                    fresh = not self.cached(v, b)
                    if fresh:
                        train_s += b + 10  # + set-up, validation, checkpoints
                    specs = rows_for(v, b)
                    if b == top and v == variants[0]:  # one DDPM row per family
                        specs.append(RowSpec(v, top, "ema", "ddpm", self.ddpm_steps(), False))
                    rows = {} if fresh else self.results.get(record_name(v, b), {}).get("rows", {})
                    for s in specs:
                        r = rows.get(row_key(s.opts))
                        need = (a.seeds if s.key else 1) - (len(r["evals"]) if r else 0)
                        nfe = 2 * s.steps - 1 if s.sampler == "heun" else s.steps
                        sample_s += max(need, 0) * nfe * per_eval[fam] * a.n / 1000
                        n_rows += max(need, 0)
        eval_s = 8.0 * n_rows + (0 if self.results["_sanity"] else 30)
        total = train_s + sample_s + eval_s
        log("network evaluation of 1000 images: " + ", ".join(f"{k} {v:.2f}s" for k, v in per_eval.items()))
        log(f"estimated time: training {train_s / 60:.1f} min + sampling {sample_s / 60:.1f} min + evaluation "
            f"~{eval_s / 60:.1f} min = about {total / 60:.0f} min on {a.threads} threads (cached work skipped)")

    # -------------------------------------------------------------- report
    def report(self) -> None:
        self.save()
        write_markdown(self.results, self.args, self.out / "b1.md")
        plot(self.results, self.out / "b1_fid_vs_nfe.png")
        log(f"wrote {self.out / 'b1.md'}, {self.out / 'b1_fid_vs_nfe.png'}, {self.results_path}")
        if self.args.copy_docs:
            dst = REPO / "docs" / "b1_fid_vs_nfe.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.out / "b1_fid_vs_nfe.png", dst)
            log(f"copied the plot to {dst}")


# ------------------------------------------------------------------------------------------------ outputs

def _fmt(v, d=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{0.0 if abs(v) < 0.5 * 10 ** -d else v:.{d}f}"
    return str(v)


def b1_rows(results: dict) -> list[dict]:
    """compare's table rows, with each training's B1 fields (variant, budget, LR, steps, images seen, weights)."""
    order = {n: i for i, n in enumerate(record_order(results))}
    samp = {"ddim": 0, "dpmpp-2m": 1, "heun": 2, "ddpm": 3}
    rows = []
    for r in table_rows({**results, "_spec": {"order": list(order)}}):
        rec = results[r["name"]]
        rows.append({**r, "system": rec["family"], "variant": rec["variant"], "lr": rec["lr"],
                     "budget": rec["budget"], "steps_trained": rec["steps"], "images_seen": rec["images"],
                     "weights": "ema" if r["opts"]["use_ema"] else "raw", "sampler_name": r["opts"]["sampler"],
                     "sampler_steps": r["opts"]["steps"], "curve": f"{rec['label']} {rec['budget']:g}s"})
    return sorted(rows, key=lambda r: (order[r["name"]], r["weights"] != "ema", samp.get(r["sampler_name"], 9),
                                       r["sampler_steps"]))


def best_variants(results: dict) -> dict:
    """(family, budget) -> the variant with the lower FID vs train at EMA DDIM-50."""
    best = {}
    for r in b1_rows(results):
        if r["weights"] == "ema" and r["sampler_name"] == "ddim" and r["sampler_steps"] == 50:
            k = (r["system"], r["budget"])
            if k not in best or r["fid"] < best[k][1]:
                best[k] = (r["variant"], r["fid"])
    return {k: v[0] for k, v in best.items()}


def _fid_cell(r: dict) -> str:
    s = _fmt(r["fid"])
    if r.get("fid_std") is not None:
        s += f" +- {r['fid_std']:.3f} ({len(r['evals'])})"
    return s


TRAINING_COLUMNS = [
    ("label", "system"), ("recipe", "recipe"), ("lr", "LR", lambda t: f"{t['lr']:g}"),
    ("params", "parameters", lambda t: f"{t['params']:,}"), ("batch_size", "batch"),
    ("budget", "budget (s)", lambda t: f"{t['budget']:g}"), ("steps", "steps", lambda t: f"{t['steps']:,}"),
    ("images", "images seen", lambda t: f"{t['images']:,}"),
    ("steps_per_s", "steps/s", lambda t: f"{t['steps'] / max(t['time_used'], 1e-9):.1f}"),
    ("final_loss", "final loss", lambda t: _fmt(t.get("final_loss"), 4))]

SANITY_COLUMNS = [
    ("label", "samples"), ("n", "n"), ("fid_train", "FID train", lambda e: _fmt(e["fid_train"])),
    ("matched", "matched ratio", lambda e: _fmt(e["matched"]["ratio"], 2)),
    ("fid_all", "FID all", lambda e: _fmt(e["fid_all"])), ("precision", "precision", lambda e: _fmt(e["precision"])),
    ("recall", "recall", lambda e: _fmt(e["recall"])), ("entropy", "entropy", lambda e: _fmt(e["entropy"])),
    ("confidence", "confidence", lambda e: _fmt(e["confidence"])),
    ("dup_fraction", "dup", lambda e: _fmt(e["dup_fraction"]))]


def _metric_column(key: str, head: str) -> tuple:
    return key, head, lambda r: _fmt(r[key])


def matrix_columns(best: dict) -> list:
    def star(r):
        return "*" if r["system"] != "genlab" and best.get((r["system"], r["budget"])) == r["variant"] else ""

    return [("variant", "system", lambda r: r["variant"] + star(r)), ("lr", "LR", lambda r: f"{r['lr']:g}"),
            ("budget", "budget (s)", lambda r: f"{r['budget']:g}"),
            ("steps_trained", "steps", lambda r: f"{r['steps_trained']:,}"),
            ("images_seen", "images seen", lambda r: f"{r['images_seen']:,}"), ("weights", "weights"),
            ("sampler", "sampler", lambda r: f"{r['sampler_name']}-{r['sampler_steps']}"), ("nfe", "evals/sample"),
            ("fid", "FID train", _fid_cell), ("matched_ratio", "matched ratio", lambda r: _fmt(r["matched_ratio"], 2)),
            *[_metric_column(m, h) for m, h in
              (("fid_all", "FID all"), ("precision", "precision"), ("recall", "recall"), ("entropy", "entropy"),
               ("confidence", "confidence"), ("dup_fraction", "dup"))],
            ("seconds_per_1000", "s per 1000", lambda r: f"{r['seconds_per_1000']:.1f}")]


def write_markdown(results: dict, args, path: Path) -> None:
    from throughput import machine

    info = machine()
    rows = b1_rows(results)
    evals = [e for r in rows for e in r["evals"]] + list(results["_sanity"].values())
    acc = next((e.get("featnet_test_accuracy") for e in evals if e.get("featnet_test_accuracy") is not None), None)
    best = best_variants(results)
    versions = {}
    for mod in ("diffusers", "denoising_diffusion_pytorch", "ema_pytorch"):
        try:
            from importlib.metadata import version
            versions[mod] = version(mod.replace("_", "-"))
        except Exception:
            versions[mod] = "not installed"
    recs = [results[name] for name in record_order(results)]
    budgets = sorted({t["budget"] for t in recs})
    n = results["_eval"]["n"]
    L = [f"# B1 digits: quality per training budget{' (--quick)' if results['_mode'] == 'quick' else ''}", "",
         "- protocol: benchmarks/README.md, B1",
         f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
         f"- machine: {info['cpu']} ({info['cpu_count']} CPUs, {info['usable_cpus']} usable), {args.threads} torch "
         f"threads, {info['platform']}, python {info['python']}",
         f"- torch {torch.__version__}; " + ", ".join(f"{k} {v}" for k, v in versions.items()),
         f"- budgets: {', '.join(f'{b:g} s' for b in budgets)} of training-step wall clock (steps only, same "
         f"timer for all); every system trains on the 1437-image train split",
         f"- samples per row: {n}; FID vs train is the mean (+- std) over the sampling seeds "
         f"of key rows (EMA DDIM-50 and genlab's <= 20-evaluation rows; others one seed)",
         f"- feature network (genlab digits featnet, trained on the train split only) test accuracy: {_fmt(acc, 4)}",
         f"- matched ratio: mean FID of 20 random subsets of {min(360, n)} samples vs train, "
         f"divided by the real-vs-real floor (the 360 test images vs train; matched when n >= 360)", ""]
    L += ["## Trainings", "", markdown_table(recs, TRAINING_COLUMNS)]
    L += [f"- {f}: {d}" for f, d in {t["family"]: t["details"] for t in recs}.items()] + [""]
    L += ["## Sanity rows", "",
          markdown_table([{"label": k, **e} for k, e in results["_sanity"].items()], SANITY_COLUMNS)]
    L += ["## Sample matrix", "", "`*`: the better LR of a peer at that budget (FID vs train, EMA, DDIM-50).", "",
          markdown_table(rows, matrix_columns(best))]
    labels = sorted({f"{r['system']}: {r['sampler_label']}" for r in rows if r["system"] != "genlab"})
    L += ["Peers' samplers: " + "; ".join(labels), ""] if labels else []
    L += targets(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n")


def targets(rows: list[dict]) -> list[str]:
    """The two B1 targets, checked on the rows of results.json (``b1_rows``)."""
    budgets = sorted({r["budget"] for r in rows})
    if not budgets:
        return []
    lo, hi = budgets[0], budgets[-1]
    L = ["## Targets", ""]
    g_lo = [r for r in rows if r["system"] == "genlab" and r["budget"] == lo and r["nfe"] <= 20 and r["weights"] == "ema"]
    peers = [r for r in rows if r["system"] != "genlab" and r["budget"] == hi]
    if g_lo and peers:
        g = min(g_lo, key=lambda r: r["fid"])
        p = min(peers, key=lambda r: r["fid"])
        ok = g["fid"] <= p["fid"]
        L.append(f"- genlab at {lo:g} s with <= 20 evaluations: best {g['fid']:.3f} ({g['sampler']}, {g['nfe']} "
                 f"evals) vs the best peer at {hi:g} s with any sampler: {p['fid']:.3f} ({p['variant']}, "
                 f"{p['weights']} {p['sampler_name']}-{p['sampler_steps']}): **{'met' if ok else 'not met'}**")
    g_hi = [r for r in rows if r["system"] == "genlab" and r["budget"] == hi and r["weights"] == "ema"]
    if g_hi:
        g = min(g_hi, key=lambda r: r["fid"])
        m = g["evals"][0]["matched"]
        ok = m["fake_subset_mean"] - m["fake_subset_std"] <= m["floor"]
        L.append(f"- genlab at {hi:g} s vs the real-vs-real floor (360 test vs train): best row {g['sampler']} has "
                 f"{m.get('n', 360)}-subset FID {m['fake_subset_mean']:.3f} +- {m['fake_subset_std']:.3f} vs floor "
                 f"{m['floor']:.3f} (ratio {m['ratio']:.2f}); within the subset spread of the floor: "
                 f"**{'yes' if ok else 'no'}**")
    return L + [""]


def plot(results: dict, path: Path) -> None:
    """compare's FID-vs-evaluations figure, one curve per training (system and budget; peers at their better LR
    per budget), each through its best FID at each evaluation count; the real-vs-real floor dotted."""
    best = best_variants(results)
    rows = [r for r in b1_rows(results)
            if r["system"] == "genlab" or best.get((r["system"], r["budget"]), r["variant"]) == r["variant"]]
    floor = next((r["evals"][0]["matched"]["floor"] for r in rows), None)
    fid_nfe_plot(rows, path, label_key="curve", title="B1 digits: FID vs network evaluations (peers: the better LR "
                 "per budget)", ylabel=f"FID vs train split ({results['_eval']['n']} samples, digits featnet)",
                 reference=(floor, "real-vs-real floor (360 test vs train)") if floor else None)


# ------------------------------------------------------------------------------------------------ main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="the same pipeline with budgets 5,10 s, n=200 and DDPM-100 instead of DDPM-1000 "
                         "(output in bench_out/b1-quick unless --out)")
    ap.add_argument("--systems", default=",".join(FAMILIES), help=f"comma-separated subset of {','.join(FAMILIES)}")
    ap.add_argument("--budgets", default=None, help="training budgets in seconds (default 60,300; quick 5,10)")
    ap.add_argument("--n", type=int, default=None, help="samples per row (default 1000; quick 200)")
    ap.add_argument("--seeds", type=int, default=1, help="sampling seeds of the key rows (3 for mean and spread)")
    ap.add_argument("--batch-size", type=int, default=128, help="training batch of the peers (genlab: its config)")
    ap.add_argument("--sample-batch", type=int, default=500, help="sampling batch (default 500)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (B1: 2)")
    ap.add_argument("--genlab-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for genlab's digits_ddpm (tuning), e.g. train.lr=3e-3")
    ap.add_argument("--out", default=None, help="output directory (default bench_out/b1, quick: bench_out/b1-quick)")
    ap.add_argument("--fresh", action="store_true", help="drop cached trainings and rows in --out and redo them")
    ap.add_argument("--copy-docs", action="store_true", help="copy the plot to docs/b1_fid_vs_nfe.png")
    ap.add_argument("--no-estimate", action="store_true", help="skip the time estimate at the start")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate, then stop")
    args = ap.parse_args(argv)

    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in args.systems if s not in FAMILIES]
    if bad:
        ap.error(f"unknown system(s) {', '.join(bad)}; choose from {', '.join(FAMILIES)}")
    args.budgets = [float(b) for b in (args.budgets or ("5,10" if args.quick else "60,300")).split(",")]
    args.n = args.n or (200 if args.quick else 1000)
    args.out = args.out or str(REPO / "bench_out" / ("b1-quick" if args.quick else "b1"))
    torch.set_num_threads(args.threads)

    bench = Bench(args)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5:
        log(f"warning: the machine is busy (load average {load:.1f}); B1 times training steps on {args.threads} "
            f"threads and needs an otherwise idle machine: step counts, timings and the estimate will be off")
    log(f"B1 digits: systems {', '.join(args.systems)}; budgets {', '.join(f'{b:g}s' for b in args.budgets)}; "
        f"n={args.n}; key-row seeds {args.seeds}; peers' batch {args.batch_size}; {args.threads} threads; "
        f"torch {torch.__version__}; output {args.out}")
    if args.dry_run or not args.no_estimate:
        bench.estimate()
    if args.dry_run:
        bench.print_plan()
        return
    t0 = time.time()
    try:
        bench.run()
    except KeyboardInterrupt:
        log(f"B1 interrupted after {(time.time() - t0) / 60:.1f} min; finished work is cached in {args.out}: "
            "rerun the same command to continue")
        raise SystemExit(130)
    bench.report()
    log(f"B1 done in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
