"""Image folders that do not fit in memory: the memory-mapped folder cache (genlab.data.cache) against decoding
the PNGs on every epoch and against decoding the whole split into memory (``data.cache=false``).

    .venv/bin/python benchmarks/folder_cache.py --dir /big/disk/fc              # 100000 images, and 10000
    .venv/bin/python benchmarks/folder_cache.py --dir /tmp/fc --n 500            # smoke test (500 and 50)

Data: ``--n`` 64x64 RGB PNGs (a random gradient, a few random ellipses, rectangles and lines, a little noise),
written to ``DIR/images/partNNN/`` in parts of ``--small`` images (default n / 10) by all cores; images already
there are kept (the generation resumes), each written atomically. The small folder is ``DIR/images/part000``,
the large one ``DIR/images``.

Each measurement runs in a fresh Python process (``torch.set_num_threads(--threads)``), one after the other, on
the "train" split (90%), for the small and the large folder:

- ``build``: ``load_dataset`` with a new, empty cache directory (under DIR, removed at the end): listing,
  decoding, writing; seconds and the cache's size on disk.
- ``cache``: the built cache opened again (seconds: listing, checking, mapping), then ``--batches`` random
  batches of ``--batch`` images through ``ImageDataset.batch`` (uniform indices, as the training loop's epoch
  permutations draw them): images/s and ms per batch.
- ``decode``: the same batches decoded from the PNGs each time (``folder.load_image`` per image, stacked,
  ``to_model``), the data loader one would write without a cache.
- ``memory``: ``load_dataset(..., cache=False)``, today's in-memory split: load seconds, then the same batches.
- ``step`` (once; ``--steps 0`` skips it): a training step of the ``digits_ddpm`` UNet at 64x64 (width 32,
  mults [1, 2], batch ``--batch``) on ``--device``, for the question whether gathering a batch is a bottleneck.

Each process samples its ``RssAnon`` (anonymous resident memory, from /proc/self/status; the cache's file-backed
pages are not in it) every 5 ms from a thread and reports the peak above its start (after imports). Results go
to ``--json`` (default ``DIR/results.json``) and a table is printed.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SIZE = 64


# ------------------------------------------------------------------------------------------------ images

def image_path(images: Path, i: int, part: int) -> Path:
    return images / f"part{i // part:03d}" / f"img{i:07d}.png"


def draw(i: int) -> "Image.Image":
    """Image ``i``: a gradient between two random colours, 1-4 random shapes, noise; a function of i alone."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(i)
    t = np.linspace(0, 1, SIZE)[:, None] if rng.random() < 0.5 else np.linspace(0, 1, SIZE)[None, :]
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    grad = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    im = Image.fromarray(np.broadcast_to(grad, (SIZE, SIZE, 3)).astype(np.uint8))
    pen = ImageDraw.Draw(im)
    for _ in range(rng.integers(1, 5)):
        x0, y0 = rng.integers(0, SIZE - 8, 2)
        x1, y1 = x0 + rng.integers(6, SIZE // 2), y0 + rng.integers(6, SIZE // 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        if kind == 0:
            pen.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            pen.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            pen.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 4)))
    arr = np.asarray(im, dtype=np.int16) + rng.integers(-6, 7, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _write_range(job: tuple) -> int:
    images, start, stop, part = job
    made = 0
    for i in range(start, stop):
        p = image_path(images, i, part)
        if p.exists():
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        draw(i).save(tmp, format="PNG")
        os.replace(tmp, p)
        made += 1
    return made


def generate(images: Path, n: int, part: int) -> None:
    """Images 0..n-1 that are not there yet, on every core."""
    t0 = time.perf_counter()
    jobs = [(images, s, min(s + 1000, n), part) for s in range(0, n, 1000)]
    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:
        made = sum(pool.imap_unordered(_write_range, jobs))
    print(f"images: {n} in {images} ({made} new, {time.perf_counter() - t0:.1f}s)", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ one process

class PeakAnon:
    """Peak RssAnon (MB) of this process above its value at start (after the imports: the table also gives the
    process's own peak, start included), sampled every 5 ms by a thread."""

    def __init__(self):
        self.start = self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.now())

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())
        return {"rss_anon_start_mb": round(self.start, 1), "peak_rss_anon_mb": round(self.peak - self.start, 1),
                "rss_anon_end_mb": round(self.now() - self.start, 1)}


def batch_indices(n: int, batches: int, batch: int, seed: int = 0) -> list:
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(n, (batch,), generator=g) for _ in range(batches)]


def time_batches(get, n: int, args) -> dict:
    """images/s and ms per batch of ``get(idx)`` over the fixed random batches (after one warm-up batch)."""
    idxs = batch_indices(n, args.batches + 1, args.batch)
    get(idxs[0])
    t0 = time.perf_counter()
    for idx in idxs[1:]:
        out = get(idx)
        assert out.shape[0] == args.batch
    dt = time.perf_counter() - t0
    return {"images_per_s": round(args.batches * args.batch / dt, 1), "ms_per_batch": round(dt / args.batches * 1e3, 3)}


def child(args) -> dict:
    """One measurement (``args.child``) in this fresh process."""
    import torch

    from genlab.data import load_dataset, to_model
    from genlab.data.folder import find_images, load_image

    torch.set_num_threads(args.threads)
    root = Path(args.root)
    kw = dict(root=root, image_size=SIZE, cache_dir=args.cache_dir)
    mem = PeakAnon()
    out: dict = {}
    t0 = time.perf_counter()
    if args.child in ("build", "cache", "memory"):
        ds = load_dataset("folder", "train", cache=args.child != "memory", **kw)
        out["load_s"] = round(time.perf_counter() - t0, 2)
        out["images"] = len(ds)
        if args.child != "build":
            out.update(time_batches(lambda idx: ds.batch(idx)["x"], len(ds), args))
    elif args.child == "decode":
        files = find_images(root)
        order = np.random.default_rng(0).permutation(len(files))
        train = order[: len(files) - len(files) // 10]
        out["load_s"] = round(time.perf_counter() - t0, 2)      # the listing
        out["images"] = len(train)

        def get(idx):
            x = np.stack([load_image(files[int(train[int(i)])], SIZE, 3) for i in idx])
            return to_model(torch.from_numpy(x), 256)

        out.update(time_batches(get, len(train), args))
    elif args.child == "step":
        out.update(train_step_time(args))
    out.update(mem.stop())
    return out


def train_step_time(args) -> dict:
    """ms of one diffusion training step (loss, backward, AdamW) of the digits_ddpm UNet on 64x64 RGB batches."""
    import torch

    from genlab.config import load_config
    from genlab.methods import get_method
    from genlab.rng import StepRNG
    from genlab.train.dist import pick_device
    from genlab.train.loop import build_optimizer

    cfg = load_config("digits_ddpm", [f"train.batch_size={args.batch}"])
    dev = pick_device(args.device)
    method = get_method(cfg)
    model = method.build_model((3, SIZE, SIZE), 0, levels=256).to(dev)
    opt = build_optimizer(model, cfg.train)
    x = torch.rand(args.batch, 3, SIZE, SIZE) * 2 - 1

    def step(i):
        loss = method.loss(model, {"x": x.to(dev)}, StepRNG(i, args.batch, slice(None), dev))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step(0)
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i + 1)
    return {"device": str(dev), "step_ms": round((time.perf_counter() - t0) / args.steps * 1e3, 1),
            "params": sum(p.numel() for p in model.parameters())}


def run_child(mode: str, root: Path, cache_dir: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--root", str(root), "--cache-dir", str(cache_dir),
           "--batches", str(args.batches), "--batch", str(args.batch), "--threads", str(args.threads),
           "--steps", str(args.steps), "--device", args.device]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"the {mode} measurement on {root} failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"  {mode:7s} {root.name}: {res}", file=sys.stderr)
    return res


# ------------------------------------------------------------------------------------------------ the table

def table(rows: list) -> str:
    head = ("| images | build s | cache MB | open s | cache img/s | decode img/s | in-memory load s | "
            "in-memory img/s | peak RssAnon MB above start: build / cache / decode / in-memory | "
            "process peak RssAnon MB, cache |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        b, c, d, m = (r[k] for k in ("build", "cache", "decode", "memory"))
        lines.append(f"| {r['n']} | {b['load_s']} | {r['cache_mb']} | {c['load_s']} | {c['images_per_s']:.0f} | "
                     f"{d['images_per_s']:.0f} | {m['load_s']} | {m['images_per_s']:.0f} | "
                     f"{b['peak_rss_anon_mb']} / {c['peak_rss_anon_mb']} / {d['peak_rss_anon_mb']} / "
                     f"{m['peak_rss_anon_mb']} | {c['rss_anon_start_mb'] + c['peak_rss_anon_mb']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="where the images (DIR/images) and the scratch caches go")
    ap.add_argument("--n", type=int, default=100_000, help="images of the large folder")
    ap.add_argument("--small", type=int, default=None, help="images of the small folder (default n / 10; divides n)")
    ap.add_argument("--batches", type=int, default=200, help="random batches per throughput measurement")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="timed training steps after a warm-up (0: no step)")
    ap.add_argument("--device", default="auto", help="device of the training step")
    ap.add_argument("--json", default=None, help="default DIR/results.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if not args.dir:
        ap.error("give --dir DIR: where the images are generated (or reused) and the caches built")
    small = args.small or max(1, args.n // 10)
    if args.n % small:
        ap.error(f"--small {small} must divide --n {args.n} (the small folder is the first part of the large one)")
    if not Path("/proc/self/status").exists():
        ap.error("this benchmark reads RssAnon from /proc/self/status (Linux)")
    out_dir = Path(args.dir).expanduser().absolute()
    images = out_dir / "images"
    generate(images, args.n, small)
    extra = sorted(p for p in images.glob("part*") if int(p.name[4:]) >= args.n // small)
    if extra:
        raise SystemExit(f"{images} holds more parts than --n {args.n} needs ({extra[0].name}, ...): give the "
                         f"--n it was made with, or another --dir")

    scratch = Path(tempfile.mkdtemp(prefix=".bench-cache-", dir=out_dir))   # ours: removed at the end
    rows = []
    try:
        step = run_child("step", images / "part000", scratch, args) if args.steps > 0 else None
        for n, root in ((small, images / "part000"), (args.n, images)):
            r = {"n": n, "root": str(root)}
            for mode in ("build", "cache", "decode", "memory"):
                r[mode] = run_child(mode, root, scratch, args)
            r["cache_mb"] = round(sum(f.stat().st_size for f in scratch.rglob("*") if f.is_file()
                                      and f.parent.name.startswith(root.name + "-")) / 1e6, 1)
            rows.append(r)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    res = {"machine": platform.platform(), "cpu_count": os.cpu_count(), "threads": args.threads,
           "batch": args.batch, "batches": args.batches, "image_size": SIZE, "step": step, "rows": rows,
           "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = Path(args.json) if args.json else out_dir / "results.json"
    path.write_text(json.dumps(res, indent=1))
    print(table(rows))
    gather = rows[-1]["cache"]["ms_per_batch"]
    print(f"\ngathering a batch of {args.batch} from the cache ({args.n} images): {gather} ms", end="")
    if step:
        print(f"; a training step ({step['device']}, {step['params']} parameters): {step['step_ms']} ms "
              f"({gather / step['step_ms']:.2%} of it)", end="")
    print(f". Results: {path}")


if __name__ == "__main__":
    main()
