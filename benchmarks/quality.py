"""The shared runner of the sample-quality benchmarks: B1 (digits, ``b1_digits.py``) and the quality part of B3
(MNIST, ``b3_mnist.py``).

One benchmark trains each system for each budget (genlab through ``genlab.report.compare.train_or_reuse``, the
peers through their adapters in ``benchmarks/peers/`` under the same timer) and evaluates rows of samples (one
training x weights x sampler x steps), every row with the benchmark's own evaluation, cached in compare's
``results.json`` format: one record per training, its rows keyed by :func:`genlab.report.compare.row_key` of
their sampling options, each row holding every sampling seed's evaluation under ``evals``.

What a benchmark supplies (a subclass of :class:`QualityBench`): the image ``shape`` and ``levels``, its
systems (:meth:`QualityBench.make_system`: a :class:`GenlabSystem` or a peer), its training images
(:meth:`~QualityBench.train_data`), how a training is named (:meth:`~QualityBench.record_name`), how samples are
evaluated (:meth:`~QualityBench.evaluate`, plus :attr:`~QualityBench.fid_key` and
:meth:`~QualityBench.row_stats` for the row's summary) and its results file (:meth:`~QualityBench.save`).
The runner does the rest the same way for every benchmark: train or reuse (:meth:`~QualityBench.trained`), sample
and evaluate the missing seeds of a row (:meth:`~QualityBench.run_row`), time a network's forward pass for the
estimates (:func:`forward_seconds`).
"""
from __future__ import annotations

import datetime
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from genlab.data import to_model
from genlab.report.compare import is_finished, row_key, train_or_reuse

sys.path.insert(0, str(Path(__file__).resolve().parent))  # peers/
from peers import train_or_reuse_peer  # noqa: E402
from peers.common import Variant, cached_record, count_params, signature, to_levels  # noqa: E402


FAMILIES = ("genlab", "diffusers", "ddpm-pytorch")      # the systems of B1 and B3, in their tables' order


def trainings(results: dict) -> list[dict]:
    """The training records (those with their training fields: a record emptied by new evaluation settings
    has none until it is trained or reused again)."""
    return [r for k, r in results.items() if not k.startswith("_") and "steps" in r]


def record_order(results: dict) -> list[str]:
    """The trainings' names in table order: family (FAMILIES), budget, variant."""
    fam = {f: i for i, f in enumerate(FAMILIES)}
    return [r["name"] for r in sorted(trainings(results), key=lambda r: (fam.get(r["family"], 9), r["budget"],
                                                                        r["variant"]))]


def median_step_seconds(loss_fn: Callable[[int], torch.Tensor], net: torch.nn.Module, steps: int = 3) -> float:
    """Median seconds of training steps 2..steps (loss_fn(k), backward, AdamW, zero_grad): a time estimate."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    times = []
    for k in range(steps):
        t0 = time.perf_counter()
        loss_fn(k).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def log(msg: str = "") -> None:
    print(msg, flush=True)


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def budget_text(budget: float, unit: str = "s") -> str:
    """``60s`` (unit s) or ``10min`` (unit min) for a budget in seconds."""
    return f"{budget / 60:g}min" if unit == "min" else f"{budget:g}s"


# ------------------------------------------------------------------------------------------------ genlab

class GenlabSystem:
    """genlab's side of a quality benchmark, with the peers' interface: one recipe trained by compare's
    train_or_reuse into the run directory ``run_path(variant, budget)``, with ``overrides_for(budget)`` on top
    of ``config``; ``details(cfg)`` says in words what it is."""
    family = "genlab"

    def __init__(self, config: str, overrides_for: Callable[[float], list], run_path: Callable[[Variant, float], Path],
                 *, shape: tuple, levels: int, details: Callable, variant: Variant, extra_overrides=(),
                 log_prefix: str = "[bench]", unit: str = "s", which: str = "latest"):
        self.config_name, self.overrides_for, self.run_path = config, overrides_for, run_path
        self.shape, self.levels, self.details, self.variant = tuple(shape), levels, details, variant
        self.overrides = list(extra_overrides)       # the user's overrides, for the description
        self.log_prefix, self.unit, self.which = log_prefix, unit, which

    def variants(self) -> list[Variant]:
        return [self.variant]

    def train_overrides(self, budget: float) -> list[str]:
        return list(self.overrides_for(budget))

    def config(self, budget: float):
        from genlab.api import resolve_config

        return resolve_config(self.config_name, self.train_overrides(budget))

    def network(self) -> torch.nn.Module:
        from genlab.methods import get_method

        return get_method(self.config(60)).build_model(self.shape, 0, levels=self.levels)

    def describe(self) -> dict:
        cfg = self.config(60)
        return {"params": count_params(self.network()), "lr": cfg.train.lr, "batch_size": cfg.train.batch_size,
                "config": self.config_name, "overrides": self.overrides, "details": self.details(cfg)}

    def cached(self, variant: Variant, budget: float, out: Path = None) -> bool:
        return is_finished(self.run_path(variant, budget), self.config(budget))

    def train(self, variant: Variant, budget: float, out: Path = None) -> tuple[dict, bool]:
        """(record, trained now): the run trained, resumed or reused."""
        from genlab.train import checkpoint as ck

        path = Path(self.run_path(variant, budget))
        word = f"{budget / 60:g} min" if self.unit == "min" else f"{budget:g} s"
        t = train_or_reuse(path.name, self.config_name, self.train_overrides(budget), path.parent, progress=False,
                           budget_label=f"{word} of training steps", log_prefix=self.log_prefix)
        state = ck.read_state(ck.resolve_checkpoint(t.run_dir, self.which))
        losses = []
        try:
            for line in (t.run_dir / "metrics.jsonl").read_text().splitlines():
                rec = json.loads(line) if line.strip() else {}
                if "loss" in rec:
                    losses.append(rec["loss"])
        except (OSError, ValueError):
            pass
        return {"steps": state["step"], "images": state["samples_seen"], "time_used": state["time_used"],
                "final_loss": losses[-1] if losses else None, "run_dir": str(t.run_dir),
                "train_id": f"{state['step']}:{state['time_used']:.6f}"}, t.trained

    def sampler(self, rec: dict):
        return GenlabSampler(Path(rec["run_dir"]), self.levels, self.which)


class GenlabSampler:
    def __init__(self, run_dir: Path, levels: int, which: str = "latest"):
        self.run_dir, self.levels, self.which = run_dir, levels, which

    def sample(self, n, sampler, steps, seed, use_ema, batch_size):
        import genlab.api

        x, nfe, _ = genlab.api.sample(self.run_dir, n=n, sampler=sampler, steps=steps, seed=seed, use_ema=use_ema,
                                      batch_size=batch_size, device="cpu", progress=False, which=self.which)
        return to_levels(x, self.levels), nfe, sampler


# ------------------------------------------------------------------------------------------------ rows

@dataclass(frozen=True)
class RowSpec:
    variant: Variant
    budget: float
    weights: str           # ema | raw
    sampler: str           # ddim | ddpm | dpmpp-2m | heun
    steps: int
    key: bool              # a key row: all --seeds sampling seeds
    unit: str = "s"        # how the budget is written in ids: s (60s) or min (10min)

    @property
    def id(self) -> str:
        """For logs and grid file names: ``genlab@60s/ema/ddim-50``."""
        return f"{self.variant.name}@{budget_text(self.budget, self.unit)}/{self.weights}/{self.sampler}-{self.steps}"

    @property
    def opts(self) -> dict:
        """The row's sampling options: its key in the record's rows (compare.row_key)."""
        return {"sampler": self.sampler, "steps": self.steps, "use_ema": self.weights == "ema"}

    @property
    def label(self) -> str:
        return f"{self.sampler}-{self.steps}" + ("" if self.weights == "ema" else " raw")


def sample_seed(k: int) -> int:
    """Sampling seed k: genlab gives sample i the seed base + i, the peers seed each batch with base + offset."""
    return 1_000_000 * k


def forward_seconds(net: torch.nn.Module, shape: tuple, batch: int, repeats: int = 3) -> float:
    """Seconds per image of one forward pass of a denoiser ``net(x, t)`` at this batch (the fastest of
    ``repeats`` after one warm-up): what one network evaluation of a sampler costs."""
    net = net.eval()
    x = torch.randn(batch, *shape)
    t = torch.full((batch,), 500, dtype=torch.long)
    times = []
    with torch.inference_mode():
        net(x, t)
        for _ in range(repeats):
            t0 = time.perf_counter()
            net(x, t)
            times.append(time.perf_counter() - t0)
    return min(times) / batch


# ------------------------------------------------------------------------------------------------ the runner

class QualityBench:
    """Trainings and rows of a quality benchmark (see the module docstring); ``args`` needs ``n``, ``seeds``,
    ``sample_batch`` and ``threads``."""
    shape: tuple = ()
    levels: int = 0
    fid_key = "fid_train"              # the headline FID of an evaluation
    means: tuple = ()                  # metrics averaged over the seeds into the row
    unit = "s"                         # budgets in logs: s or min

    def __init__(self, args, out: Path, results: dict):
        self.args, self.out, self.results = args, Path(out), results
        self.systems, self.descriptions = {}, {}

    # -------------------------------------------------------------- what a benchmark supplies
    def make_system(self, family: str):
        raise NotImplementedError

    def train_data(self) -> torch.Tensor:
        """The training images in model space [-1, 1] (what the peers train on)."""
        raise NotImplementedError

    def evaluate(self, levels: np.ndarray) -> dict:
        raise NotImplementedError

    def record_name(self, variant: Variant, budget: float) -> str:
        return f"{variant.name}-{budget_text(budget, self.unit)}"

    def row_stats(self, row: dict) -> dict:
        """The row's summary fields besides fid, fid_std, seconds_per_1000 and the means."""
        return {}

    def row_message(self, spec: RowSpec, row: dict) -> str:
        spread = f" +- {row['fid_std']:.3f} ({len(row['evals'])} seeds)" if row["fid_std"] is not None else ""
        return f"  row {spec.id}: FID {row['fid']:.3f}{spread}, {row['nfe']} evals/sample, " \
               f"{row['seconds_per_1000']:.1f}s per 1000"

    def save(self) -> None:
        raise NotImplementedError

    # -------------------------------------------------------------- shared
    def system(self, family: str):
        if family not in self.systems:
            self.systems[family] = self.make_system(family)
        return self.systems[family]

    def variants(self, family: str) -> list[Variant]:
        return self.system(family).variants()

    def describe(self, family: str) -> dict:
        if family not in self.descriptions:
            self.descriptions[family] = self.system(family).describe()
        return self.descriptions[family]

    def peer_dir(self, v: Variant, budget: float) -> Path:
        return self.out / "weights" / self.record_name(v, budget)

    def cached(self, v: Variant, budget: float) -> bool:
        """Whether this training is finished on disk (genlab's done.json, a peer's done.json)."""
        fam = self.system(v.family)
        if v.family == "genlab":
            return fam.cached(v, budget, self.out)
        return cached_record(self.peer_dir(v, budget), signature(fam, v, budget)) is not None

    def trained(self, v: Variant, budget: float) -> dict:
        """The training's record in results.json, trained (or reused from disk) first."""
        name = self.record_name(v, budget)
        desc = self.describe(v.family)
        lr = v.lr if v.lr is not None else desc.get("lr")
        fresh = not self.cached(v, budget)
        if fresh:
            log(f"training {v.name} (lr {lr:g}, batch {desc['batch_size']}, {desc['params']:,} parameters) "
                f"for {budget_text(budget, self.unit)} of training steps ...")
        t0 = time.time()
        torch.set_num_threads(self.args.threads)
        if v.family == "genlab":
            info, trained = self.system("genlab").train(v, budget, self.out)
        else:
            info, trained = train_or_reuse_peer(self.system(v.family), v, budget, self.peer_dir(v, budget),
                                                self.train_data())
        torch.set_num_threads(self.args.threads)
        rec = self.results.get(name)
        if trained or rec is None or rec.get("train_id") != info["train_id"]:
            rec = self.results[name] = {"name": name, "rows": {}}     # rows of an older training are stale
        rec.update({**info, "label": v.name, "variant": v.name, "family": v.family, "method": "diffusion",
                    "recipe": v.recipe, "lr": lr, "budget": budget, "params": desc["params"],
                    "batch_size": desc["batch_size"], "details": desc["details"],
                    "train_images_per_s": info["images"] / max(info["time_used"], 1e-9),
                    "test_bpd": None, "test_bpd_sem": None, "bpd_kind": "none"})
        if trained:
            rec.update({"wall_s": time.time() - t0, "date": datetime.datetime.now().isoformat(timespec="seconds")})
            self.save()
            log(f"  trained {name}: {rec['steps']} steps, {rec['images']:,} images seen, {rec['time_used']:.1f}s of "
                f"training steps ({rec['steps'] / max(rec['time_used'], 1e-9):.1f} steps/s), final loss "
                f"{rec['final_loss'] if rec['final_loss'] is None else round(rec['final_loss'], 4)}, "
                f"wall {rec['wall_s']:.0f}s")
        return rec

    def run_row(self, spec: RowSpec) -> dict:
        """The row of ``spec`` with all its seeds (``--seeds`` for a key row, else one), sampling and evaluating
        only the seeds not cached; the first seed's first 64 samples go to ``grids/``."""
        a = self.args
        rec = self.trained(spec.variant, spec.budget)
        key = row_key(spec.opts)
        row = rec["rows"].get(key)
        want = a.seeds if spec.key else 1
        if row is not None and len(row["evals"]) >= want:
            return row
        if row is None:
            row = {"opts": spec.opts, "sampler": spec.label, "key": spec.key, "evals": []}
        sampler = self.system(spec.variant.family).sampler(rec)
        torch.set_num_threads(a.threads)
        for k in range(len(row["evals"]), want):
            t0 = time.perf_counter()
            levels, nfe, label = sampler.sample(a.n, spec.sampler, spec.steps, sample_seed(k), spec.weights == "ema",
                                                a.sample_batch)
            secs = time.perf_counter() - t0
            if k == 0:
                from genlab.report.images import save_grid

                save_grid(to_model(levels[:64], self.levels), self.out / "grids" / (spec.id.replace("/", "_") + ".png"),
                          nrow=8)
            t1 = time.perf_counter()
            ev = self.evaluate(levels.numpy())
            row["evals"].append({"seed": sample_seed(k), "sample_s": secs, "eval_s": time.perf_counter() - t1,
                                 **jsonable(ev)})
            row.update({"nfe": nfe, "sampler_label": label})
        fids = [e[self.fid_key] for e in row["evals"]]
        row.update({"fid": float(np.mean(fids)), "fid_std": float(np.std(fids, ddof=1)) if len(fids) > 1 else None,
                    **self.row_stats(row),
                    "seconds_per_1000": row["evals"][0]["sample_s"] * 1000 / a.n,
                    **{m: float(np.mean([e[m] for e in row["evals"]])) for m in self.means}})
        rec["rows"][key] = row
        self.save()
        log(self.row_message(spec, row))
        return row

    def forward_seconds(self, family: str, batch: int) -> float:
        """Seconds per image of one network evaluation of a family's denoiser at this batch."""
        torch.set_num_threads(self.args.threads)
        return forward_seconds(self.system(family).network(), self.shape, batch)
