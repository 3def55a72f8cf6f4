"""The CUDA paths of genlab on one GPU, in at most about 8 minutes and without network access.

    python benchmarks/gpu_check.py --mnist DIR [--cache DIR] [--out bench_out/gpu] [--train-seconds 180]

1. bf16 autocast and fp16 with gradient scaling: 30 steps of a small digits diffusion model each, loss finite,
   the step's host reads deferred to the log steps (``Trainer.lazy``);
2. a checkpoint written on the GPU is loaded on the CPU and samples there (same images as on the GPU up to
   rounding: the fraction of equal pixels is reported);
3. ``mnist_ddpm`` at a GPU batch size (256, width 64) for ``--train-seconds`` of training: images/s, then FID of
   2,000 samples (DPM-Solver++ 20 steps) with the MNIST feature network (from the genlab cache ``--cache``, i.e.
   ``$GENLAB_CACHE``; trained here when missing) against the MNIST train split;
4. the AR cache speed-ups on the GPU: PixelCNN and transformer, cached vs uncached, 28x28, 4 images each.

Every result goes to ``OUT/gpu_check.json`` and one line per check to stdout. Without CUDA it says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
DEV = "cuda"           # --cpu-smoke: "cpu", to check this script's pipeline on a machine without a GPU


def say(msg: str) -> None:
    print(f"[gpu] {msg}", flush=True)


def precision_paths(out: Path, res: dict) -> None:
    import genlab.api as api

    for precision in ("bf16", "fp16"):
        t0 = time.perf_counter()
        r = api.train("digits_ddpm", ["train.max_steps=30", "train.log_every=10", "train.val_every=0",
                                      f"train.precision={precision}", f"train.device={DEV}", "train.batch_size=256"],
                      name=f"prec_{precision}", runs_root=out / "runs", progress=False, force=True)
        losses = [h["loss"] for h in r.history if "loss" in h]
        ok = all(torch.isfinite(torch.tensor(losses)))
        res[f"precision_{precision}"] = {"ok": bool(ok), "losses": losses, "seconds": time.perf_counter() - t0}
        say(f"{precision}: {'ok' if ok else 'FAILED'}, losses {[round(v, 4) for v in losses]}")


def gpu_to_cpu(out: Path, res: dict) -> None:
    import genlab.api as api

    run = out / "runs" / "prec_bf16"
    x_gpu = api.sample(run, n=16, seed=0, device=DEV, progress=False, sampler="ddim", steps=20)[0]
    x_cpu = api.sample(run, n=16, seed=0, device="cpu", progress=False, sampler="ddim", steps=20)[0]
    same = float((x_gpu.cpu() == x_cpu.cpu()).float().mean())
    res["gpu_checkpoint_on_cpu"] = {"ok": True, "equal_pixel_fraction": same}
    say(f"checkpoint written on GPU, loaded and sampled on CPU: ok; {100 * same:.1f}% of pixels equal to the GPU's")


def mnist_speed_and_fid(args, out: Path, res: dict) -> None:
    import genlab.api as api

    over = [f"train.device={DEV}", "train.batch_size=256", "model.width=64",
            f"train.time_budget={args.train_seconds}s", "train.num_threads=0", "train.val_every=0",
            "train.ckpt_every=0", "train.log_every=50"]
    r = api.train("mnist_ddpm", over, name="mnist_gpu", runs_root=out / "runs", progress=False, force=True)
    speeds = [h["images_per_s"] for h in r.history if "images_per_s" in h]
    ips = sorted(speeds)[len(speeds) // 2] if speeds else None
    say(f"mnist_ddpm, batch 256, width 64: {r.state.step} steps in {r.state.time_used:.0f}s, "
        f"{ips:.0f} images/s (median of log windows)")
    t0 = time.perf_counter()
    ev = api.evaluate_checkpoint(out / "runs" / "mnist_gpu", n=2000, device=DEV, sampler="dpmpp-2m", steps=20)
    fid = ev.get("fid_train")
    res["mnist_ddpm"] = {"steps": r.state.step, "time_used": r.state.time_used, "images_per_s": ips,
                         "fid_2000": fid, "eval_s": time.perf_counter() - t0, "eval": ev}
    say(f"mnist_ddpm FID (2,000 samples, DPM-Solver++ 20): {fid}")


def ar_cache(out: Path, res: dict) -> None:
    for backbone in ("pixelcnn", "transformer"):
        js = out / f"ar_cache_{backbone}.json"
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "ar_cache.py"), "--backbone", backbone,
                        "--size", "28", "--n", "4", "--device", DEV, "--json", str(js)], check=True)
        res[f"ar_cache_{backbone}"] = json.loads(js.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", required=True, help="directory of the four MNIST IDX files")
    ap.add_argument("--cache", default=None, help="genlab cache directory holding featnets/mnist (GENLAB_CACHE)")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "gpu")
    ap.add_argument("--train-seconds", type=float, default=180.0)
    ap.add_argument("--cpu-smoke", action="store_true", help="run every check on the CPU (pipeline check only)")
    ap.add_argument("--only", nargs="*", default=None, help="precision gpu_to_cpu mnist ar_cache")
    args = ap.parse_args()
    global DEV
    if args.cpu_smoke:
        DEV = "cpu"
    elif not torch.cuda.is_available():
        say("no CUDA GPU here: nothing to check")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"                       # GENLAB_DATA/mnist -> the given directory
    data.mkdir(exist_ok=True)
    if not (data / "mnist").exists():
        (data / "mnist").symlink_to(Path(args.mnist).resolve())
    os.environ["GENLAB_DATA"] = str(data)
    if args.cache:
        os.environ["GENLAB_CACHE"] = str(Path(args.cache).resolve())
    res = {"gpu": torch.cuda.get_device_name(0) if DEV == "cuda" else "none (--cpu-smoke)", "torch": torch.__version__, "cuda": torch.version.cuda}
    say(f"{res['gpu']}, torch {res['torch']}, CUDA {res['cuda']}")
    steps = {"precision": precision_paths, "gpu_to_cpu": gpu_to_cpu,
             "mnist": lambda o, r: mnist_speed_and_fid(args, o, r), "ar_cache": ar_cache}
    failed = []
    for name, fn in steps.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        try:
            fn(args.out, res)
        except Exception as e:            # report every check, then fail at the end
            failed.append(name)
            res[name + "_error"] = f"{type(e).__name__}: {e}"
            say(f"{name}: FAILED: {type(e).__name__}: {e}")
        say(f"{name}: {time.perf_counter() - t0:.0f}s")
        (args.out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))
    say(f"results in {args.out / 'gpu_check.json'}; {'all passed' if not failed else 'failed: ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
