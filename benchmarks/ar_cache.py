"""Incremental sampling with a key/value cache vs re-running the whole transformer for every pixel, on 28x28
images with 256 levels (MNIST-sized; random weights: speed does not depend on training).

    python benchmarks/ar_cache.py [--n 4] [--width 128] [--layers 4] [--threads 2]

Both draw the same images from the same per-sample seeds (checked), one after the other in one run; the
cached sampler makes 784 single-token steps, the uncached one 784 full forward passes over the growing image
(the cost a PixelCNN always pays).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from genlab.config import load_config
from genlab.methods import get_method


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4, help="images per sampler")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(None, ["method=autoregressive", "ar.backbone=transformer", f"ar.width={args.width}",
                             f"ar.layers={args.layers}", "ar.heads=4", "train.max_steps=1"])
    method = get_method(cfg)
    torch.manual_seed(0)
    model = method.build_model((1, args.size, args.size), 0, levels=256).eval()
    params = sum(p.numel() for p in model.parameters())
    res = {"image": f"1x{args.size}x{args.size}", "levels": 256, "n": args.n, "params": params,
           "threads": args.threads}
    out = {}
    for use_cache in (True, False):
        t0 = time.perf_counter()
        x, nfe = method.sample(model, args.n, seed=0, batch_size=args.n, use_cache=use_cache)
        dt = time.perf_counter() - t0
        out[use_cache] = x
        key = "cached" if use_cache else "uncached"
        res[key + "_seconds"] = dt
        res[key + "_seconds_per_image"] = dt / args.n
        print(f"{key:9s}: {args.n} images, {nfe} steps each, {dt:.2f}s ({dt / args.n:.2f}s per image)", flush=True)
    res["same_samples"] = bool(torch.equal(out[True], out[False]))
    res["speedup"] = res["uncached_seconds"] / res["cached_seconds"]
    print(f"speed-up of the cache: {res['speedup']:.1f}x (same samples: {res['same_samples']}); "
          f"{params / 1e6:.2f}M parameters, {args.threads} threads")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
