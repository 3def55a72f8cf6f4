"""B3 (MNIST): sample quality per training budget against the peers, test likelihood against the literature, and
out-of-distribution detection with likelihoods. The protocol is section B3 of benchmarks/README.md.

It runs in four parts, each under 150 minutes of wall clock on 2 CPU threads, one system after the other:

- ``--part quality``: the MNIST feature network (trained if missing, its test accuracy reported), the
  real-vs-real floor (3 random subsets of 2,000 train images vs the 10,000 test images), genlab ``mnist_ddpm``
  trained 10 and 30 minutes (the 30-minute run is compare_mnist's ``ddpm_v`` run), sampled with DPM-Solver++(2M)
  at 10 and 20 evaluations (key rows, 3 sampling seeds) and DDIM-50; diffusers and denoising-diffusion-pytorch at
  30 minutes with DDIM-50 under the same timer. FID of 2,000 samples against the test split's statistics.
- ``--part likelihood``: test bits/dim (256 levels) of PixelCNN (60 min), the causal transformer, one-shot, the
  diffusion bound of the 30-minute ``ddpm_v`` run, any-order AR (trained by the ood part, see below), their
  learning curves, published references in their own table, the FID of 2,000 samples of the best raster AR.
- ``--part ood``: any-order AR and a binarized-MNIST PixelCNN (30 min: test NLL in nats), then per-image bits/dim
  of the notMNIST test set beside MNIST test under every likelihood model and the AUROC of bits/dim as an OOD score.
- ``--part compare``: ``genlab compare --config compare_mnist`` (genlab.report.compare.run) with
  ``data.root`` added, into ``OUT/compare``: it reuses the runs above and trains the rest.

Every part is resumable: rerun the same command. genlab runs are reused when finished and resumed when
interrupted (compare.train_or_reuse), a peer's training is reused when finished and otherwise restarted, every
evaluated row, likelihood and sample set is cached in ``OUT/results.json`` (per-image bits/dim in ``OUT/bpd/``).
``--dry-run`` prints per part what is cached and a time estimate from measured training steps, likelihood passes
and sampling of each network on this machine. ``--smoke`` runs the same pipeline on a small copy of the data
(written under ``--out``) with a few training steps and a few dozen samples: a test of the pipeline, not a result.

    .venv-bench/bin/python benchmarks/b3_mnist.py --dry-run                      # plan + estimates of all parts
    OMP_NUM_THREADS=2 .venv-bench/bin/python benchmarks/b3_mnist.py --part quality
    .venv-bench/bin/python benchmarks/b3_mnist.py --part likelihood; ... --part ood; ... --part compare
    .venv-bench/bin/python benchmarks/b3_mnist.py --smoke --out /tmp/b3smoke --part quality    # pipeline check
    .venv-bench/bin/python benchmarks/b3_mnist.py --copy-docs                    # only rewrite b3.md + figures
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gzip
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from genlab.data import load_dataset, to_model
from genlab.report import compare as C

sys.path.insert(0, str(Path(__file__).resolve().parent))  # peers/, quality.py, throughput.machine()
from peers import get_peer, missing_library  # noqa: E402
from peers.common import Variant, cached_record, signature  # noqa: E402
from quality import (FAMILIES, GenlabSystem, QualityBench, RowSpec, budget_text, jsonable, log,  # noqa: E402
                     median_step_seconds, record_order, trainings)

SHAPE = (1, 28, 28)
LEVELS = 256
DIMS = 784
REPO = Path(__file__).resolve().parent.parent
PARTS = ("quality", "likelihood", "ood", "compare")
PART_LIMIT_MIN = 150
GENLAB = Variant("genlab", "genlab", None, "mnist_ddpm config")
# the peers at 28x28: three levels (28 -> 14 -> 7), each with the learning rate that did better on digits in B1
PEERS = {"diffusers": {"kw": {"block_out_channels": (32, 64, 64)}, "lr": 2e-4},
         "ddpm-pytorch": {"kw": {"dim": 32, "dim_mults": (1, 2, 4)}, "lr": 1e-3}}
QUALITY_MEANS = ("fid_train", "precision", "recall", "entropy", "confidence", "dup_fraction")
# published references (other budgets, other hardware, long GPU trainings): quoted beside, never mixed in
REFERENCES = [
    ("PixelCNN (van den Oord et al. 2016, Pixel Recurrent Neural Networks)",
     "binarized MNIST (the standard stochastically binarized set, not B3's threshold at 128)", "81.30 nats"),
    ("RealNVP (Dinh et al. 2017; as tabulated by Grathwohl et al. 2019, FFJORD)", "8-bit MNIST, dequantized",
     "1.06 bits/dim"),
    ("Glow (Kingma & Dhariwal 2018; as tabulated by Grathwohl et al. 2019, FFJORD)", "8-bit MNIST, dequantized",
     "1.05 bits/dim"),
    ("causal softmax transformer (benchmarks/README.md, B3)", "8-bit MNIST", "0.62 bits/dim"),
]
BPD_TARGET = 0.95
SMOKE_COMPARE = ("oneshot", "ddpm_v")      # --smoke --part compare: these only (ddpm_v: reused from quality)


def _mins(s: float) -> str:
    return f"{s / 60:.1f} min"


def _fmt(v, d=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{d}f}"
    return str(v)


# ------------------------------------------------------------------------------------------------ models

@dataclass
class Model:
    """One genlab run of B3: its key, label, recipe, the overrides it trains with, its run directory, the part
    that trains it, and whether it sees binarized data."""
    key: str
    label: str
    config: str
    overrides: list
    run_dir: Path
    budget: str
    part: str
    binarized: bool = False
    shared: str = ""           # "compare_mnist's NAME run" when the run is shared with the compare part

    def cfg(self):
        from genlab.api import resolve_config

        return resolve_config(self.config, self.overrides)


def _duration(s: str) -> float:
    from genlab.config import parse_duration

    return parse_duration(s)


def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """Area under the ROC curve of the score (higher = positive), ties counted one half: the Mann-Whitney U
    statistic / (n_pos n_neg), from average ranks."""
    s = np.concatenate([np.asarray(neg, np.float64), np.asarray(pos, np.float64)])
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.bincount(inv, weights=ranks) / counts)[inv]
    n_neg, n_pos = len(neg), len(pos)
    u = ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


class OneVariant:
    """A peer adapter restricted to one of its variants (B3 trains each peer at one learning rate)."""

    def __init__(self, peer, lr: float):
        self._peer = peer
        self._variant = next(v for v in peer.variants() if v.lr == lr)

    def __getattr__(self, name):
        return getattr(self._peer, name)

    def variants(self) -> list[Variant]:
        return [self._variant]


# ------------------------------------------------------------------------------------------------ smoke data

def _write_idx(path: Path, arr: np.ndarray, magic: int) -> None:
    head_ = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head_ + np.ascontiguousarray(arr, dtype=np.uint8).tobytes())


def make_smoke_data(src_mnist: Path, src_notmnist: Path, dst: Path, n_train: int = 6000, n_test: int = 1000):
    """A small copy of MNIST (the first n_train train and n_test test images) and of the notMNIST test set, in
    the IDX format, under ``dst`` (for --smoke only: a fast pipeline check, not a measurement)."""
    from genlab.data.idx import FILES, IMAGES_MAGIC, LABELS_MAGIC, find_idx_file, read_idx

    out = {}
    for name, src, parts in (("mnist", src_mnist, {"train": n_train, "test": n_test}),
                             ("notmnist", src_notmnist, {"test": n_test})):
        d = dst / name
        out[name] = d
        if (d / "done").is_file():
            continue
        d.mkdir(parents=True, exist_ok=True)
        for part, n in parts.items():
            for stem, magic in zip(FILES[part], (IMAGES_MAGIC, LABELS_MAGIC)):
                arr = read_idx(find_idx_file(Path(src), stem, "mnist"), magic)[:n]
                _write_idx(d / f"{stem}.gz", arr, magic)
        (d / "done").write_text("smoke copy\n")
    return out["mnist"], out["notmnist"]


# ------------------------------------------------------------------------------------------------ costs

class Costs:
    """Measured costs on this machine (random weights: speed does not depend on training), cached per setting:
    a training step at the recipe's batch, one likelihood pass per image, sampling per image."""

    def __init__(self, b3: "B3"):
        self.b3 = b3
        self.cache = {}
        self.shown = []

    def _test(self, binarized: bool):
        return self.b3.test_set("mnist", binarized)

    def _net(self, cfg, binarized):
        from genlab.methods import get_method

        m = get_method(cfg)
        torch.manual_seed(0)
        return m, m.build_model(SHAPE, 0, levels=2 if binarized else LEVELS)

    @staticmethod
    def _key(kind: str, model: Model, *extra) -> tuple:
        """A cost's cache key: the resolved config without its budget (10- and 30-minute runs cost the same)."""
        d = model.cfg().to_dict()
        d["train"] = {k: v for k, v in d["train"].items() if k not in ("time_budget", "max_steps")}
        return (kind, json.dumps(d, sort_keys=True, default=str), *extra)

    def step_s(self, model: Model) -> float:
        key = self._key("step", model)
        if key not in self.cache:
            from genlab.rng import StepRNG

            cfg = model.cfg()
            m, net = self._net(cfg, model.binarized)
            bs = cfg.train.batch_size
            batch = self._test(model.binarized).batch(torch.arange(bs))
            torch.set_num_threads(self.b3.args.threads)
            self.cache[key] = median_step_seconds(lambda k: m.loss(net, batch, StepRNG(k, bs)), net)
            self.shown.append(f"{model.key}: training step {self.cache[key]:.2f}s at batch {bs}")
        return self.cache[key]

    def ll_s(self, model: Model) -> float:
        """Seconds per image of one likelihood draw (one network pass; flow: one ODE solve)."""
        key = self._key("ll", model)
        if key not in self.cache:
            cfg = model.cfg()
            m, net = self._net(cfg, model.binarized)
            net.eval()
            x = self._test(model.binarized).batch(torch.arange(32))["x"]
            torch.set_num_threads(self.b3.args.threads)
            m.log_likelihood(net, x[:4], None, draws=1, seed=0)
            t0 = time.perf_counter()
            m.log_likelihood(net, x, None, draws=1, seed=0)
            self.cache[key] = (time.perf_counter() - t0) / len(x)
            self.shown.append(f"{model.key}: likelihood pass {1000 * self.cache[key]:.1f} ms per image")
        return self.cache[key]

    def sample_s(self, model: Model, opts: dict, n_probe: int = 16) -> float:
        """Seconds per sample with these options (measured on n_probe samples in one batch)."""
        key = self._key("sample", model, json.dumps(opts, sort_keys=True))
        if key not in self.cache:
            cfg = model.cfg()
            m, net = self._net(cfg, model.binarized)
            torch.set_num_threads(self.b3.args.threads)
            t0 = time.perf_counter()
            _, nfe = m.sample(net, n_probe, batch_size=n_probe, **opts)
            self.cache[key] = (time.perf_counter() - t0) / n_probe
            self.shown.append(f"{model.key} {opts or 'defaults'}: sampling {self.cache[key]:.3f}s per sample "
                              f"({nfe} evals, batch {n_probe})")
        return self.cache[key]

    def fwd_s(self, family: str, batch: int) -> float:
        key = ("fwd", family, batch)
        if key not in self.cache:
            self.cache[key] = self.b3.quality.forward_seconds(family, batch)
            self.shown.append(f"{family}: one network evaluation {1000 * self.cache[key]:.2f} ms per image at "
                              f"batch {batch}")
        return self.cache[key]

    def peer_step_s(self, family: str) -> float:
        key = ("peer-step", family)
        if key not in self.cache:
            import torch.nn.functional as F

            net = self.b3.quality.system(family).network().train()
            bs = 128
            x = torch.randn(bs, *SHAPE)
            torch.set_num_threads(self.b3.args.threads)

            def loss(k):
                out = net(x, torch.randint(0, 1000, (bs,)))
                return F.mse_loss(getattr(out, "sample", out), x)

            self.cache[key] = median_step_seconds(loss, net)
            self.shown.append(f"{family}: training step {self.cache[key]:.2f}s at batch {bs}")
        return self.cache[key]

    def eval_s(self, n: int, n_real: int) -> float:
        """One evaluation of n samples: feature-net features plus precision/recall against n_real real features."""
        key = ("eval", n, n_real)
        if key not in self.cache:
            from genlab.eval import metrics as M
            from genlab.eval.features import SPECS, FeatNet

            net = FeatNet(SPECS["mnist"]).eval()
            x = torch.rand(min(n, 500), *SHAPE) * 2 - 1
            torch.set_num_threads(self.b3.args.threads)
            t0 = time.perf_counter()
            with torch.no_grad():
                net(x)
            feats = (time.perf_counter() - t0) * n / len(x)
            rng = np.random.default_rng(0)
            m = min(n_real, 4000)
            t0 = time.perf_counter()
            M.precision_recall(rng.standard_normal((m, 128)), rng.standard_normal((min(n, m - 1), 128)))
            pr = (time.perf_counter() - t0) * (n_real / m) ** 2       # the real set's k-NN radii dominate
            self.cache[key] = feats + pr + 1.0
            self.shown.append(f"evaluation of {n} samples against {n_real} real images: {self.cache[key]:.1f}s")
        return self.cache[key]

    def featnet_s(self) -> float:
        from genlab.eval.features import SPECS, FeatNet
        import torch.nn.functional as F

        spec = SPECS["mnist"]
        net = FeatNet(spec)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        x = torch.rand(spec.batch_size, *SHAPE) * 2 - 1
        y = torch.randint(0, 10, (spec.batch_size,))
        times = []
        torch.set_num_threads(self.b3.args.threads)
        for _ in range(3):
            t0 = time.perf_counter()
            F.cross_entropy(net(x)[1], y).backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t0)
        n_train = len(self.b3.test_set("mnist")) * 6          # about the train file's size
        steps = spec.epochs * math.ceil(n_train / spec.batch_size)
        s = float(np.median(times[1:])) * steps * 1.5             # deterministic algorithms, augmentation
        self.shown.append(f"feature network: {steps} steps of {np.median(times[1:]):.3f}s")
        return s


# ------------------------------------------------------------------------------------------------ the quality runner

class QualityPart(QualityBench):
    """The quality part on the shared runner (benchmarks/quality.py): MNIST, FID against the test split."""
    shape, levels = SHAPE, LEVELS
    fid_key = "fid_test"
    means = QUALITY_MEANS
    unit = "min"

    def __init__(self, b3: "B3"):
        self.b3 = b3
        super().__init__(b3.args, b3.out, b3.results)
        self.unit = "s" if b3.args.smoke else "min"
        self._data = None
        self._ref = None

    def make_system(self, family: str):
        b3 = self.b3
        if family == "genlab":
            lo, hi = b3.budgets

            def overrides_for(budget):
                return (b3.ddpm30 if budget == hi else b3.ddpm10).overrides

            def run_path(v, budget):
                return (b3.ddpm30 if budget == hi else b3.ddpm10).run_dir

            def details(cfg):
                n_train = b3.train_split_size(cfg)
                return (f"genlab UNet width {cfg.model.width} mults {cfg.model.channel_mults}, "
                        f"{cfg.diffusion.prediction}-prediction, {cfg.diffusion.schedule} schedule, loss weight "
                        f"{cfg.diffusion.loss_weight}, AdamW lr {cfg.train.lr:g}, EMA {cfg.train.ema_decay}; trains on "
                        f"genlab's train split ({n_train:,} images; the validation split held out, split seed "
                        f"{cfg.data.split_seed}); samples its latest checkpoint")

            return GenlabSystem("mnist_ddpm", overrides_for, run_path, shape=SHAPE, levels=LEVELS, details=details,
                                variant=GENLAB, log_prefix="[b3]", unit=self.unit)
        peer = get_peer(family, batch_size=128, shape=SHAPE, levels=LEVELS, **PEERS[family]["kw"])
        return OneVariant(peer, PEERS[family]["lr"])

    def train_data(self) -> torch.Tensor:
        if self._data is None:
            from genlab.runs import load_data

            ds = load_data(self.b3.ddpm30.cfg(), "train")   # genlab's train split: the same images for all
            self._data = to_model(ds.x, LEVELS)
            log(f"peers' training data: genlab's train split, {len(ds):,} images")
        return self._data

    def record_name(self, variant: Variant, budget: float) -> str:
        return f"{variant.name}-{budget_text(budget, self.unit)}"

    def reference(self) -> dict:
        if self._ref is None:
            from genlab.eval import metrics as M
            from genlab.eval.evaluate import reference

            ref = reference("mnist", str(self.b3.mnist))
            self._ref = {**ref, "stats_test": M.feature_stats(ref["f_test"]),
                         "train_bytes": {bytes(r) for r in ref["train"].x.reshape(len(ref["train"].x), -1).numpy()}}
        return self._ref

    def evaluate(self, levels: np.ndarray) -> dict:
        from genlab.eval import metrics as M
        from genlab.eval.evaluate import check_samples

        ref = self.reference()
        x = check_samples(levels, "mnist", str(self.b3.mnist))
        f, p = ref["fx"](x, LEVELS)
        stats = M.feature_stats(f)
        prec, rec = M.precision_recall(ref["f_test"], f)
        cs = M.class_stats(p)
        flat = x.reshape(len(x), -1)
        dup = sum(bytes(r) in ref["train_bytes"] for r in flat) / len(x)
        fid = M.fid_from_stats(stats, ref["stats_test"])
        floor = self.results.get("_floor", {}).get("mean")
        return {"n": len(x), "fid_test": fid, "fid_train": M.fid_from_stats(stats, ref["stats_train"]),
                "floor_ratio": fid / floor if floor else None, "precision": prec, "recall": rec,
                "entropy": cs["entropy"], "confidence": cs["confidence"], "dup_fraction": dup,
                "featnet_test_accuracy": ref["fx"].test_accuracy}

    def row_stats(self, row: dict) -> dict:
        r = [e["floor_ratio"] for e in row["evals"] if e.get("floor_ratio") is not None]
        return {"floor_ratio": float(np.mean(r)) if r else None, "seeds": len(row["evals"])}

    def row_message(self, spec: RowSpec, row: dict) -> str:
        spread = f" +- {row['fid_std']:.3f} ({len(row['evals'])} seeds)" if row["fid_std"] is not None else ""
        ratio = f", {row['floor_ratio']:.2f}x the floor" if row.get("floor_ratio") else ""
        return (f"  row {spec.id}: FID vs test {row['fid']:.3f}{spread}{ratio}, precision {row['precision']:.3f}, "
                f"recall {row['recall']:.3f}, {row['nfe']} evals/sample, {row['seconds_per_1000']:.1f}s per 1000")

    def save(self) -> None:
        self.b3.save()


# ------------------------------------------------------------------------------------------------ B3

class B3:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.mnist, self.notmnist = Path(args.mnist).resolve(), Path(args.notmnist).resolve()
        if args.smoke:
            self.mnist, self.notmnist = make_smoke_data(self.mnist, self.notmnist, self.out / "smoke-data")
            self._smoke_featnet()
        self.smoke = args.smoke
        self.budgets = (5.0, 10.0) if args.smoke else (600.0, 1800.0)       # genlab lo, hi; the peers at hi
        self.compare_out = self.out / "compare"
        self.spec = self._spec()
        self.results = self._open()
        self._build_models()
        self.quality = QualityPart(self)
        self.costs = Costs(self)
        self._tests = {}

    # -------------------------------------------------------------- set-up
    def _smoke_featnet(self):
        """--smoke: a 1-epoch feature network on the small data copy, cached under --out (never the real one)."""
        from genlab.eval import features

        os.environ["GENLAB_CACHE"] = str(self.out / "cache")
        features.SPECS["mnist"] = dataclasses.replace(features.SPECS["mnist"], epochs=1, min_accuracy=0.5)

    def _spec(self):
        spec = C.load_spec("compare_mnist")
        spec.data = spec.data + [f"data.root={self.mnist}"]
        if self.args.smoke:
            spec.data.append("data.val_size=256")        # the smoke's validations stay short
        spec.overrides = spec.overrides + [f"train.num_threads={self.args.threads}", "train.device=cpu"]
        return spec

    def method(self, name: str):
        return next((m for m in self.spec.methods if m.name == name), None)

    def _compare_model(self, name: str, key: str, label: str, part: str) -> Model:
        m = self.method(name)
        if m is None:
            sys.exit(f"compare_mnist has no {name!r} method; B3 needs it")
        return Model(key, label, m.config, C.method_overrides(self.spec, m, self.smoke),
                     self.compare_out / "runs" / m.name, m.budget or self.spec.budget, part,
                     shared=f"compare_mnist's {name} run")

    def _own_model(self, key: str, label: str, config: str, budget: str, part: str, extra=(),
                   binarized=False) -> Model:
        m = C.MethodSpec(name=key, config=config, overrides=list(extra), budget=budget)
        return Model(key, label, config, C.method_overrides(self.spec, m, self.smoke), self.out / "runs" / key,
                     budget, part, binarized=binarized)

    def _build_models(self):
        self.ddpm30 = self._compare_model("ddpm_v", "ddpm", "DDPM v (mnist_ddpm), 30 min", "quality")
        if not self.smoke and abs(_duration(self.ddpm30.budget) - self.budgets[1]) > 1:
            log(f"warning: compare_mnist's ddpm_v budget is {self.ddpm30.budget}, not 30 minutes")
        self.ddpm10 = self._own_model("genlab-10min", "DDPM v (mnist_ddpm), 10 min", "mnist_ddpm", "10m", "quality")
        if self.smoke:                                  # the smoke's short run: fewer steps than the long one
            self.ddpm10.overrides.append("train.max_steps=3")
        # PixelCNN 60 min: compare_mnist's pixelcnn run when that entry has a 60-minute budget, else our own run
        pc = self.method("pixelcnn")
        if pc is not None and abs(_duration(pc.budget or self.spec.budget) - 3600) < 1:
            self.pixelcnn = self._compare_model("pixelcnn", "pixelcnn", "PixelCNN", "likelihood")
        else:
            self.pixelcnn = self._own_model("pixelcnn-60min", "PixelCNN", "mnist_pixelcnn", "60m", "likelihood")
        self.transformer = self._compare_model("transformer", "transformer", "causal transformer", "likelihood")
        self.oneshot = self._compare_model("oneshot", "oneshot", "one-shot (independent pixels)", "likelihood")
        # any-order AR trains in the ood part: with it the likelihood part would take about 3 hours (see --dry-run)
        self.any_order = self._compare_model("any_order", "any_order", "any-order AR", "ood")
        self.pixelcnn_bin = self._own_model("pixelcnn-bin-30min", "PixelCNN, binarized MNIST", "mnist_pixelcnn",
                                            "30m", "ood", extra=["data.binarize=true"], binarized=True)
        self.lik_models = [self.pixelcnn, self.transformer, self.any_order, self.oneshot, self.ddpm30]

    def _open(self) -> dict:
        a = self.args
        try:
            res = C.open_results(self.out, "quick" if a.smoke else "full", {"n": a.n, "sample_batch": a.sample_batch})
        except ValueError as e:
            sys.exit(str(e))
        for k in ("_bpd", "_parts"):
            res.setdefault(k, {})
        return res

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.results["_spec"] = {"benchmark": "B3", "data": "mnist", "eval_n": self.args.n,
                                 "order": record_order(self.results)}
        C.save_results(jsonable(self.results), self.out)

    def train_split_size(self, cfg) -> int:
        """Images in genlab's train split of this config: the train file minus the validation split."""
        from genlab.data.idx import FILES, find_idx_file

        if not hasattr(self, "_train_file_n"):
            with gzip.open(find_idx_file(self.mnist, FILES["train"][0], "mnist"), "rb") as f:
                self._train_file_n = int.from_bytes(f.read(8)[4:8], "big")
        return self._train_file_n - (cfg.data.val_size if cfg.data.val_size is not None else 5000)

    def test_set(self, which: str, binarized: bool = False):
        key = (which, binarized)
        if key not in self._tests:
            root = self.mnist if which == "mnist" else self.notmnist
            self._tests[key] = load_dataset("mnist", "test", root=root, binarize=binarized)
        return self._tests[key]

    # -------------------------------------------------------------- runs
    def status(self, model: Model) -> tuple[str, float]:
        """(finished | interrupted | to train, training seconds already used)."""
        from genlab.train import checkpoint as ck

        if C.is_finished(model.run_dir, model.cfg()):
            return "finished", 0.0
        if (model.run_dir / "checkpoints").is_dir() and not (model.run_dir / "done.json").exists():
            try:
                return "interrupted", float(ck.read_state(ck.resolve_checkpoint(model.run_dir, log=lambda m: None))
                                            ["time_used"])
            except (ck.CheckpointError, KeyError, OSError, ValueError):
                pass
        return "to train", 0.0

    def compare_dir(self) -> Path:
        """OUT/compare made ready for genlab compare (its marker) before B3 trains a shared run into it; a directory
        that holds only the runs/ B3 trained there gets the marker too."""
        d = self.compare_out
        if d.is_dir() and not (d / C.COMPARE_MARKER).exists() and {p.name for p in d.iterdir()} <= {"runs", "img"}:
            (d / C.COMPARE_MARKER).write_text(json.dumps({"written_by": "genlab compare", "files": list(C.WRITTEN)}))
        return C.prepare_out(d)

    def train(self, model: Model):
        if model.shared:
            self.compare_dir()
        torch.set_num_threads(self.args.threads)
        t = C.train_or_reuse(model.run_dir.name, model.config, model.overrides, model.run_dir.parent,
                             progress=False, budget_label=model.budget if not self.smoke else "a few steps (smoke)",
                             log_prefix="[b3]")
        torch.set_num_threads(self.args.threads)
        if t.trained:
            log(f"  trained {model.key} into {model.run_dir}")
        return t

    def load(self, model: Model):
        """(run, which): the best-validation checkpoint where the run has one, else the latest."""
        from genlab import runs as R

        which = "best" if C._has_best(model.run_dir) else "latest"
        return R.load_run(model.run_dir, which=which, device="cpu"), which

    # -------------------------------------------------------------- featnet and floor
    def featnet(self) -> dict:
        from genlab.eval.features import FeatureError, cache_present, default_cache_dir, load_featnet, train_featnet

        d = default_cache_dir() / "mnist-v1"
        if not cache_present(d):
            log(f"training the MNIST feature network (genlab featnet train --data mnist) into {d} ...")
            t0 = time.time()
            fx = train_featnet("mnist", root=self.mnist, log=log)
            log(f"  feature network trained in {time.time() - t0:.0f}s")
        else:
            try:
                fx = load_featnet("mnist", build=False, root=self.mnist, log=log)
            except FeatureError as e:
                sys.exit(str(e))
        info = {"test_accuracy": fx.test_accuracy, "seconds": fx.info.get("seconds"), "dir": str(d),
                "train_images": fx.info.get("train_images"), "test_images": fx.info.get("test_images")}
        old = self.results.get("_featnet")
        if old is not None and (old.get("test_accuracy"), old.get("seconds")) != (info["test_accuracy"],
                                                                                  info["seconds"]):
            log("the feature network changed: dropping every evaluation made with the old one")
            for k in [k for k in self.results if not k.startswith("_")]:
                self.results[k]["rows"] = {}
            self.results.pop("_floor", None)
            self.results.pop("_ar_fid", None)
        self.results["_featnet"] = info
        return info

    def floor(self) -> dict:
        """The real-vs-real floor at the same N: FID of 3 random subsets of N train images against the test
        statistics (seeds 0, 1, 2)."""
        from genlab.eval import metrics as M

        n = self.args.n
        fl = self.results.get("_floor")
        if fl and fl.get("n") == n:
            return fl
        ref = self.quality.reference()
        vals = []
        for s in range(3):
            idx = np.random.default_rng(s).choice(len(ref["f_train"]), n, replace=False)
            vals.append(M.fid_from_stats(M.feature_stats(ref["f_train"][idx]), ref["stats_test"]))
        fl = self.results["_floor"] = {"n": n, "values": vals, "mean": float(np.mean(vals)),
                                       "std": float(np.std(vals, ddof=1)), "train_images": len(ref["f_train"]),
                                       "test_images": len(ref["f_test"])}
        self.save()
        log(f"real-vs-real floor: FID of {n} train images vs the {len(ref['f_test'])} test images "
            f"{fl['mean']:.3f} +- {fl['std']:.3f} (3 subsets)")
        return fl

    # -------------------------------------------------------------- quality
    def quality_rows(self) -> list[RowSpec]:
        lo, hi = self.budgets
        u = self.quality.unit
        rows = []
        for b in (lo, hi):
            rows += [RowSpec(GENLAB, b, "ema", "dpmpp-2m", 10, True, u),
                     RowSpec(GENLAB, b, "ema", "dpmpp-2m", 20, True, u),
                     RowSpec(GENLAB, b, "ema", "ddim", 50, False, u)]
        for fam in FAMILIES[1:]:
            v = self.quality.variants(fam)[0]
            rows.append(RowSpec(v, hi, "ema", "ddim", 50, False, u))
        only = self.args.systems
        return [r for r in rows if not only or r.variant.family in only]

    def part_quality(self) -> None:
        missing = [missing_library(f) for f in {r.variant.family for r in self.quality_rows()} - {"genlab"}]
        if any(missing):
            sys.exit("\n".join(m for m in missing if m))
        self.compare_dir()                   # the 30-minute run is compare_mnist's ddpm_v, in OUT/compare/runs
        self.featnet()
        self.floor()
        for spec in self.quality_rows():
            self.quality.run_row(spec)

    # -------------------------------------------------------------- likelihood
    def mc_setting(self, model: Model, method_name: str, likelihood: str) -> tuple[int, Optional[int]]:
        """(images, draws) of a model's per-image bits/dim: all test images with no draws when exact, else the
        first --mc-images with the stated draws."""
        a = self.args
        if likelihood == "exact":
            return a.exact_images, None
        draws = {"diffusion": a.diffusion_timesteps, "any_order": a.any_order_draws}.get(method_name, 1)
        return a.mc_images, draws

    def train_id(self, run, which) -> str:
        return f"{which}:{run.state['step']}:{run.state['time_used']:.6f}"

    def per_image(self, model: Model, data: str, run=None, which=None) -> Optional[dict]:
        """Per-image bits/dim of ``data`` (mnist | notmnist test) under a finished model: cached in
        ``OUT/bpd/KEY-DATA.npy`` and results['_bpd']; None when the run is not finished."""
        from genlab.eval.likelihood import per_image_bits_per_dim

        if self.status(model)[0] != "finished":
            return None
        if run is None:
            run, which = self.load(model)
        n, draws = self.mc_setting(model, run.config.method, run.method.likelihood)
        ds = self.test_set(data, model.binarized)
        n = min(n, len(ds))
        key = f"{model.key}/{data}"
        tid = self.train_id(run, which)
        ent = self.results["_bpd"].get(key)
        path = self.out / "bpd" / f"{model.key}-{data}.npy"
        if ent and ent.get("train_id") == tid and ent.get("n") == n and ent.get("draws") == draws and path.is_file():
            return ent
        what = f"{n} images" + (f", {draws} draws per image" if draws else "")
        log(f"{model.key}: bits/dim of the {data} test set ({what}; {which} checkpoint, step {run.state['step']}) ...")
        torch.set_num_threads(self.args.threads)
        v, secs = per_image_bits_per_dim(run.method, run.model, ds.head(n), batch_size=self.args.bpd_batch,
                                         draws=draws, seed=0)
        v = v.numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, v.astype(np.float64))
        ent = self.results["_bpd"][key] = {
            "model": model.key, "data": data, "binarized": model.binarized, "train_id": tid, "which": which,
            "checkpoint": run.state["path"], "step": run.state["step"], "train_seconds": run.state["time_used"],
            "best_val": run.state.get("best_val"), "n": n, "draws": draws, "kind": run.method.likelihood,
            "method": run.config.method, "params": run.params(), "mean": float(v.mean()),
            "sem": float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0, "seconds": secs,
            "file": str(path.relative_to(self.out))}
        self.save()
        nats = f" = {v.mean() * DIMS * math.log(2):.2f} nats per image" if model.binarized else ""
        log(f"  {model.key} on {data}: {ent['mean']:.4f} +- {ent['sem']:.4f} bits/dim{nats} ({secs:.0f}s)")
        return ent

    def best_raster_ar(self) -> Optional[Model]:
        """The raster AR model with the lower MNIST test bits/dim, once both PixelCNN and the transformer have
        one (before that "best" would name whichever ran first)."""
        got = [(self.results["_bpd"].get(f"{m.key}/mnist"), m) for m in (self.pixelcnn, self.transformer)]
        missing = [m.key for e, m in got if not e]
        if missing:
            log(f"FID of the best raster AR: waiting for the test bits/dim of {', '.join(missing)}")
            return None
        return min(got, key=lambda em: em[0]["mean"])[1]

    def ar_fid(self) -> None:
        """FID of --ar-samples samples of the best raster AR model (genlab's sampling API, its defaults)."""
        import genlab.api
        from peers.common import to_levels

        m = self.best_raster_ar()
        if m is None:
            return
        ent = self.results["_bpd"][f"{m.key}/mnist"]
        n = self.args.ar_samples
        old = self.results.get("_ar_fid")
        if old and old.get("model") == m.key and old.get("train_id") == ent["train_id"] and old.get("n") == n:
            return
        self.featnet()
        self.floor()
        log(f"sampling {n} images of the best raster AR model ({m.key}, {ent['which']} checkpoint) ...")
        torch.set_num_threads(self.args.threads)
        t0 = time.perf_counter()
        x, nfe, _ = genlab.api.sample(m.run_dir, n=n, seed=0, which=ent["which"], device="cpu", progress=False)
        secs = time.perf_counter() - t0
        levels = to_levels(x, LEVELS)
        from genlab.report.images import save_grid

        save_grid(to_model(levels[:64], LEVELS), self.out / "grids" / f"{m.key}_best-ar.png", nrow=8)
        ev = self.quality.evaluate(levels.numpy())
        self.results["_ar_fid"] = {"model": m.key, "label": m.label, "train_id": ent["train_id"], "which": ent["which"],
                                   "n": n, "nfe": nfe, "sample_s": secs, "seconds_per_1000": secs * 1000 / n,
                                   **jsonable(ev)}
        self.save()
        log(f"  {m.key}: FID vs test {ev['fid_test']:.3f} ({ev['floor_ratio']:.2f}x the floor), {nfe} evals per "
            f"sample, {secs:.0f}s for {n}")

    def chosen(self, models: list) -> list:
        """--models: only these of ``models`` (by key), to split the likelihood and ood parts over sessions."""
        only = self.args.models
        return [m for m in models if not only or m.key in only]

    def part_likelihood(self) -> None:
        for m in self.chosen(self.lik_models):
            if m.part == "likelihood":
                self.train(m)
        for m in self.chosen(self.lik_models):
            if self.per_image(m, "mnist") is None:
                log(f"{m.key}: not trained yet (its run is trained by --part {m.part}); its row stays empty")
        self.ar_fid()

    # -------------------------------------------------------------- ood
    def part_ood(self) -> None:
        for m in self.chosen([self.any_order, self.pixelcnn_bin]):
            self.train(m)
        for m in self.chosen(self.lik_models + [self.pixelcnn_bin]):
            got = self.per_image(m, "mnist")
            if got is None:
                log(f"{m.key}: not trained yet (its run is trained by --part {m.part}); left out of the OOD table")
                continue
            self.per_image(m, "notmnist")

    def ood_rows(self) -> list[dict]:
        rows = []
        for m in self.lik_models + [self.pixelcnn_bin]:
            a, b = self.results["_bpd"].get(f"{m.key}/mnist"), self.results["_bpd"].get(f"{m.key}/notmnist")
            if not a or not b or a["train_id"] != b["train_id"]:
                continue
            va, vb = np.load(self.out / a["file"]), np.load(self.out / b["file"])
            rows.append({"model": m, "mnist": a, "notmnist": b, "auroc": auroc(va, vb),
                         "frac_below": float(np.mean(vb < np.median(va)))})
        return rows

    # -------------------------------------------------------------- compare
    def compare_methods_status(self) -> list[tuple]:
        out = []
        for m in self.spec.methods:
            model = self._compare_model(m.name, m.name, m.label or m.name, "compare")
            out.append((m, model, self.status(model)))
        return out

    def part_compare(self) -> None:
        for m, _, (st, used) in self.compare_methods_status():
            log(f"compare: {m.name}: {'reused (finished with the same config)' if st == 'finished' else st}"
                + (f" at {_mins(used)}" if st == "interrupted" else ""))
        only = self.args.compare_only or (list(SMOKE_COMPARE) if self.smoke else None)
        self.compare_dir()
        torch.set_num_threads(self.args.threads)
        path = C.run(self.spec, self.compare_out, quick=self.smoke, only=only, progress=False)
        self.results["_compare"] = {"report": str(path / "README.md"), "index": str(path / "index.html"),
                                    "only": only, "quick": self.smoke,
                                    "date": datetime.datetime.now().isoformat(timespec="seconds")}
        self.save()
        log(f"compare report: {path / 'README.md'}")

    # -------------------------------------------------------------- run a part
    def run_part(self, part: str) -> None:
        t0 = time.time()
        log(f"=== B3 part {part} ===")
        getattr(self, f"part_{part}")()
        wall = time.time() - t0
        self.results["_parts"][part] = {"wall_s": wall, "date": datetime.datetime.now().isoformat(timespec="seconds"),
                                        "threads": self.args.threads, "smoke": self.smoke}
        self.save()
        log(f"=== part {part} done in {_mins(wall)} ===")

    # -------------------------------------------------------------- dry run
    def genlab_train_s(self, model: Model) -> tuple[float, str]:
        st, used = self.status(model)
        if st == "finished":
            return 0.0, "finished (reused)"
        cfg = model.cfg()
        step = self.costs.step_s(model)
        if cfg.train.time_budget:
            left = max(_duration(cfg.train.time_budget) - used, 0.0)
            steps = left / step
        else:
            steps = cfg.train.max_steps
            left = steps * step
        val_n = cfg.data.val_size if cfg.data.val_size is not None else 5000
        vals = (steps // cfg.train.val_every + 1) if cfg.train.val_every else 1
        val_s = vals * val_n * step / cfg.train.batch_size / 3           # a forward pass ~ 1/3 of a step
        what = f"{st}{f' at {_mins(used)}' if used else ''}: {_mins(left)} of steps (~{steps:.0f} steps) + " \
               f"{vals:.0f} validations on {val_n} images ~{_mins(val_s)}"
        return left + val_s + 15, what

    def lik_eval_s(self, model: Model, data: str) -> tuple[float, str]:
        from genlab.methods import get_method

        key = f"{model.key}/{data}"
        ent = self.results["_bpd"].get(key)
        cfg = model.cfg()
        meth = get_method(cfg)
        n, draws = self.mc_setting(model, cfg.method, meth.likelihood)
        if ent and ent.get("n") == n and ent.get("draws") == draws and self.status(model)[0] == "finished":
            return 0.0, f"{key}: cached"
        n = min(n, len(self.test_set(data, model.binarized)))
        s = self.costs.ll_s(model) * n * (draws or 1)
        return s, f"{key}: {n} images x {draws or 1} passes"

    def plan(self, part: str) -> list[tuple[str, float]]:
        """(what, estimated seconds) of the work of a part that is not cached."""
        a = self.args
        items = []
        if part == "quality":
            from genlab.eval.features import cache_present, default_cache_dir

            if not cache_present(default_cache_dir() / "mnist-v1"):
                items.append(("feature network (4 epochs of the train file)", self.costs.featnet_s()))
            else:
                items.append((f"feature network: cached in {default_cache_dir() / 'mnist-v1'}", 0.0))
            if not self.results.get("_floor") or self.results["_floor"].get("n") != a.n:
                items.append(("real-vs-real floor and reference features (70,000 images)", 40.0))
            lo, hi = self.budgets
            for model in (self.ddpm10, self.ddpm30):
                s, what = self.genlab_train_s(model)
                items.append((f"train {model.key}: {what}", s))
            for fam in FAMILIES[1:]:
                if self.args.systems and fam not in self.args.systems:
                    continue
                if missing_library(fam):
                    items.append((missing_library(fam), hi + 15))
                    continue
                v = self.quality.variants(fam)[0]
                sysm = self.quality.system(fam)
                if cached_record(self.quality.peer_dir(v, hi), signature(sysm, v, hi)) is None:
                    steps = hi / self.costs.peer_step_s(fam)
                    items.append((f"train {v.name} ({self.quality.describe(fam)['params']:,} parameters): "
                                  f"{_mins(hi)} (~{steps:.0f} steps of batch 128)", hi + 15))
                else:
                    items.append((f"train {v.name}: finished (reused)", 0.0))
            n_rows = 0
            for spec in self.quality_rows():
                name = self.quality.record_name(spec.variant, spec.budget)
                r = self.results.get(name, {}).get("rows", {}).get(C.row_key(spec.opts))
                need = max((a.seeds if spec.key else 1) - (len(r["evals"]) if r else 0), 0)
                if need and spec.variant.family != "genlab" and missing_library(spec.variant.family):
                    items.append((f"sample {spec.id}: needs {spec.variant.family}'s library (above)", 0.0))
                elif need:
                    fwd = self.costs.fwd_s(spec.variant.family, min(a.sample_batch, a.n))
                    s = need * spec.steps * a.n * fwd
                    items.append((f"sample {spec.id}: {need} seed(s) x {a.n} x {spec.steps} evals", s))
                    n_rows += need
                else:
                    items.append((f"sample {spec.id}: cached", 0.0))
            if n_rows:
                items.append((f"evaluate {n_rows} sample sets", n_rows * self.costs.eval_s(a.n, 10_000)))
        elif part in ("likelihood", "ood"):
            own = [m for m in self.lik_models + [self.pixelcnn_bin] if m.part == part]
            for m in own:
                s, what = self.genlab_train_s(m)
                items.append((f"train {m.key} ({m.budget}{', ' + m.shared if m.shared else ''}): {what}", s))
            if part == "likelihood":
                for m in self.lik_models:
                    if not self.before(m, part):
                        items.append((f"{m.key}: trained by --part {m.part}, evaluated there", 0.0))
                        continue
                    s, what = self.lik_eval_s(m, "mnist")
                    items.append((what, s))
                fid = self.results.get("_ar_fid")
                if not fid or fid.get("n") != a.ar_samples:
                    per = max(self.costs.sample_s(self.pixelcnn, {}), self.costs.sample_s(self.transformer, {}))
                    items.append((f"sample {a.ar_samples} images of the best raster AR (the slower of PixelCNN and "
                                  f"the transformer, measured at batch 16) + evaluation",
                                  per * a.ar_samples + self.costs.eval_s(a.ar_samples, 10_000)))
            else:
                for m in self.lik_models + [self.pixelcnn_bin]:
                    # MNIST test: by the likelihood part for the models it sees, here for the others
                    for data in ("mnist", "notmnist") if m.part == "ood" else ("notmnist",):
                        s, what = self.lik_eval_s(m, data)
                        items.append((what, s))
        elif part == "compare":
            items += self.compare_plan()
        return [(w, s) for w, s in items]

    def shared_models(self) -> list[Model]:
        return [m for m in (self.ddpm30, self.pixelcnn, self.transformer, self.oneshot, self.any_order) if m.shared]

    def before(self, model: Model, part: str) -> bool:
        """Whether the model's run exists when ``part`` runs: finished, or trained by this or an earlier part
        (the estimates assume the parts run in order)."""
        return self.status(model)[0] == "finished" or PARTS.index(model.part) <= PARTS.index(part)

    def compare_plan(self) -> list[tuple[str, float]]:
        from genlab.methods import get_method

        spec = self.spec
        ev = dict(spec.eval)
        if self.smoke:
            ev.update(spec.quick.get("eval", {}))
        cres = C.load_results(self.compare_out) if (self.compare_out / "results.json").exists() else {}
        only = self.args.compare_only or (list(SMOKE_COMPARE) if self.smoke else None)
        items = []
        n_train_real = 60_000
        for m, model, (st, used) in self.compare_methods_status():
            if only and m.name not in only:
                continue
            b3m = next((b for b in self.shared_models() if b.run_dir == model.run_dir), None)
            if b3m is not None and b3m.part != "compare" and st != "finished":
                items.append((f"compare {m.name}: train: reused, trained by --part {b3m.part}", 0.0))
            else:
                s, what = self.genlab_train_s(model)
                items.append((f"compare {m.name}: train {what}", s))
            rec = cres.get(m.name, {}) if st == "finished" else {}
            cfg = model.cfg()
            meth = get_method(cfg)
            if "test_bpd" not in rec and meth.likelihood != "none":
                n = ev["bpd_images"] or len(self.test_set("mnist"))
                draws = C._draws(ev, cfg.method) if meth.likelihood != "exact" else 1
                if draws is None:
                    draws = cfg.diffusion.timesteps if cfg.method == "diffusion" else (meth.likelihood_draws or 1)
                items.append((f"compare {m.name}: test bits/dim on {n} images x {draws} draws",
                              self.costs.ll_s(model) * n * draws))
            for opts in m.samplers:
                if C.row_key(opts) in rec.get("rows", {}):
                    continue
                per = self.costs.sample_s(model, opts)
                items.append((f"compare {m.name}: sample {ev['n']} x {ev['seeds']} seed(s) with {opts or 'defaults'} "
                              f"+ evaluation against {n_train_real:,} train features",
                              ev["seeds"] * (ev["n"] * per + self.costs.eval_s(ev["n"], n_train_real))))
            if "pictures" not in rec:
                first = self.costs.sample_s(model, m.samplers[0])
                last = self.costs.sample_s(model, m.samplers[-1])
                items.append((f"compare {m.name}: sample grids and process picture",
                              ev["grid_n"] * (first + last) + 4 * first))
        return items

    def dry_run(self, parts) -> None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        log("the estimates assume the parts run in order (quality, likelihood, ood, compare): a part reuses the "
            "runs of the parts before it")
        log(f"measuring costs on {self.args.threads} threads (load average {load:.1f}; a busy machine inflates "
            "them) ...")
        for part in parts:
            items = self.plan(part)
            total = sum(s for _, s in items)
            log(f"\n--- part {part}: about {_mins(total)} of work not cached"
                + (f"  ** over the {PART_LIMIT_MIN}-minute limit **" if total > PART_LIMIT_MIN * 60 else ""))
            for what, s in items:
                log(f"  {_mins(s):>10}  {what}")
            if part == "compare":
                per = {}
                for what, s in items:
                    name = what.split(":")[0].split()[-1]
                    per[name] = per.get(name, 0.0) + s
                log("  per method (to split it with --compare-only, each call under the limit): "
                    + ", ".join(f"{k} {_mins(v)}" for k, v in per.items()))
        log("\nmeasured: " + "; ".join(self.costs.shown))


# ------------------------------------------------------------------------------------------------ outputs

def quality_rows(results: dict) -> list[dict]:
    """compare's table rows of the quality records, with each training's fields."""
    order = {n: i for i, n in enumerate(record_order(results))}
    samp = {"dpmpp-2m": 0, "ddim": 1}
    rows = []
    for r in C.table_rows({**results, "_spec": {"order": list(order)}}):
        rec = results[r["name"]]
        unit = "min" if rec["budget"] >= 60 else "s"
        rows.append({**r, "system": rec["family"], "variant": rec["variant"], "budget": rec["budget"],
                     "budget_text": budget_text(rec["budget"], unit), "steps_trained": rec["steps"],
                     "images_seen": rec["images"], "sampler_name": r["opts"]["sampler"],
                     "sampler_steps": r["opts"]["steps"],
                     "curve": f"{rec['label']} {budget_text(rec['budget'], unit)}"})
    return sorted(rows, key=lambda r: (order[r["name"]], samp.get(r["sampler_name"], 9), r["sampler_steps"]))


def _fid_cell(r: dict) -> str:
    s = _fmt(r["fid"])
    if r.get("fid_std") is not None:
        s += f" ± {r['fid_std']:.3f}"
    return s


TRAINING_COLUMNS = [
    ("label", "system"), ("recipe", "recipe"), ("lr", "LR", lambda t: f"{t['lr']:g}"),
    ("params", "parameters", lambda t: f"{t['params']:,}"), ("batch_size", "batch"),
    ("budget", "budget", lambda t: budget_text(t["budget"], "min" if t["budget"] >= 60 else "s")),
    ("steps", "steps", lambda t: f"{t['steps']:,}"), ("images", "images seen", lambda t: f"{t['images']:,}"),
    ("steps_per_s", "steps/s", lambda t: f"{t['steps'] / max(t['time_used'], 1e-9):.2f}"),
    ("final_loss", "final loss", lambda t: _fmt(t.get("final_loss"), 4)),
    ("ckpt", "checkpoint sampled", lambda t: "latest (final)" if t["family"] == "genlab" else "final weights")]

ROW_COLUMNS = [
    ("variant", "system"), ("budget", "budget", lambda r: r["budget_text"]),
    ("steps_trained", "steps", lambda r: f"{r['steps_trained']:,}"),
    ("sampler", "sampler", lambda r: f"{r['sampler_name']}-{r['sampler_steps']} (EMA)"), ("nfe", "evals/sample"),
    ("seeds", "seeds", lambda r: str(len(r["evals"]))), ("fid", "FID vs test", _fid_cell),
    ("floor_ratio", "x floor", lambda r: _fmt(r.get("floor_ratio"), 2)),
    ("fid_train", "FID vs train", lambda r: _fmt(r["fid_train"])),
    ("precision", "precision", lambda r: _fmt(r["precision"])), ("recall", "recall", lambda r: _fmt(r["recall"])),
    ("entropy", "class entropy", lambda r: _fmt(r["entropy"])),
    ("confidence", "confidence", lambda r: _fmt(r["confidence"])),
    ("dup_fraction", "dup", lambda r: _fmt(r["dup_fraction"])),
    ("seconds_per_1000", "s per 1000", lambda r: f"{r['seconds_per_1000']:.1f}")]


def quality_targets(results: dict, rows: list[dict]) -> list[str]:
    fl = results.get("_floor")
    if not rows or not fl:
        return []
    budgets = sorted({r["budget"] for r in rows if r["system"] == "genlab"})
    if not budgets:
        return []
    lo, hi = budgets[0], budgets[-1]
    floor = fl["mean"]
    L = ["### Targets", ""]
    g_lo = [r for r in rows if r["system"] == "genlab" and r["budget"] == lo and r["nfe"] <= 20]
    peers = [r for r in rows if r["system"] != "genlab" and r["sampler_name"] == "ddim" and r["sampler_steps"] == 50]

    def verdict(ok):
        return "**pass**" if ok else "**fail**"

    if g_lo:
        g = min(g_lo, key=lambda r: r["fid"])
        if peers:
            p = min(peers, key=lambda r: r["fid"])
            L.append(f"- genlab at {g['budget_text']} with <= 20 evaluations (best: {g['sampler_name']}-"
                     f"{g['sampler_steps']}, FID {g['fid']:.3f}) at least as good as the best peer at "
                     f"{p['budget_text']} with DDIM-50 ({p['variant']}, FID {p['fid']:.3f}): "
                     f"{verdict(g['fid'] <= p['fid'])}")
        else:
            L.append("- genlab at the short budget vs the best peer: no peer rows yet")
        L.append(f"- genlab at {g['budget_text']} with <= 20 evaluations within 5x of the floor ({floor:.3f}): "
                 f"FID {g['fid']:.3f} = {g['fid'] / floor:.2f}x: {verdict(g['fid'] <= 5 * floor)}")
    g_hi = [r for r in rows if r["system"] == "genlab" and r["budget"] == hi]
    if g_hi and hi != lo:
        g = min(g_hi, key=lambda r: r["fid"])
        L.append(f"- genlab at {g['budget_text']} within 2x of the floor: best row {g['sampler_name']}-"
                 f"{g['sampler_steps']}, FID {g['fid']:.3f} = {g['fid'] / floor:.2f}x: "
                 f"{verdict(g['fid'] <= 2 * floor)}")
    return L + [""]


def curve_unit(method: str, binarized: bool) -> tuple[str, Optional[float]]:
    """(what a run's validation loss is, factor to bits/dim or None when it is not bits/dim)."""
    if method in ("autoregressive", "oneshot"):
        if binarized:
            return "nats per image (exact, binarized)", DIMS * math.log(2)
        return "bits/dim (exact)", 1.0
    if method == "any_order":
        return "bits/dim (one-draw estimate per image)", 1.0
    if method == "masked_diffusion":
        return "bits/dim (one-draw bound)", 1.0
    if method == "diffusion":
        return "min-SNR-weighted v-prediction MSE: not bits/dim", None
    return "training loss (not bits/dim)", None


def read_curve(run_dir: Path) -> list[tuple[float, float]]:
    pts = []
    try:
        for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line) if line.strip() else {}
            if "val_loss" in rec:
                pts.append((rec.get("time_used", 0.0), rec["val_loss"]))
    except (OSError, ValueError):
        pass
    return pts


def plot_curves(b3: B3, path: Path) -> Optional[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"bpd": [], "diff": [], "bin": []}
    for m in b3.lik_models + [b3.pixelcnn_bin]:
        if b3.status(m)[0] != "finished":
            continue
        cfg = m.cfg()
        unit, factor = curve_unit(cfg.method, m.binarized)
        pts = read_curve(m.run_dir)
        if not pts:
            continue
        key = "bin" if m.binarized else ("bpd" if factor is not None else "diff")
        panels[key].append((m, unit, factor or 1.0, pts))
    if not any(panels.values()):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=110)
    titles = {"bpd": "validation bits/dim (8-bit MNIST)", "diff": "diffusion: validation loss (NOT bits/dim)",
              "bin": "binarized MNIST: validation NLL"}
    for ax, (k, lines) in zip(axes, panels.items()):
        for m, unit, f, pts in lines:
            ax.plot([t / 60 for t, _ in pts], [v * f for _, v in pts], "o-", ms=3, label=f"{m.label} [{unit}]")
        ax.set_title(titles[k], fontsize=9)
        ax.set_xlabel("training time (min, steps only)")
        ax.set_ylabel({"bpd": "bits/dim", "diff": "weighted MSE", "bin": "nats per image"}[k])
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "not trained yet", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    fig.suptitle(f"B3 MNIST: learning curves on the validation split ({b3.args.threads} CPU threads)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_fid(b3: B3, rows: list[dict], path: Path) -> Optional[Path]:
    res = b3.results
    if not rows:
        return None
    rows = list(rows)
    ar = res.get("_ar_fid")
    if ar:
        rows.append({"name": ar["model"], "label": ar["label"], "sampler": "ancestral", "nfe": ar["nfe"],
                     "fid": ar["fid_test"], "curve": f"{ar['label']} (best raster AR)"})
    fl = res.get("_floor")
    n = res["_eval"]["n"]
    return C.fid_nfe_plot(rows, path, label_key="curve", title=f"B3 MNIST: FID vs network evaluations "
                          f"({b3.args.threads} CPU threads)", ylabel=f"FID vs MNIST test ({n} samples, MNIST featnet)",
                          reference=(fl["mean"], f"real-vs-real floor ({fl['n']} train vs test)") if fl else None)


def plot_samples(b3: B3, rows: list[dict], path: Path) -> Optional[Path]:
    """One panel per training (its best row's grid), plus the best raster AR."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    pics = []
    best = {}
    for r in rows:
        if r["name"] not in best or r["fid"] < best[r["name"]]["fid"]:
            best[r["name"]] = r
    unit = "s" if b3.smoke else "min"
    for r in best.values():
        rid = f"{r['variant']}@{budget_text(r['budget'], unit)}/ema/{r['sampler_name']}-{r['sampler_steps']}"
        p = b3.out / "grids" / (rid.replace("/", "_") + ".png")
        if p.is_file():
            pics.append((p, f"{r['variant']} {r['budget_text']}\n{r['sampler_name']}-{r['sampler_steps']}, "
                            f"FID {r['fid']:.2f}"))
    ar = b3.results.get("_ar_fid")
    if ar and (b3.out / "grids" / f"{ar['model']}_best-ar.png").is_file():
        pics.append((b3.out / "grids" / f"{ar['model']}_best-ar.png",
                     f"{ar['label']}\n{ar['nfe']} evals, FID {ar['fid_test']:.2f}"))
    if not pics:
        return None
    fig, axes = plt.subplots(1, len(pics), figsize=(2.6 * len(pics), 3.0), dpi=110, squeeze=False)
    for ax, (p, title) in zip(axes[0], pics):
        ax.imshow(np.asarray(Image.open(p)), cmap="gray", interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _draws_cell(r: dict) -> str:
    e = r["e"]
    if not e or not e["draws"]:
        return "-"
    return f"{e['draws']}" + (" timesteps" if e["method"] == "diffusion" else "")


def write_markdown(b3: B3, path: Path) -> None:
    from importlib.metadata import version

    from throughput import machine

    a, res = b3.args, b3.results
    info = machine()
    versions = {}
    for mod in ("diffusers", "denoising-diffusion-pytorch", "ema-pytorch"):
        try:
            versions[mod] = version(mod)
        except Exception:
            versions[mod] = "not installed"
    parts = ", ".join(f"{k} {_mins(v['wall_s'])} ({v['date']})" for k, v in res["_parts"].items()) or "none yet"
    smoke = " (--smoke: NOT a result)" if b3.smoke else ""
    L = [f"# B3 MNIST: quality per budget, likelihood, out of distribution{smoke}",
         "", "- protocol: benchmarks/README.md, B3; script: benchmarks/b3_mnist.py",
         f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}; parts run (wall clock): {parts}",
         f"- machine: {info['cpu']} ({info['cpu_count']} CPUs, {info['usable_cpus']} usable), {a.threads} torch "
         f"threads, {info['platform']}, python {info['python']}",
         f"- torch {torch.__version__}; " + ", ".join(f"{k} {v}" for k, v in versions.items()),
         f"- data: MNIST IDX files in {b3.mnist}, notMNIST test set in {b3.notmnist}; every system trains on "
         f"genlab's train split (the train file minus genlab's validation split, split seed 0: "
         f"{b3.train_split_size(b3.ddpm30.cfg()):,} images{'; smoke: a small copy' if b3.smoke else ''}); budgets "
         "are wall clock of training steps only, the same timer for all", ""]
    # ---- quality
    fx, fl = res.get("_featnet"), res.get("_floor")
    rows = quality_rows(res)
    L += ["## Quality per training budget (`--part quality`)", ""]
    if fx:
        L.append(f"- feature network: genlab's MNIST featnet (trained on the {fx.get('train_images') or '?'} "
                 f"train-file images only), test accuracy {fx['test_accuracy']:.4f}")
    n = res["_eval"]["n"]
    L.append(f"- FID of {n} samples per seed against the statistics of the {fl['test_images'] if fl else '?'} MNIST "
             f"test images; key rows (genlab DPM-Solver++(2M) 10 and 20) over {a.seeds} sampling seeds (mean ± std), "
             f"others one seed; all rows EMA weights")
    if fl:
        L.append(f"- real-vs-real floor: FID of {fl['n']} random train images vs test, "
                 f"{fl['mean']:.3f} ± {fl['std']:.3f} over 3 subsets ({', '.join(f'{v:.3f}' for v in fl['values'])}); "
                 "'x floor' is FID / this mean")
    recs = [res[k] for k in record_order(res)]
    if recs:
        L += ["", "### Trainings", "", C.markdown_table(recs, TRAINING_COLUMNS)]
        L += [f"- {t['label']}: {t['details']}" for t in {t["family"]: t for t in recs}.values()] + [""]
        L += ["### Rows", "", C.markdown_table(rows, ROW_COLUMNS)]
        labels = sorted({f"{r['system']}: {r['sampler_label']}" for r in rows if r["system"] != "genlab"})
        L += ["Peers' samplers: " + "; ".join(labels), ""] if labels else []
        L += quality_targets(res, rows)
    else:
        L += ["", "Not run yet.", ""]
    # ---- likelihood
    L += ["## Test likelihood (`--part likelihood`; any-order AR is trained by `--part ood`)", ""]
    lrows = []
    for m in b3.lik_models:
        e = res["_bpd"].get(f"{m.key}/mnist")
        lrows.append({"m": m, "e": e})
    L += [f"- bits/dim of 8-bit MNIST test images (256 levels, -log2 p / 784); exact ones on the first "
             f"{a.exact_images} test images, Monte Carlo ones on the first {a.mc_images} (standard error over images "
             f"includes the Monte Carlo noise); checkpoint: the best validation loss where the run has one", ""]
    cols = [("model", "model", lambda r: r["m"].label), ("run", "run", lambda r: r["m"].shared or r["m"].run_dir.name),
            ("budget", "budget", lambda r: r["m"].budget if not b3.smoke else "smoke steps"),
            ("kind", "likelihood", lambda r: r["e"]["kind"] if r["e"] else "-"),
            ("bpd", "test bits/dim", lambda r: f"{r['e']['mean']:.4f} ± {r['e']['sem']:.4f}" if r["e"] else
             ("not evaluated yet (--part likelihood)" if b3.status(r["m"])[0] == "finished"
              else f"not trained yet (--part {r['m'].part})")),
            ("n", "images", lambda r: str(r["e"]["n"]) if r["e"] else "-"),
            ("draws", "draws per image", _draws_cell),
            ("ckpt", "checkpoint", lambda r: f"{r['e']['which']} (step {r['e']['step']:,}, "
             f"{_mins(r['e']['train_seconds'])} trained)" if r["e"] else "-"),
            ("params", "parameters", lambda r: f"{r['e']['params']:,}" if r["e"] else "-"),
            ("secs", "eval s", lambda r: f"{r['e']['seconds']:.0f}" if r["e"] else "-")]
    L += [C.markdown_table(lrows, cols)]
    ar_best = b3.best_raster_ar()
    if ar_best:
        e = res["_bpd"][f"{ar_best.key}/mnist"]
        L.append(f"- target: best raster AR ({ar_best.label}) <= {BPD_TARGET} bits/dim: {e['mean']:.4f}: "
                 f"**{'pass' if e['mean'] <= BPD_TARGET else 'fail'}**")
    ar = res.get("_ar_fid")
    if ar:
        L.append(f"- FID of {ar['n']} samples of the best raster AR ({ar['label']}, {ar['which']} checkpoint, genlab's "
                 f"sampler defaults): {ar['fid_test']:.3f} vs MNIST test ({_fmt(ar.get('floor_ratio'), 2)}x the "
                 "floor), "
                 f"precision {ar['precision']:.3f}, recall {ar['recall']:.3f}, {ar['nfe']} evals per sample, "
                 f"{ar['seconds_per_1000']:.0f} s per 1000 samples on {a.threads} threads")
    L += ["- learning curves: `b3_bpd_curves.png` (validation loss vs training minutes from each run's metrics.jsonl; "
          "the diffusion run's validation loss is its weighted MSE, not bits/dim)", ""]
    L += ["### Published references (other budgets and hardware; not comparable run for run, never mixed in above)", "",
          "| model | data | reported |", "|---|---|---|"]
    L += [f"| {a_} | {b_} | {c_} |" for a_, b_, c_ in REFERENCES] + [""]
    # ---- ood
    L += ["## Out of distribution: notMNIST under models trained on MNIST (`--part ood`)", ""]
    eb = res["_bpd"].get(f"{b3.pixelcnn_bin.key}/mnist")
    if eb:
        L.append(f"- binarized-MNIST PixelCNN ({'smoke steps' if b3.smoke else b3.pixelcnn_bin.budget}, pixels "
                 f"thresholded at 128, {eb['which']} checkpoint, step {eb['step']:,}): test NLL "
                 f"{eb['mean'] * DIMS * math.log(2):.2f} ± {eb['sem'] * DIMS * math.log(2):.2f} nats per image "
                 f"(sum over 784 binary pixels; {eb['n']} test images); published PixelCNN: 81.30 nats")
    orows = b3.ood_rows()
    if orows:
        L.append("- per-image bits/dim as the OOD score (MNIST test = negatives, notMNIST test = positives; AUROC 1 = "
                 "notMNIST always less likely, 0.5 = no separation, below 0.5 = notMNIST judged MORE likely)")
        ocols = [("model", "model", lambda r: r["model"].label),
                 ("data", "data", lambda r: "binarized" if r["model"].binarized else "8-bit"),
                 ("n", "images MNIST / notMNIST", lambda r: f"{r['mnist']['n']} / {r['notmnist']['n']}"),
                 ("a", "MNIST bits/dim", lambda r: f"{r['mnist']['mean']:.4f}"),
                 ("b", "notMNIST bits/dim", lambda r: f"{r['notmnist']['mean']:.4f}"),
                 ("auroc", "AUROC", lambda r: f"{r['auroc']:.4f}"),
                 ("below", "notMNIST below the MNIST median", lambda r: f"{r['frac_below']:.3f}"),
                 ("ckpt", "checkpoint", lambda r: f"{r['mnist']['which']} (step {r['mnist']['step']:,})")]
        L += ["", C.markdown_table(orows, ocols)]
    else:
        L += ["Not run yet.", ""]
    # ---- compare
    L += ["## The B2 question at 28x28 (`--part compare`)", ""]
    cmp_ = res.get("_compare")
    L += [f"- report: {cmp_['report']} (and {cmp_['index']}); written {cmp_['date']}"
          + (f", methods {cmp_['only']} only" if cmp_.get("only") else "") if cmp_ else "Not run yet.", ""]
    L += ["## Figures", "", "- `b3_fid_vs_nfe.png`: FID vs network evaluations",
          "- `b3_bpd_curves.png`: learning curves",
          "- `b3_samples.png` and `grids/*.png`: samples (first 64 of each row)", ""]
    path.write_text("\n".join(L) + "\n")


def report(b3: B3) -> None:
    b3.save()
    rows = quality_rows(b3.results)
    out = b3.out
    made = [p for p in (plot_fid(b3, rows, out / "b3_fid_vs_nfe.png"), plot_curves(b3, out / "b3_bpd_curves.png"),
                        plot_samples(b3, rows, out / "b3_samples.png")) if p]
    write_markdown(b3, out / "b3.md")
    log(f"wrote {out / 'b3.md'}" + "".join(f", {p}" for p in made))
    if b3.args.copy_docs:
        for name in ("b3_fid_vs_nfe.png", "b3_bpd_curves.png"):
            if (out / name).is_file():
                shutil.copyfile(out / name, REPO / "docs" / name)
                log(f"copied {name} to {REPO / 'docs'}")


# ------------------------------------------------------------------------------------------------ main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default=None, help=f"comma-separated parts to run, in order: {', '.join(PARTS)} or all "
                    "(default with --dry-run: all; without: none, only the report is rewritten)")
    ap.add_argument("--out", default=None, help="output directory (default bench_out/b3)")
    ap.add_argument("--mnist", default=str(REPO.parent / "shared" / "data" / "mnist"),
                    help="directory of the four MNIST IDX files (passed to genlab as data.root)")
    ap.add_argument("--notmnist", default=str(REPO.parent / "shared" / "data" / "notmnist"),
                    help="directory of the notMNIST test set in MNIST's IDX format (t10k-*-ubyte.gz)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 2; --smoke 1)")
    ap.add_argument("--n", type=int, default=None, help="samples per quality row and floor subset (default 2000)")
    ap.add_argument("--seeds", type=int, default=None, help="sampling seeds of the key rows (default 3)")
    ap.add_argument("--sample-batch", type=int, default=200, help="sampling batch of the quality rows")
    ap.add_argument("--exact-images", type=int, default=None, help="test images of exact likelihoods (default 10000)")
    ap.add_argument("--mc-images", type=int, default=None,
                    help="test images of Monte Carlo likelihoods: diffusion bound, any-order (default 2000)")
    ap.add_argument("--diffusion-timesteps", type=int, default=None, help="random timesteps per image of the "
                    "diffusion bound (default 50)")
    ap.add_argument("--any-order-draws", type=int, default=None, help="draws per image of any-order AR (default 10)")
    ap.add_argument("--ar-samples", type=int, default=None, help="samples of the best raster AR for its FID "
                    "(default 2000)")
    ap.add_argument("--bpd-batch", type=int, default=100, help="batch of the likelihood passes")
    ap.add_argument("--compare-only", nargs="*", default=None, metavar="METHOD",
                    help="--part compare: only these compare_mnist methods (to split it; default all; --smoke: "
                    "oneshot ddpm_v)")
    ap.add_argument("--smoke", action="store_true", help="the pipeline on a small data copy with a few training steps "
                    "and a few dozen samples (a test, not a result); use another --out")
    ap.add_argument("--copy-docs", action="store_true", help="copy b3_fid_vs_nfe.png and b3_bpd_curves.png to docs/")
    ap.add_argument("--dry-run", action="store_true", help="print per part what is cached and a time estimate")
    ap.add_argument("--systems", nargs="+", default=None, choices=list(FAMILIES),
                    help="--part quality: only these systems' trainings and rows (to split the part over sessions)")
    ap.add_argument("--models", nargs="+", default=None, metavar="KEY",
                    help="--part likelihood|ood: only these models' trainings and evaluations (to split the parts "
                         "over sessions)")
    a = ap.parse_args(argv)

    sm = a.smoke
    a.threads = a.threads or (1 if sm else 2)
    a.n = a.n or (48 if sm else 2000)
    a.seeds = a.seeds or (2 if sm else 3)
    a.exact_images = a.exact_images or (64 if sm else 10_000)
    a.mc_images = a.mc_images or (32 if sm else 2000)
    a.diffusion_timesteps = a.diffusion_timesteps or (2 if sm else 50)
    a.any_order_draws = a.any_order_draws or (2 if sm else 10)
    a.ar_samples = a.ar_samples or (8 if sm else 2000)
    a.out = a.out or str(REPO / "bench_out" / ("b3-smoke" if sm else "b3"))
    if a.part in (None, "all"):
        parts = list(PARTS) if (a.dry_run or a.part == "all") else []
    else:
        parts = [p.strip() for p in a.part.split(",") if p.strip()]
        bad = [p for p in parts if p not in PARTS]
        if bad:
            ap.error(f"unknown part(s) {bad}; choose from {', '.join(PARTS)} or all")
    if sm and a.copy_docs:
        ap.error("--copy-docs copies real results into docs/; it does not go with --smoke")
    torch.set_num_threads(a.threads)
    for d, what in ((a.mnist, "--mnist"), (a.notmnist, "--notmnist")):
        if not Path(d).is_dir():
            sys.exit(f"{what} {d} is not a directory (it needs the IDX files; see benchmarks/README.md, B3)")

    b3 = B3(a)
    keys = [m.key for m in b3.lik_models + [b3.pixelcnn_bin]]
    if a.models and set(a.models) - set(keys):
        ap.error(f"unknown --models {sorted(set(a.models) - set(keys))}; choose from {', '.join(keys)}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    log(f"B3 MNIST: parts {', '.join(parts) or '(report only)'}; {a.threads} threads; n={a.n}; key-row seeds "
        f"{a.seeds}; budgets genlab {', '.join(budget_text(b, b3.quality.unit) for b in b3.budgets)}, peers "
        f"{budget_text(b3.budgets[1], b3.quality.unit)}; torch {torch.__version__}; output {b3.out}"
        + ("; SMOKE (small data copy, a few steps: not a result)" if sm else ""))
    if load > 0.5 and not a.dry_run and not sm:
        log(f"warning: the machine is busy (load average {load:.1f}); budgets are wall clock: every system loses "
            "training steps to other processes")
    if a.dry_run:
        b3.dry_run(parts)
        return
    t0 = time.time()
    try:
        for p in parts:
            b3.run_part(p)
    except KeyboardInterrupt:
        log(f"B3 interrupted after {_mins(time.time() - t0)}; finished work is cached in {b3.out}: rerun the same "
            "command to continue")
        b3.save()
        raise SystemExit(130)
    report(b3)


if __name__ == "__main__":
    main()
