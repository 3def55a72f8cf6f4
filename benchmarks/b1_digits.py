"""B1 (digits): sample quality per training budget, genlab against diffusers and denoising-diffusion-pytorch.

The protocol is section B1 of BENCHMARKS.md. In one process, one after the other (never in parallel):

1. sanity rows through the same evaluation: real test images, per-class means, Gaussian and uniform noise, one
   mean image repeated (``genlab.eval.evaluate.sanity_samples``);
2. each system trained from scratch for each budget (default 60 s and 300 s of training-step wall clock on
   2 CPU threads; only training steps are timed, for the peers too) on the 1437-image B1 train split:
   - genlab: ``digits_ddpm`` through ``genlab.api.train`` (plus ``--genlab-overrides``);
   - diffusers: ``UNet2DModel`` (about 1M parameters) with the defaults of its unconditional training example
     (``DDPMScheduler`` 1000 linear steps, epsilon target, AdamW lr 1e-4 betas (0.95, 0.999) wd 1e-6, cosine
     with 500 warmup steps, grad clip 1, ``EMAModel`` warmup power 3/4 up to 0.9999), and the same at lr 2e-4;
   - denoising-diffusion-pytorch: ``Unet(dim=32, dim_mults=(1, 2))`` in its ``GaussianDiffusion`` (1000 steps,
     its defaults: v target, sigmoid schedule), called directly with its Trainer's recipe (Adam lr 8e-5 betas
     (0.9, 0.99), grad clip 1, ``ema_pytorch.EMA`` decay 0.995 updated every 10 steps), and the same at lr 1e-3;
3. the sample matrix, each row evaluated on ``--n`` samples by ``genlab.eval.evaluate.evaluate_samples``:
   every system x budget with EMA weights and DDIM-50 and with raw weights and DDIM-50; genlab also with
   DPM-Solver++(2M) at 10 and 20 network evaluations and Heun at about 10 and 20; DDPM-1000 at the largest
   budget for genlab and, per peer, for the learning rate that did better (FID vs train, EMA, DDIM-50).

Everything is cached under ``--out`` (default bench_out/b1): genlab run directories, the peers' weights
(safetensors) and every finished row in results.json, so a rerun skips finished work (``--fresh`` redoes it).
Outputs: b1.md (tables), b1_fid_vs_nfe.png, results.json and grids/*.png (first 64 samples of each row).

    .venv-bench/bin/python benchmarks/b1_digits.py                     # the full B1, about an hour on 2 cores
    .venv-bench/bin/python benchmarks/b1_digits.py --quick             # tiny budgets, n=200: a few minutes
    .venv-bench/bin/python benchmarks/b1_digits.py --systems genlab --genlab-overrides train.lr=3e-3
    .venv-bench/bin/python benchmarks/b1_digits.py --seeds 3 --copy-docs
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from genlab.data import from_model, load_dataset, to_model
from genlab.diffusion.samplers import heun_steps_for
from genlab.train.loop import data_indices

LEVELS = 17                # digits: integer levels 0..16
SHAPE = (1, 8, 8)
REPO = Path(__file__).resolve().parent.parent
FAMILIES = ("genlab", "diffusers", "ddpm-pytorch")
TRAIN_SEED = 0


@dataclass(frozen=True)
class Variant:
    """One trained system: a family and its learning rate (None: genlab's config decides)."""
    family: str
    name: str
    lr: Optional[float]
    recipe: str


VARIANTS = {
    "genlab": [Variant("genlab", "genlab", None, "digits_ddpm config")],
    "diffusers": [Variant("diffusers", "diffusers", 1e-4, "published (example defaults)"),
                  Variant("diffusers", "diffusers-lr2e-4", 2e-4, "higher LR")],
    "ddpm-pytorch": [Variant("ddpm-pytorch", "ddpm-pytorch", 8e-5, "published (Trainer recipe)"),
                     Variant("ddpm-pytorch", "ddpm-pytorch-lr1e-3", 1e-3, "higher LR")],
}


def log(msg: str = "") -> None:
    print(msg, flush=True)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """Model-space images in [-1, 1] -> uint8 levels 0..16 (round and clip), N x 1 x 8 x 8."""
    return from_model(x.float().cpu(), LEVELS)


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


# ------------------------------------------------------------------------------------------------ genlab

class GenlabSystem:
    family = "genlab"

    def __init__(self, overrides, threads: int = 2):
        self.overrides, self.threads = list(overrides), threads

    def train_overrides(self, budget: float) -> list[str]:
        # data.val_size=0: genlab trains on the whole 1437-image B1 train split, like the peers (B1 picks no
        # checkpoint, so no validation subset is needed)
        return [f"train.time_budget={budget:g}s", f"train.num_threads={self.threads}", "train.device=cpu",
                "data.val_size=0", *self.overrides]

    def describe(self) -> dict:
        from genlab.api import resolve_config
        from genlab.methods import get_method

        cfg = resolve_config("digits_ddpm", self.train_overrides(60))
        model = get_method(cfg).build_model(SHAPE, 0)
        return {"params": count_params(model), "lr": cfg.train.lr, "batch_size": cfg.train.batch_size,
                "config": "digits_ddpm", "overrides": self.overrides,
                "details": (f"genlab UNet width {cfg.model.width} mults {cfg.model.channel_mults}, "
                            f"{cfg.diffusion.prediction}-prediction, {cfg.diffusion.schedule} schedule, "
                            f"loss weight {cfg.diffusion.loss_weight}, "
                            f"AdamW lr {cfg.train.lr:g}, EMA {cfg.train.ema_decay}, "
                            f"trains on the whole 1437-image train split (data.val_size=0)")}

    def train(self, variant: Variant, budget: float, out: Path) -> dict:
        import genlab.api

        name = f"{variant.name}-{budget:g}s"
        res = genlab.api.train("digits_ddpm", self.train_overrides(budget), name=name, runs_root=out / "runs",
                               force=True, progress=False)
        hist = [h["loss"] for h in res.history if "loss" in h]
        return {"steps": res.state.step, "images": res.state.samples_seen, "time_used": res.state.time_used,
                "final_loss": hist[-1] if hist else None, "run_dir": str(res.run_dir)}

    def loader(self, rec: dict, out: Path):
        return GenlabSampler(Path(rec["run_dir"]))


class GenlabSampler:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def sample(self, n, sampler, steps, seed, use_ema, batch_size):
        import genlab.api

        x, nfe, _ = genlab.api.sample(self.run_dir, n=n, sampler=sampler, steps=steps, seed=seed, use_ema=use_ema,
                                      batch_size=batch_size, device="cpu", progress=False)
        return to_levels(x), nfe, sampler


# ------------------------------------------------------------------------------------------------ diffusers

def diffusers_unet():
    """About 1M parameters: the example's layout (two resnets per level, attention on one level) scaled to
    8x8: levels of 32 and 64 channels, attention at 4x4 (1,001,729 parameters)."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=2, block_out_channels=(32, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def diffusers_train_scheduler():
    from diffusers import DDPMScheduler

    # the example's --ddpm_num_steps 1000, --ddpm_beta_schedule linear, --prediction_type epsilon
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")


class DiffusersSystem:
    """diffusers' examples/unconditional_image_generation/train_unconditional.py defaults, minus its image
    augmentations (resize/crop/horizontal flip: not meaningful for 8x8 digits) and accelerate."""
    family = "diffusers"
    WARMUP = 500

    def __init__(self, batch_size):
        self.batch_size = batch_size

    def describe(self) -> dict:
        return {"params": count_params(diffusers_unet()), "batch_size": self.batch_size,
                "details": "UNet2DModel (32, 64) x 2 resnets, attention at 4x4; DDPMScheduler 1000 linear, eps; "
                           "AdamW betas (0.95, 0.999) wd 1e-6; cosine, 500 warmup steps (cosine over the fraction "
                           "of the time budget); grad clip 1; EMAModel warmup (inv_gamma 1, power 3/4, max 0.9999)"}

    def train(self, variant: Variant, budget: float, out: Path, data: torch.Tensor) -> dict:
        from diffusers.training_utils import EMAModel

        torch.manual_seed(TRAIN_SEED)
        unet = diffusers_unet().train()
        sched = diffusers_train_scheduler()
        opt = torch.optim.AdamW(unet.parameters(), lr=variant.lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
        ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
        bs, n = self.batch_size, len(data)
        warm = {"frac": None}

        def lr_factor(step, frac):
            # get_cosine_schedule_with_warmup's lambda; the cosine runs over the time left after the warmup
            if step < self.WARMUP:
                return step / self.WARMUP
            if warm["frac"] is None:
                warm["frac"] = frac
            p = (frac - warm["frac"]) / max(1e-9, 1 - warm["frac"])
            return max(0.0, 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))

        def step_fn(step, frac):
            for g in opt.param_groups:
                g["lr"] = variant.lr * lr_factor(step, frac)
            x0 = data[data_indices(n, TRAIN_SEED, step * bs, bs)]
            noise = torch.randn_like(x0)
            t = torch.randint(0, sched.config.num_train_timesteps, (bs,)).long()
            noisy = sched.add_noise(x0, noise, t)
            loss = F.mse_loss(unet(noisy, t).sample, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            ema.step(unet.parameters())
            opt.zero_grad(set_to_none=True)
            return loss.item()

        stats = timed_training(step_fn, budget)
        ema_unet = copy.deepcopy(unet)
        ema.copy_to(ema_unet.parameters())
        wdir = out / "weights" / f"{variant.name}-{budget:g}s"
        save_tensors(unet.state_dict(), wdir / "model.safetensors")
        save_tensors(ema_unet.state_dict(), wdir / "ema.safetensors")
        return {**stats, "images": stats["steps"] * bs, "weights": str(wdir), "ema_decay_final": ema.cur_decay_value}

    def loader(self, rec: dict, out: Path):
        return DiffusersSampler(Path(rec["weights"]))


class DiffusersSampler:
    def __init__(self, wdir: Path):
        self.wdir = wdir

    def sample(self, n, sampler, steps, seed, use_ema, batch_size):
        from diffusers import DDIMScheduler, DDPMScheduler

        unet = diffusers_unet()
        unet.load_state_dict(load_tensors(self.wdir / ("ema.safetensors" if use_ema else "model.safetensors")))
        unet.eval()
        base = diffusers_train_scheduler()
        cls = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}[sampler]
        counter = CallCounter(unet)
        out, batches = [], 0
        with torch.inference_mode():
            for b0 in range(0, n, batch_size):
                b = min(batch_size, n - b0)
                sched = cls.from_config(base.config)  # as the pipelines do: DDIMScheduler.from_config(...)
                sched.set_timesteps(steps)
                g = torch.Generator().manual_seed(seed + b0)
                x = torch.randn((b, *SHAPE), generator=g)
                for t in sched.timesteps:
                    eps = unet(x, t).sample
                    kw = {"eta": 0.0} if sampler == "ddim" else {}
                    x = sched.step(eps, t, x, generator=g, **kw).prev_sample
                out.append(x)
                batches += 1
        counter.close()
        return to_levels(torch.cat(out)), counter.calls // batches, f"{sampler} (diffusers {cls.__name__})"


# ------------------------------------------------------------------------------------------------ denoising-diffusion-pytorch

def ddp_unet():
    from denoising_diffusion_pytorch import Unet

    # dim 32 as in BENCHMARKS.md; dim_mults (1, 2): 8x8 and 4x4 levels (full attention at the inner level)
    return Unet(dim=32, dim_mults=(1, 2), channels=1)


def ddp_diffusion(unet, sampling_timesteps=None, eta=0.0):
    from denoising_diffusion_pytorch import GaussianDiffusion
    import denoising_diffusion_pytorch.denoising_diffusion_pytorch as ddp_mod

    ddp_mod.tqdm = _no_tqdm  # its sampling loops draw a progress bar per batch
    # its defaults otherwise: objective pred_v, sigmoid beta schedule, auto_normalize (takes [0, 1] images)
    return GaussianDiffusion(unet, image_size=8, timesteps=1000, sampling_timesteps=sampling_timesteps,
                             ddim_sampling_eta=eta)


def _no_tqdm(it=None, *args, **kwargs):
    return it


class DdpmPytorchSystem:
    """lucidrains/denoising-diffusion-pytorch: Unet + GaussianDiffusion called directly, with the Trainer's
    optimizer, clipping and EMA (its Trainer also computes Inception FID, which is why it is not used)."""
    family = "ddpm-pytorch"

    def __init__(self, batch_size):
        self.batch_size = batch_size

    def describe(self) -> dict:
        return {"params": count_params(ddp_unet()), "batch_size": self.batch_size,
                "details": "Unet(dim=32, dim_mults=(1, 2), channels=1); GaussianDiffusion 1000 steps (pred_v, sigmoid "
                           "schedule: its defaults), DDIM 50 via sampling_timesteps; Adam betas (0.9, 0.99), "
                           "constant LR, grad clip 1; ema_pytorch.EMA beta 0.995 update_every 10"}

    def train(self, variant: Variant, budget: float, out: Path, data: torch.Tensor) -> dict:
        from ema_pytorch import EMA

        torch.manual_seed(TRAIN_SEED)
        diffusion = ddp_diffusion(ddp_unet()).train()
        opt = torch.optim.Adam(diffusion.parameters(), lr=variant.lr, betas=(0.9, 0.99))
        ema = EMA(diffusion, beta=0.995, update_every=10)
        data01 = (data + 1) / 2  # GaussianDiffusion normalizes [0, 1] -> [-1, 1] itself (auto_normalize)
        bs, n = self.batch_size, len(data)

        def step_fn(step, frac):
            x0 = data01[data_indices(n, TRAIN_SEED, step * bs, bs)]
            loss = diffusion(x0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            ema.update()
            return loss.item()

        stats = timed_training(step_fn, budget)
        wdir = out / "weights" / f"{variant.name}-{budget:g}s"
        save_tensors(diffusion.model.state_dict(), wdir / "model.safetensors")
        save_tensors(ema.ema_model.model.state_dict(), wdir / "ema.safetensors")
        return {**stats, "images": stats["steps"] * bs, "weights": str(wdir)}

    def loader(self, rec: dict, out: Path):
        return DdpmPytorchSampler(Path(rec["weights"]))


class DdpmPytorchSampler:
    def __init__(self, wdir: Path):
        self.wdir = wdir

    def sample(self, n, sampler, steps, seed, use_ema, batch_size):
        unet = ddp_unet()
        unet.load_state_dict(load_tensors(self.wdir / ("ema.safetensors" if use_ema else "model.safetensors")))
        if sampler == "ddim":
            diffusion, label = ddp_diffusion(unet, sampling_timesteps=steps), "ddim (ddim_sample, eta 0)"
        elif steps == 1000:
            diffusion, label = ddp_diffusion(unet), "ddpm (p_sample_loop)"
        else:  # its ancestral sampler runs all 1000 steps; on a subsequence DDIM with eta = 1 is the DDPM analogue
            diffusion, label = ddp_diffusion(unet, sampling_timesteps=steps, eta=1.0), "ddpm (ddim_sample, eta 1)"
        diffusion.eval()
        counter = CallCounter(unet)
        out, batches = [], 0
        for b0 in range(0, n, batch_size):
            b = min(batch_size, n - b0)
            torch.manual_seed(seed + b0)  # it draws its noise from the global generator
            out.append(diffusion.sample(batch_size=b) * 2 - 1)  # its samples are in [0, 1]
            batches += 1
        counter.close()
        return to_levels(torch.cat(out)), counter.calls // batches, label


# ------------------------------------------------------------------------------------------------ the matrix

@dataclass(frozen=True)
class RowSpec:
    variant: Variant
    budget: float
    weights: str           # ema | raw
    sampler: str           # ddim | ddpm | dpmpp-2m | heun
    steps: int
    key: bool              # a key row: all --seeds sampling seeds

    @property
    def train_key(self) -> str:
        return f"{self.variant.name}@{self.budget:g}s"

    @property
    def id(self) -> str:
        return f"{self.train_key}/{self.weights}/{self.sampler}-{self.steps}"


def rows_for(variant: Variant, budget: float) -> list[RowSpec]:
    """The per-training rows (DDPM-1000 rows are added once the better LR variant is known)."""
    rows = [RowSpec(variant, budget, "ema", "ddim", 50, True), RowSpec(variant, budget, "raw", "ddim", 50, False)]
    if variant.family == "genlab":
        rows += [RowSpec(variant, budget, "ema", "dpmpp-2m", 10, True),
                 RowSpec(variant, budget, "ema", "dpmpp-2m", 20, True),
                 RowSpec(variant, budget, "ema", "heun", heun_steps_for(10), True),
                 RowSpec(variant, budget, "ema", "heun", heun_steps_for(20), True)]
    return rows


def sample_seed(k: int) -> int:
    """Sampling seed k: genlab gives sample i the seed base + i, the peers seed each batch with base + offset."""
    return 1_000_000 * k


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


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.results_path = self.out / "results.json"
        self.results = self._load_results()
        self.systems = {}
        self.data = None

    # -------------------------------------------------------------- cache
    def _load_results(self) -> dict:
        a = self.args
        if a.fresh and self.out.exists():
            for sub in ("runs", "weights", "grids"):
                shutil.rmtree(self.out / sub, ignore_errors=True)
            self.results_path.unlink(missing_ok=True)
        res = {"meta": {}, "trainings": {}, "rows": {}, "sanity": {}}
        if self.results_path.exists():
            res.update(json.loads(self.results_path.read_text()))
            n_old = res["meta"].get("n")
            if n_old is not None and n_old != a.n:
                sys.exit(f"{self.results_path} holds rows of n={n_old} samples, asked for n={a.n}: rerun with "
                         f"--fresh, or --out another directory")
        res["meta"].update({"n": a.n, "quick": a.quick})
        return res

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.results_path.with_name(".results.json.tmp")
        tmp.write_text(json.dumps(jsonable(self.results), indent=1) + "\n")
        os.replace(tmp, self.results_path)

    # -------------------------------------------------------------- pieces
    def train_data(self) -> torch.Tensor:
        if self.data is None:
            ds = load_dataset("digits", "train+val")
            self.data = to_model(ds.x, LEVELS)  # the 1437-image B1 train split in [-1, 1]
        return self.data

    def system(self, family: str):
        if family not in self.systems:
            a = self.args
            self.systems[family] = {"genlab": lambda: GenlabSystem(a.genlab_overrides, a.threads),
                                    "diffusers": lambda: DiffusersSystem(a.batch_size),
                                    "ddpm-pytorch": lambda: DdpmPytorchSystem(a.batch_size)}[family]()
        return self.systems[family]

    def training_signature(self, v: Variant) -> dict:
        sig = {"family": v.family, "lr": v.lr, "batch_size": self.args.batch_size, "seed": TRAIN_SEED}
        if v.family == "genlab":
            sig = {"family": "genlab", "overrides": list(self.args.genlab_overrides)}
        return sig

    def cached_training(self, v: Variant, budget: float) -> Optional[dict]:
        rec = self.results["trainings"].get(f"{v.name}@{budget:g}s")
        if rec is None or rec.get("signature") != self.training_signature(v):
            return None
        path = Path(rec.get("run_dir") or rec.get("weights", ""))
        if not path.exists():
            return None
        return rec

    def trained(self, v: Variant, budget: float) -> dict:
        rec = self.cached_training(v, budget)
        if rec is not None:
            return rec
        fam = self.system(v.family)
        desc = fam.describe()
        lr = v.lr if v.lr is not None else desc.get("lr")
        log(f"training {v.name} (lr {lr:g}, batch {desc['batch_size']}, {desc['params']:,} parameters) "
            f"for {budget:g}s of training steps ...")
        t0 = time.time()
        torch.set_num_threads(self.args.threads)
        if v.family == "genlab":
            info = fam.train(v, budget, self.out)
        else:
            info = fam.train(v, budget, self.out, self.train_data())
        torch.set_num_threads(self.args.threads)
        rec = {**info, "variant": v.name, "family": v.family, "recipe": v.recipe, "lr": lr, "budget": budget,
               "params": desc["params"], "batch_size": desc["batch_size"], "details": desc["details"],
               "signature": self.training_signature(v), "train_id": uuid.uuid4().hex[:12],
               "wall_s": time.time() - t0, "date": datetime.datetime.now().isoformat(timespec="seconds")}
        key = f"{v.name}@{budget:g}s"
        self.results["trainings"][key] = rec
        # rows of an earlier training of this key are stale now
        self.results["rows"] = {k: r for k, r in self.results["rows"].items() if r.get("train_key") != key}
        self.save()
        log(f"  trained {key}: {rec['steps']} steps, {rec['images']:,} images seen, {rec['time_used']:.1f}s of "
            f"training steps ({rec['steps'] / max(rec['time_used'], 1e-9):.1f} steps/s), final loss "
            f"{rec['final_loss'] if rec['final_loss'] is None else round(rec['final_loss'], 4)}, "
            f"wall {rec['wall_s']:.0f}s")
        return rec

    def evaluate(self, levels: np.ndarray) -> dict:
        from genlab.eval.evaluate import evaluate_samples

        return evaluate_samples(levels, data="digits", seed=0)

    def run_row(self, spec: RowSpec) -> dict:
        a = self.args
        rec = self.trained(spec.variant, spec.budget)
        row = self.results["rows"].get(spec.id)
        if row is not None and row.get("train_id") != rec["train_id"]:
            row = None
        want = a.seeds if spec.key else 1
        if row is not None and len(row["evals"]) >= want:
            return row
        if row is None:
            row = {"id": spec.id, "train_key": spec.train_key, "train_id": rec["train_id"], "system": spec.variant.family,
                   "variant": spec.variant.name, "recipe": spec.variant.recipe, "lr": rec["lr"],
                   "budget": spec.budget, "steps_trained": rec["steps"], "images_seen": rec["images"],
                   "weights": spec.weights, "sampler": spec.sampler, "steps": spec.steps, "key": spec.key,
                   "evals": []}
        sampler = self.system(spec.variant.family).loader(rec, self.out)
        torch.set_num_threads(a.threads)
        for k in range(len(row["evals"]), want):
            t0 = time.perf_counter()
            levels, nfe, label = sampler.sample(a.n, spec.sampler, spec.steps, sample_seed(k), spec.weights == "ema",
                                                a.sample_batch)
            secs = time.perf_counter() - t0
            if k == 0:
                from genlab.report.images import save_grid

                save_grid(to_model(levels[:64], LEVELS), self.out / "grids" / (spec.id.replace("/", "_") + ".png"),
                          nrow=8)
            t1 = time.perf_counter()
            ev = self.evaluate(levels.numpy())
            row["evals"].append({"seed": sample_seed(k), "sample_s": secs, "eval_s": time.perf_counter() - t1,
                                 **jsonable(ev)})
            row.update({"nfe": nfe, "sampler_label": label})
        fids = [e["fid_train"] for e in row["evals"]]
        row["fid_train_mean"] = float(np.mean(fids))
        row["fid_train_std"] = float(np.std(fids, ddof=1)) if len(fids) > 1 else None
        row["sample_s_per_1000"] = row["evals"][0]["sample_s"] * 1000 / a.n
        self.results["rows"][spec.id] = row
        self.save()
        e0 = row["evals"][0]
        spread = f" +- {row['fid_train_std']:.3f} ({len(fids)} seeds)" if row["fid_train_std"] is not None else ""
        log(f"  row {spec.id}: FID train {row['fid_train_mean']:.3f}{spread}, matched ratio "
            f"{e0['matched']['ratio']:.2f}, FID all {e0['fid_all']:.3f}, entropy {e0['entropy']:.3f}, "
            f"dup {e0['dup_fraction']:.3f}, {nfe} evals/sample, {row['sample_s_per_1000']:.1f}s per 1000")
        return row

    def sanity(self) -> None:
        from genlab.eval.evaluate import sanity_samples

        if self.results["sanity"]:
            return
        log("sanity rows ...")
        for name, levels in sanity_samples(data="digits").items():
            ev = jsonable(self.evaluate(np.asarray(levels)))
            self.results["sanity"][name] = {"n": int(len(levels)), **ev}
            log(f"  sanity {name}: n={len(levels)}, FID train {ev['fid_train']:.3f}, FID all {ev['fid_all']:.3f}, "
                f"entropy {ev['entropy']:.3f}, dup {ev['dup_fraction']:.3f}")
        self.save()

    # -------------------------------------------------------------- plan
    def better(self, family: str, budget: float) -> Optional[str]:
        """The LR variant of a peer family with the lower FID vs train (EMA, DDIM-50) at this budget."""
        best = None
        for v in VARIANTS[family]:
            r = self.results["rows"].get(f"{v.name}@{budget:g}s/ema/ddim-50")
            if r is not None and (best is None or r["fid_train_mean"] < best[1]):
                best = (v.name, r["fid_train_mean"])
        return best[0] if best else None

    def ddpm_steps(self) -> int:
        return 100 if self.args.quick else 1000

    def plan(self) -> list[RowSpec]:
        """Rows known before any result (the DDPM rows of the peers depend on which LR did better)."""
        specs = []
        for fam in self.args.systems:
            for v in VARIANTS[fam]:
                for b in self.args.budgets:
                    specs += rows_for(v, b)
        return specs

    def run(self) -> None:
        a = self.args
        self.sanity()
        for fam in a.systems:
            for v in VARIANTS[fam]:
                for b in a.budgets:
                    for spec in rows_for(v, b):
                        self.run_row(spec)
        top = max(a.budgets)
        for fam in a.systems:
            name = VARIANTS[fam][0].name if fam == "genlab" else self.better(fam, top)
            v = next(v for v in VARIANTS[fam] if v.name == name)
            self.run_row(RowSpec(v, top, "ema", "ddpm", self.ddpm_steps(), False))

    def print_plan(self) -> None:
        a = self.args
        for fam in a.systems:
            for v in VARIANTS[fam]:
                for b in a.budgets:
                    cached = "cached" if self.cached_training(v, b) else "to train"
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
        torch.set_num_threads(a.threads)
        for fam in a.systems:
            net = {"genlab": lambda: _genlab_net(a.genlab_overrides), "diffusers": diffusers_unet,
                   "ddpm-pytorch": ddp_unet}[fam]().eval()
            x = torch.randn(min(a.sample_batch, a.n), *SHAPE)
            t = torch.full((len(x),), 500, dtype=torch.long)
            times = []
            with torch.inference_mode():
                net(x, t)
                for _ in range(3):
                    t0 = time.perf_counter()
                    net(x, t)
                    times.append(time.perf_counter() - t0)
            per_eval[fam] = min(times) * 1000 / len(x)
        train_s, sample_s, n_rows = 0.0, 0.0, 0
        top = max(a.budgets)
        for fam in a.systems:
            for v in VARIANTS[fam]:
                for b in a.budgets:
                    if self.cached_training(v, b) is None:
                        train_s += b + 10  # + set-up, validation, checkpoints
                    specs = rows_for(v, b)
                    if b == top and v == VARIANTS[fam][0]:  # one DDPM row per family
                        specs.append(RowSpec(v, top, "ema", "ddpm", self.ddpm_steps(), False))
                    fresh = self.cached_training(v, b) is None
                    for s in specs:
                        r = None if fresh else self.results["rows"].get(s.id)
                        need = (a.seeds if s.key else 1) - (len(r["evals"]) if r else 0)
                        nfe = 2 * s.steps - 1 if s.sampler == "heun" else s.steps
                        sample_s += max(need, 0) * nfe * per_eval[fam] * a.n / 1000
                        n_rows += max(need, 0)
        eval_s = 8.0 * n_rows + (0 if self.results["sanity"] else 30)
        total = train_s + sample_s + eval_s
        log(f"network evaluation of 1000 images: " + ", ".join(f"{k} {v:.2f}s" for k, v in per_eval.items()))
        log(f"estimated time: training {train_s / 60:.1f} min + sampling {sample_s / 60:.1f} min + evaluation "
            f"~{eval_s / 60:.1f} min = about {total / 60:.0f} min on {a.threads} threads (cached work skipped)")

    # -------------------------------------------------------------- report
    def report(self) -> None:
        write_markdown(self.results, self.args, self.out / "b1.md")
        plot(self.results, self.out / "b1_fid_vs_nfe.png")
        log(f"wrote {self.out / 'b1.md'}, {self.out / 'b1_fid_vs_nfe.png'}, {self.results_path}")
        if self.args.copy_docs:
            dst = REPO / "docs" / "b1_fid_vs_nfe.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.out / "b1_fid_vs_nfe.png", dst)
            log(f"copied the plot to {dst}")


def _genlab_net(overrides):
    from genlab.api import resolve_config
    from genlab.methods import get_method

    return get_method(resolve_config("digits_ddpm", overrides)).build_model(SHAPE, 0)


# ------------------------------------------------------------------------------------------------ outputs

def _fmt(v, d=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{0.0 if abs(v) < 0.5 * 10 ** -d else v:.{d}f}"
    return str(v)


def best_variants(results: dict) -> dict:
    """(family, budget) -> the variant with the lower FID vs train at EMA DDIM-50."""
    best = {}
    for r in results["rows"].values():
        if r["weights"] == "ema" and r["sampler"] == "ddim" and r["steps"] == 50:
            k = (r["system"], r["budget"])
            if k not in best or r["fid_train_mean"] < best[k][1]:
                best[k] = (r["variant"], r["fid_train_mean"])
    return {k: v[0] for k, v in best.items()}


def sorted_rows(results: dict) -> list[dict]:
    order = {f: i for i, f in enumerate(FAMILIES)}
    samp = {"ddim": 0, "dpmpp-2m": 1, "heun": 2, "ddpm": 3}
    return sorted(results["rows"].values(),
                  key=lambda r: (order.get(r["system"], 9), r["budget"], r["variant"], r["weights"] != "ema",
                                 samp.get(r["sampler"], 9), r["steps"]))


def write_markdown(results: dict, args, path: Path) -> None:
    from throughput import machine

    info = machine()
    rows = sorted_rows(results)
    evals = [e for r in rows for e in r["evals"]] + list(results["sanity"].values())
    acc = next((e.get("featnet_test_accuracy") for e in evals if e.get("featnet_test_accuracy") is not None), None)
    best = best_variants(results)
    versions = {}
    for mod in ("diffusers", "denoising_diffusion_pytorch", "ema_pytorch"):
        try:
            from importlib.metadata import version
            versions[mod] = version(mod.replace("_", "-"))
        except Exception:
            versions[mod] = "not installed"
    budgets = sorted({t["budget"] for t in results["trainings"].values()})
    L = [f"# B1 digits: quality per training budget{' (--quick)' if results['meta'].get('quick') else ''}", "",
         f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
         f"- machine: {info['cpu']} ({info['cpu_count']} CPUs, {info['usable_cpus']} usable), {args.threads} torch "
         f"threads, {info['platform']}, python {info['python']}",
         f"- torch {torch.__version__}; " + ", ".join(f"{k} {v}" for k, v in versions.items()),
         f"- budgets: {', '.join(f'{b:g} s' for b in budgets)} of training-step wall clock (steps only, same "
         f"timer for all); every system trains on the 1437-image train split",
         f"- samples per row: {results['meta']['n']}; FID vs train is the mean (+- std) over the sampling seeds "
         f"of key rows (EMA DDIM-50 and genlab's <= 20-evaluation rows; others one seed)",
         f"- feature network (genlab digits featnet, trained on the train split only) test accuracy: {_fmt(acc, 4)}",
         f"- matched ratio: mean FID of 20 random subsets of {min(360, results['meta']['n'])} samples vs train, "
         f"divided by the real-vs-real floor (the 360 test images vs train; matched when n >= 360)", ""]
    L += ["## Trainings", "", "| system | recipe | LR | parameters | batch | budget (s) | steps | images seen | "
          "steps/s | final loss |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k, t in sorted(results["trainings"].items(), key=lambda kv: (FAMILIES.index(kv[1]["family"]),
                                                                      kv[1]["budget"], kv[1]["variant"])):
        L.append(f"| {t['variant']} | {t['recipe']} | {t['lr']:g} | {t['params']:,} | {t['batch_size']} | "
                 f"{t['budget']:g} | {t['steps']:,} | {t['images']:,} | {t['steps'] / max(t['time_used'], 1e-9):.1f} "
                 f"| {_fmt(t.get('final_loss'), 4)} |")
    L += [""] + [f"- {fam}: {d}" for fam, d in
                 {t["family"]: t["details"] for t in results["trainings"].values()}.items()] + [""]
    L += ["## Sanity rows", "", "| samples | n | FID train | matched ratio | FID all | precision | recall | entropy | "
          "confidence | dup |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in results["sanity"].items():
        L.append(f"| {name} | {e['n']} | {_fmt(e['fid_train'])} | {_fmt(e['matched']['ratio'], 2)} | "
                 f"{_fmt(e['fid_all'])} | {_fmt(e['precision'])} | {_fmt(e['recall'])} | {_fmt(e['entropy'])} | "
                 f"{_fmt(e['confidence'])} | {_fmt(e['dup_fraction'])} |")
    L += ["", "## Sample matrix", "",
          "`*`: the better LR of a peer at that budget (FID vs train, EMA, DDIM-50).", "",
          "| system | LR | budget (s) | steps | images seen | weights | sampler | evals/sample | FID train | "
          "matched ratio | FID all | precision | recall | entropy | confidence | dup | s per 1000 |",
          "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        e = r["evals"][0]
        mean = lambda k: float(np.mean([x[k] for x in r["evals"]]))  # noqa: E731
        fid = _fmt(r["fid_train_mean"])
        if r["fid_train_std"] is not None:
            fid += f" +- {r['fid_train_std']:.3f} ({len(r['evals'])})"
        star = "*" if r["system"] != "genlab" and best.get((r["system"], r["budget"])) == r["variant"] else ""
        L.append(f"| {r['variant']}{star} | {r['lr']:g} | {r['budget']:g} | {r['steps_trained']:,} | "
                 f"{r['images_seen']:,} | {r['weights']} | {r['sampler']}-{r['steps']} | {r['nfe']} | {fid} | "
                 f"{_fmt(float(np.mean([x['matched']['ratio'] for x in r['evals']])), 2)} | "
                 f"{_fmt(mean('fid_all'))} | {_fmt(mean('precision'))} | {_fmt(mean('recall'))} | "
                 f"{_fmt(mean('entropy'))} | {_fmt(mean('confidence'))} | {_fmt(mean('dup_fraction'))} | "
                 f"{r['sample_s_per_1000']:.1f} |")
    labels = sorted({f"{r['system']}: {r['sampler_label']}" for r in rows if r["system"] != "genlab"})
    L += ["", "Peers' samplers: " + "; ".join(labels), ""] if labels else [""]
    L += targets(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n")


def targets(results: dict) -> list[str]:
    """The two B1 targets, checked on what results.json holds."""
    rows = list(results["rows"].values())
    budgets = sorted({r["budget"] for r in rows})
    if not budgets:
        return []
    lo, hi = budgets[0], budgets[-1]
    L = ["## Targets", ""]
    g_lo = [r for r in rows if r["system"] == "genlab" and r["budget"] == lo and r["nfe"] <= 20 and r["weights"] == "ema"]
    peers = [r for r in rows if r["system"] != "genlab" and r["budget"] == hi]
    if g_lo and peers:
        g = min(g_lo, key=lambda r: r["fid_train_mean"])
        p = min(peers, key=lambda r: r["fid_train_mean"])
        ok = g["fid_train_mean"] <= p["fid_train_mean"]
        L.append(f"- genlab at {lo:g} s with <= 20 evaluations: best {g['fid_train_mean']:.3f} ({g['sampler']}-"
                 f"{g['steps']}, {g['nfe']} evals) vs the best peer at {hi:g} s with any sampler: "
                 f"{p['fid_train_mean']:.3f} ({p['variant']}, {p['weights']} {p['sampler']}-{p['steps']}): "
                 f"**{'met' if ok else 'not met'}**")
    g_hi = [r for r in rows if r["system"] == "genlab" and r["budget"] == hi and r["weights"] == "ema"]
    if g_hi:
        g = min(g_hi, key=lambda r: r["fid_train_mean"])
        m = g["evals"][0]["matched"]
        ok = m["fake_subset_mean"] - m["fake_subset_std"] <= m["floor"]
        L.append(f"- genlab at {hi:g} s vs the real-vs-real floor (360 test vs train): best row {g['sampler']}-"
                 f"{g['steps']} has {m.get('n', 360)}-subset FID {m['fake_subset_mean']:.3f} +- {m['fake_subset_std']:.3f} vs floor {m['floor']:.3f} "
                 f"(ratio {m['ratio']:.2f}); within the subset spread of the floor: **{'yes' if ok else 'no'}**")
    return L + [""]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_variants(results)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    colors = {"genlab": "tab:blue", "diffusers": "tab:orange", "ddpm-pytorch": "tab:green"}
    budgets = sorted({r["budget"] for r in results["rows"].values()})
    styles = dict(zip(budgets, ["--", "-", ":", "-."]))
    markers = {"ddim": "o", "dpmpp-2m": "s", "heun": "^", "ddpm": "D"}
    groups = {}
    for r in results["rows"].values():
        if r["system"] != "genlab" and best.get((r["system"], r["budget"]), r["variant"]) != r["variant"]:
            continue  # peers: the better LR only (its DDPM row was run for the better one)
        groups.setdefault((r["system"], r["variant"], r["budget"], r["weights"]), []).append(r)
    for (fam, var, b, w), rs in sorted(groups.items(), key=lambda kv: (FAMILIES.index(kv[0][0]), kv[0][2], kv[0][3])):
        c, ls, ema = colors.get(fam), styles.get(b, "-"), w == "ema"
        for samp in markers:  # a line through each sampler's evaluation counts (DPM-Solver++ 10 -> 20, ...)
            pts = sorted((r["nfe"], r["fid_train_mean"], r["fid_train_std"] or 0) for r in rs if r["sampler"] == samp)
            if not pts:
                continue
            x, y, e = zip(*pts)
            if ema and len(pts) > 1:
                ax.plot(x, y, ls, color=c, alpha=0.6)
            ax.errorbar(x, y, yerr=e if any(e) else None, marker=markers[samp], color=c, mfc=c if ema else "none",
                        ms=6, ls="none", capsize=2)
        ax.plot([], [], ls if ema else "none", marker="o", color=c, mfc=c if ema else "none",
                label=f"{var} {b:g}s {'EMA' if ema else 'raw'}")
    floor = next((r["evals"][0]["matched"]["floor"] for r in results["rows"].values()), None)
    if floor:
        ax.axhline(floor, color="gray", ls=":", lw=1)
        ax.text(ax.get_xlim()[0] if ax.has_data() else 1, floor, " real-vs-real floor (360 test vs train)",
                va="bottom", fontsize=8, color="gray")
    for s, m in markers.items():
        ax.plot([], [], m, color="gray", ls="", label=s)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations per sample")
    ax.set_ylabel(f"FID vs train split ({results['meta']['n']} samples, digits featnet)")
    ax.set_title("B1 digits: FID vs network evaluations (peers: the better LR per budget)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, handlelength=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # throughput.machine()

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
    bench.run()
    bench.report()
    log(f"B1 done in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
