"""Training throughput of genlab's UNet against a diffusers ``UNet2DModel`` of the same size, side by side.

Both models run the same training step on real batches of the configured dataset (digits by default):
timesteps uniform in [0, T), Gaussian noise, x_t by ``q_sample`` on genlab's schedule, forward, MSE to the
configured target (v for digits_ddpm), backward, AdamW step, zero_grad. genlab's loss is the method's own
(``get_method(cfg).loss(model, batch, rng)`` with a ``StepRNG``), the optimizer and the EMA update are the
training loop's (imported from :mod:`genlab.train.loop`, not copied); the diffusers step repeats the loss's few
lines with the same random draws (same ``StepRNG`` stream) and uses the same optimizer.

Measurement windows of ``--seconds`` alternate genlab, diffusers, genlab, diffusers, ... so drift in the
machine's load hits both alike; images/s of a window = images trained / wall seconds of its steps. The table
reports per model the median over windows (and min-max) and the ratio of the medians, genlab / diffusers.

    .venv/bin/python benchmarks/throughput.py                      # defaults: 3 x 20 s windows each, 2 threads
    .venv/bin/python benchmarks/throughput.py --seconds 2 --repeats 1 --warmup 2   # smoke test
    .venv/bin/python benchmarks/throughput.py model.width=64 --json bench_out/w64.json
    .venv/bin/python benchmarks/throughput.py --repeats 0 --profile --profile-model both   # profile only
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from genlab.config import load_config
from genlab.data import load_dataset
from genlab.diffusion.process import q_sample, target
from genlab.methods import get_method
from genlab.methods.diffusion import snr_weight
from genlab.nn.unet import norm_groups
from genlab.rng import StepRNG, mix_seed
from genlab.train.loop import build_optimizer, ema_decay_at, ema_update

MODELS = ("genlab", "diffusers")
# --case: a preset of config and image shape. digits8 trains on the real digits; the others on random levels of
# their shape (speed does not depend on the pixels), so they need no dataset on disk.
CASES = {
    "digits8": {"config": "digits_ddpm", "shape": None},
    "mnist28": {"config": "mnist_ddpm", "shape": (1, 28, 28)},
    "rgb32": {"config": "folder_ddpm", "shape": (3, 32, 32)},
}


# ------------------------------------------------------------------------------------------------ models

def diffusers_unet(cfg, shape):
    """A ``diffusers.UNet2DModel`` that mirrors genlab's UNet block for block.

    How it was matched: not by tuning widths but by building the same architecture from ``cfg.model``:
    level i has width * channel_mults[i] channels (``block_out_channels``), ``num_res_blocks`` resnets per
    down level and num_res_blocks + 1 per up level (diffusers' ``layers_per_block`` has the same meaning),
    a stride-2 conv downsample / nearest + conv upsample between levels, attention blocks (``Attn*Block2D``)
    at the levels whose side length is in ``attn_resolutions``, a resnet-attention-resnet mid block, a
    sinusoidal time embedding of ``width`` channels into a 2-layer MLP of 4 * width, scale-shift time
    conditioning (``resnet_time_scale_shift="scale_shift"``, genlab's AdaGN), pre-norm attention in the mid
    block too (``attn_norm_num_groups``, which diffusers drops for scale_shift unless given) and heads of
    width / num_heads channels at the first attention level. For digits_ddpm (width 32, mults (1, 2), one
    res block, attention at 4x4, 4 heads) this gives (32, 64) channels, DownBlock2D + AttnDownBlock2D,
    AttnUpBlock2D + UpBlock2D, attention_head_dim 16, and 755,009 parameters, exactly genlab's count.
    Remaining differences: one GroupNorm group count for all layers (genlab picks one per width, which
    changes no parameter count) and diffusers' q/k/v/out Linear layers instead of 1x1 convolutions.
    """
    from diffusers import UNet2DModel

    m = cfg.model
    c, size, _ = shape
    chans = tuple(m.width * k for k in m.channel_mults)
    attn = [size // 2 ** i in tuple(m.attn_resolutions) for i in range(len(chans))]
    first_attn = next((ch for ch, a in zip(chans, attn) if a), chans[-1])
    groups = norm_groups(m.width)  # divides every level width and every skip concatenation
    return UNet2DModel(
        sample_size=size, in_channels=c, out_channels=c,
        block_out_channels=chans, layers_per_block=m.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        norm_num_groups=groups, attn_norm_num_groups=groups,
        attention_head_dim=max(1, first_attn // m.num_heads),
        resnet_time_scale_shift="scale_shift", dropout=m.dropout,
    )


def synthetic_data(shape, n: int = 4096, seed: int = 0):
    """An ImageDataset of ``n`` random 256-level images of ``shape`` (what the 28x28 and 32x32 cases train on)."""
    from genlab.data import ImageDataset

    g = torch.Generator().manual_seed(seed)
    return ImageDataset(torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g), None, 256, 0,
                        name="synthetic")


def sampling_speed(model, shape, batch: int, seconds: float, diffusers: bool) -> dict:
    """Images per second of one network evaluation in inference mode (a sampler's step) at ``batch``."""
    model.eval()
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((batch,), 500, dtype=torch.long)
    times = []
    with torch.inference_mode():
        for i in range(100000):
            t0 = time.perf_counter()
            out = model(x, t)
            if diffusers:
                out = out.sample
            dt = time.perf_counter() - t0
            if i:                                 # the first call is a warm-up
                times.append(dt)
            if sum(times) >= seconds and len(times) >= 3:
                break
    model.train()
    med = statistics.median(times)
    return {"batch": batch, "calls": len(times), "s_per_eval_median": med, "images_per_s_per_eval": batch / med}


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------ steps

def diffusers_loss(method, cfg, unet, batch, rng):
    """The diffusers counterpart of ``DiffusionMethod.loss``: same draws, same target, same reduction."""
    x0 = batch["x"]
    n = x0.shape[0]
    t = rng.randint(method.schedule.T)
    eps = rng.randn(*x0.shape[1:])
    rng.rand()  # the label-dropout draw genlab makes too, keeping both streams identical
    ab = method.alphas_cumprod[t]
    x_t = q_sample(x0, ab, eps)
    out = unet(x_t, t).sample
    err = F.mse_loss(out.float(), target(method.prediction, x0, eps, ab), reduction="none").reshape(n, -1).mean(1)
    if cfg.diffusion.loss_weight == "min_snr":
        err = err * snr_weight(method.snr[t], method.prediction, cfg.diffusion.min_snr_gamma)
    return err.mean()


class Runner:
    """One model with its optimizer and a step counter; ``step()`` is one full training step. Both models get
    the optimizer of genlab's loop (:func:`genlab.train.loop.build_optimizer`: AdamW, decay on matrices only)
    and, with ``loop_extras``, its clipping and EMA update (:func:`~genlab.train.loop.ema_update` with the decay
    of :func:`~genlab.train.loop.ema_decay_at`)."""

    def __init__(self, name, model, loss_fn, cfg, data, batch_size, seed, loop_extras):
        self.name, self.model, self.loss_fn, self.cfg = name, model.train(), loss_fn, cfg
        self.data, self.batch_size, self.seed, self.loop_extras = data, batch_size, seed, loop_extras
        self.opt = build_optimizer(model, cfg.train)
        self.ema = copy.deepcopy(model).eval().requires_grad_(False) if loop_extras else None
        self.i = 0

    def batch(self):
        """A batch of real images (x only, as for an unconditional model), drawn by (seed, step)."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, 1, self.i))
        idx = torch.randint(len(self.data), (self.batch_size,), generator=g)
        return {"x": self.data.batch(idx)["x"]}

    def forward_backward(self):
        rng = StepRNG(mix_seed(self.seed, 0, self.i), self.batch_size)
        loss = self.loss_fn(self.model, self.batch(), rng)
        loss.backward()
        return loss

    def step(self):
        loss = self.forward_backward()
        if self.loop_extras and self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            ema_update(self.ema, self.model, ema_decay_at(self.cfg.train, self.i))
        self.i += 1
        return loss

    def window(self, seconds):
        """Train for at least ``seconds`` (and at least one step); returns the window's record."""
        times = []
        while not times or sum(times) < seconds:
            t0 = time.perf_counter()
            loss = self.step()
            times.append(time.perf_counter() - t0)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{self.name}: the loss became {loss.item()}")
        spent, images = sum(times), len(times) * self.batch_size
        med = statistics.median(times)
        return {"images": images, "seconds": spent, "steps": len(times), "images_per_s": images / spent,
                "step_s_median": med, "step_s_min": min(times), "step_s_max": max(times),
                "images_per_s_at_median_step": self.batch_size / med}

    def flops_per_step(self):
        """Forward + backward FLOPs of one step as counted by FlopCounterMode (convolutions, matmuls;
        optimizer and elementwise work not included). None if the counter is unavailable."""
        try:
            from torch.utils.flop_counter import FlopCounterMode
            with FlopCounterMode(display=False) as fc:
                self.forward_backward()
            self.opt.zero_grad(set_to_none=True)
            return fc.get_total_flops()
        except Exception as e:  # pragma: no cover - informative only
            print(f"(FLOP count of {self.name} skipped: {e})", file=sys.stderr)
            self.opt.zero_grad(set_to_none=True)
            return None


# ------------------------------------------------------------------------------------------------ report

def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": cpu or platform.machine(), "cpu_count": os.cpu_count(), "usable_cpus": usable,
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}


def profile(runner, steps, rows=15):
    from torch.profiler import ProfilerActivity, profile as tprofile
    runner.step()
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            runner.step()
    print(f"\n### torch.profiler: {runner.name}, {steps} steps, top {rows} ops by self CPU time\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.width=64")
    ap.add_argument("--case", choices=sorted(CASES), default="digits8",
                    help="digits8 (digits_ddpm on the digits, default), mnist28 (mnist_ddpm, 1x28x28) or rgb32 "
                         "(folder_ddpm, 3x32x32); the last two on random pixels")
    ap.add_argument("--config", default=None, help="config name or YAML path (default: the case's)")
    ap.add_argument("--compile", action="store_true",
                    help="also measure genlab's UNet under torch.compile (model 'genlab-compiled')")
    ap.add_argument("--sample-batch", type=int, default=250,
                    help="batch of the sampling measurement (images/s per network evaluation); 0 skips it")
    ap.add_argument("--sample-seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of one measurement window (default 20)")
    ap.add_argument("--repeats", type=int, default=3, help="windows per model, interleaved (default 3)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps per model first (default 10)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's train.batch_size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loop-extras", action="store_true",
                    help="also clip gradients (train.grad_clip) and update an EMA each step, as genlab's loop does")
    ap.add_argument("--no-flops", action="store_true", help="skip the FLOP count (GFLOP/s column)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    ap.add_argument("--profile", action="store_true", help="after the windows, profile a few steps with torch.profiler")
    ap.add_argument("--profile-steps", type=int, default=5)
    ap.add_argument("--profile-model", choices=(*MODELS, "genlab-compiled", "both"), default="genlab")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    case = CASES[args.case]
    args.config = args.config or case["config"]
    cfg = load_config(args.config, overrides=list(args.overrides))
    bs = args.batch_size or cfg.train.batch_size
    d = cfg.data
    if case["shape"] is None:
        data = load_dataset(d.name, "train", root=d.root, image_size=d.image_size, channels=d.channels, labels=False,
                            on_bad_image=d.on_bad_image, val_size=d.val_size, binarize=d.binarize,
                            seed=cfg.train.seed)
    else:
        data = synthetic_data(case["shape"])
    shape = tuple(data.shape)
    method = get_method(cfg)

    torch.manual_seed(args.seed)
    g_model = method.build_model(shape=shape, num_classes=0)
    torch.manual_seed(args.seed)
    d_model = diffusers_unet(cfg, shape)
    runners = {
        "genlab": Runner("genlab", g_model, method.loss, cfg, data, bs, args.seed, args.loop_extras),
        "diffusers": Runner("diffusers", d_model, lambda m, b, r: diffusers_loss(method, cfg, m, b, r),
                            cfg, data, bs, args.seed, args.loop_extras),
    }
    models = MODELS
    if args.compile:
        torch.manual_seed(args.seed)
        c_model = method.build_model(shape=shape, num_classes=0)
        c_model.compile()        # as train.compile=true does (genlab.train.loop.compile_model)
        runners["genlab-compiled"] = Runner("genlab-compiled", c_model, method.loss, cfg, data, bs, args.seed,
                                            args.loop_extras)
        models = (*MODELS, "genlab-compiled")
    params = {k: count_params(r.model) for k, r in runners.items()}
    print(f"parameters: genlab {params['genlab']:,}, diffusers {params['diffusers']:,} "
          f"({100 * (params['diffusers'] / params['genlab'] - 1):+.2f}%)", flush=True)
    if abs(params["diffusers"] / params["genlab"] - 1) > 0.15:
        print("warning: the parameter counts differ by more than 15%", file=sys.stderr)

    flops = {k: (None if args.no_flops else r.flops_per_step()) for k, r in runners.items()}
    for k, r in runners.items():
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            r.step()
        if args.warmup:
            print(f"warmup {k}: {args.warmup} steps in {time.perf_counter() - t0:.2f}s", flush=True)

    windows = {k: [] for k in models}
    for rep in range(args.repeats):
        for k in models:
            w = runners[k].window(args.seconds)
            windows[k].append(w)
            noisy = "  (noisy: slowest step > 2x the median; is something else using the CPUs?)" \
                if w["step_s_max"] > 2 * w["step_s_median"] else ""
            print(f"window {rep + 1}/{args.repeats} {k:15s}: {w['steps']:4d} steps, {w['images_per_s']:8.1f} images/s, "
                  f"step median {1e3 * w['step_s_median']:.1f} ms (min {1e3 * w['step_s_min']:.1f}, "
                  f"max {1e3 * w['step_s_max']:.1f}){noisy}", flush=True)

    info = machine()
    sampling = {}
    if args.sample_batch:
        for k in models:
            sampling[k] = sampling_speed(runners[k].model, shape, args.sample_batch, args.sample_seconds,
                                         diffusers=k == "diffusers")
            print(f"sampling {k:15s}: {sampling[k]['images_per_s_per_eval']:8.1f} images/s per network evaluation "
                  f"(batch {args.sample_batch}, median of {sampling[k]['calls']} calls)", flush=True)
    results = {"case": args.case, "shape": list(shape), "config": args.config, "overrides": list(args.overrides),
               "batch_size": bs, "threads": args.threads, "sampling": sampling,
               "seconds": args.seconds, "repeats": args.repeats, "warmup": args.warmup,
               "loop_extras": args.loop_extras, "machine": info, "models": {}}
    if args.repeats > 0:
        for k in models:
            ips = [w["images_per_s"] for w in windows[k]]
            med = statistics.median(ips)
            gflops = flops[k] / bs * med / 1e9 if flops[k] else None
            results["models"][k] = {"parameters": params[k], "images_per_s_median": med, "images_per_s_min": min(ips),
                                    "images_per_s_max": max(ips), "flops_per_image": flops[k] / bs if flops[k] else None,
                                    "gflop_per_s": gflops, "windows": windows[k]}
        ratio = results["models"]["genlab"]["images_per_s_median"] / results["models"]["diffusers"]["images_per_s_median"]
        results["ratio_genlab_over_diffusers"] = ratio

        print(f"\nmachine: {info['cpu']} ({info['cpu_count']} CPUs, {info['usable_cpus']} usable), "
              f"{info['platform']}, python {info['python']}, torch {info['torch']}")
        print(f"case {args.case} ({'x'.join(map(str, shape))}), config {args.config} {' '.join(args.overrides)}; "
              f"{args.repeats} x {args.seconds:g}s windows per model, "
              f"interleaved; step = loss, backward, AdamW{' + clip + EMA' if args.loop_extras else ''}\n")
        print("| model | parameters | batch | threads | train images/s (median) | min-max | MFLOP/image "
              "(fwd+bwd) | GFLOP/s | ratio | sampling images/s per eval | ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        d_ips = results["models"]["diffusers"]["images_per_s_median"]
        d_smp = sampling.get("diffusers", {}).get("images_per_s_per_eval")
        for k in models:
            m = results["models"][k]
            fpi = f"{m['flops_per_image'] / 1e6:.1f}" if m["flops_per_image"] else "-"
            gfs = f"{m['gflop_per_s']:.1f}" if m["gflop_per_s"] else "-"
            smp = sampling.get(k, {}).get("images_per_s_per_eval")
            sr = f"{smp / d_smp:.3f}" if smp and d_smp else "-"
            print(f"| {k} | {m['parameters']:,} | {bs} | {args.threads} | {m['images_per_s_median']:.1f} | "
                  f"{m['images_per_s_min']:.1f}-{m['images_per_s_max']:.1f} | {fpi} | {gfs} | "
                  f"{m['images_per_s_median'] / d_ips:.3f} | {f'{smp:.1f}' if smp else '-'} | {sr} |")
        if "genlab-compiled" in results["models"]:
            results["ratio_compiled_over_diffusers"] = \
                results["models"]["genlab-compiled"]["images_per_s_median"] / d_ips
        print(f"\nratio genlab / diffusers (medians): {ratio:.3f}")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")

    if args.profile:
        for k in (models if args.profile_model == "both" else (args.profile_model,)):
            profile(runners[k], args.profile_steps)
    return results


if __name__ == "__main__":
    main()
