"""Benchmark B2 (benchmarks/README.md, B2): autoregression vs diffusion on digits, 300 s of training per method.

    python benchmarks/b2_digits.py [--out bench_out/b2] [--copy-docs]

This is `genlab compare --config compare_digits --out bench_out/b2` (resumable: finished runs and evaluations
are reused) plus, with --copy-docs, the small pictures the README shows: docs/b2_fid_vs_nfe.png,
docs/b2_samples.png (16 samples per method side by side) and docs/b2_process.png (raster AR filling in,
any-order AR revealing 16 pixels per step, diffusion's x_t and x0_hat over the steps).
About 50 minutes on 2 CPU cores (7 x 300 s of training, then sampling 1000 images per row, including DDPM with
1000 steps for three models, and the exact diffusion bound over all 1000 timesteps).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def samples_figure(results: dict, img: Path, path: Path) -> None:
    """One panel per method: its first sample grid, titled with FID and evaluations."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    names = [n for n in results["_spec"]["order"] if "pictures" in results.get(n, {})]
    fig, axes = plt.subplots(1, len(names), figsize=(1.9 * len(names), 2.4), dpi=110)
    for ax, name in zip(axes, names):
        rec = results[name]
        g = rec["pictures"]["grids"][0]
        row = next(r for r in rec["rows"].values() if r["opts"] == g["opts"])
        ax.imshow(Image.open(img / g["path"]), cmap="gray", interpolation="nearest")
        ax.set_title(f"{rec['label']}\n{row['sampler']}: FID {row['fid']:.1f}, {row['nfe']} ev.", fontsize=6.5)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def process_figure(results: dict, img: Path, path: Path, names=("pixelcnn", "any_order", "ddpm_v")) -> None:
    """The generation process of one raster AR model, any-order AR and one diffusion model, stacked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    names = [n for n in names if "pictures" in results.get(n, {})]
    ims = [Image.open(img / results[n]["pictures"]["process"]["path"]).convert("RGB") for n in names]
    heights = [i.height / i.width * 7 + 0.3 for i in ims]
    fig, axes = plt.subplots(len(ims), 1, figsize=(7, sum(heights)), dpi=110,
                             gridspec_kw={"height_ratios": heights})
    for ax, name, im in zip(axes, names, ims):
        rec = results[name]
        ax.imshow(im, interpolation="nearest")
        how = {"autoregressive": "pixel by pixel in raster order (blue: not generated yet)",
               "any_order": f"{rec['pictures']['process']['opts'].get('k', 1)} pixels per step in a random order",
               "diffusion": "x_t (odd rows) and the predicted clean image x0_hat (even rows) over the steps"}
        ax.set_title(f"{rec['label']}: {how.get(rec['method'], '')}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench_out" / "b2"))
    ap.add_argument("--copy-docs", action="store_true", help="write the README's pictures under docs/")
    ap.add_argument("--only", nargs="+", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    from genlab.report.compare import run

    out = run("compare_digits", args.out, only=args.only)
    results = json.loads((out / "results.json").read_text())
    print((out / "README.md").read_text())
    if args.copy_docs:
        docs = ROOT / "docs"
        shutil.copy(out / "img" / "fid_vs_nfe.png", docs / "b2_fid_vs_nfe.png")
        samples_figure(results, out / "img", docs / "b2_samples.png")
        process_figure(results, out / "img", docs / "b2_process.png")
        print(f"wrote {docs}/b2_fid_vs_nfe.png, b2_samples.png, b2_process.png")


if __name__ == "__main__":
    main()
