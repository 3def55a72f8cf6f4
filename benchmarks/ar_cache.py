"""Incremental sampling with a cache vs re-running the whole network for every sub-pixel, on 28x28 images with
256 levels (MNIST-sized; random weights: speed does not depend on training).

    python benchmarks/ar_cache.py [--backbone transformer] [--n 4] [--width 128] [--layers 4] [--threads 2]
    python benchmarks/ar_cache.py --backbone pixelcnn [--width 64] [--layers 8] [--kernel-size 5] [--size 28]

Both draw the same images from the same per-sample seeds (checked), one after the other in one run. The cached
sampler makes 784 single-position steps: for the transformer with its key/value cache; for the gated PixelCNN
with cached convolution inputs (Ramachandran et al. 2017: the vertical stack once per row, the horizontal stack
and head once per pixel). The uncached one makes 784 full forward passes over the growing image. PixelCNN
defaults are those of the shipped ``digits_pixelcnn`` recipe (width 64, 8 layers, kernel 5).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from genlab.config import load_config
from genlab.methods import get_method

DEFAULTS = {"transformer": {"width": 128, "layers": 4}, "pixelcnn": {"width": 64, "layers": 8}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", choices=tuple(DEFAULTS), default="transformer")
    ap.add_argument("--n", type=int, default=4, help="images per sampler")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--width", type=int, default=None, help="transformer: 128, pixelcnn: 64")
    ap.add_argument("--layers", type=int, default=None, help="transformer: 4, pixelcnn: 8")
    ap.add_argument("--kernel-size", type=int, default=5, help="pixelcnn only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (benchmarks/gpu_check.py)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    width = args.width or DEFAULTS[args.backbone]["width"]
    layers = args.layers or DEFAULTS[args.backbone]["layers"]
    torch.set_num_threads(args.threads)
    over = ["method=autoregressive", f"ar.backbone={args.backbone}", f"ar.width={width}", f"ar.layers={layers}",
            "ar.heads=4", f"ar.kernel_size={args.kernel_size}", "train.max_steps=1"]
    method = get_method(load_config(None, over))
    torch.manual_seed(0)
    model = method.build_model((1, args.size, args.size), 0, levels=256).eval().to(args.device)
    params = sum(p.numel() for p in model.parameters())
    res = {"backbone": args.backbone, "image": f"1x{args.size}x{args.size}", "levels": 256, "n": args.n,
           "width": width, "layers": layers, "params": params, "threads": args.threads, "device": args.device}
    if args.backbone == "pixelcnn":
        res["kernel_size"] = args.kernel_size
    out = {}
    for use_cache in (True, False):
        t0 = time.perf_counter()
        x, nfe = method.sample(model, args.n, seed=0, batch_size=args.n, use_cache=use_cache, device=args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        out[use_cache] = x
        key = "cached" if use_cache else "uncached"
        res[key + "_seconds"] = dt
        res[key + "_seconds_per_image"] = dt / args.n
        print(f"{key:9s}: {args.n} images, {nfe} steps each, {dt:.2f}s ({dt / args.n:.2f}s per image)", flush=True)
    res["same_samples"] = bool(torch.equal(out[True], out[False]))
    res["speedup"] = res["uncached_seconds"] / res["cached_seconds"]
    print(f"speed-up of the cache: {res['speedup']:.1f}x (same samples: {res['same_samples']}); {args.backbone}, "
          f"{params / 1e6:.2f}M parameters, {args.threads} threads")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
