"""Evaluating samples and checkpoints with one harness: FID against the train split's statistics (the headline),
FID against all images, the matched-N comparison with the real-vs-real floor (benchmarks/README.md, B1), KID,
precision/recall, memorization, class statistics, and sampling cost.

Samples are integer level arrays (N, C, H, W) of the dataset (digits: 0..16), as ``genlab sample --out x.npy``
writes them, or directories of PNGs mapped to the dataset's levels.
"""
from __future__ import annotations

import functools
import math
import os
import resource
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..data import from_model, load_dataset
from ..data.images import read_image
from . import metrics as M
from .features import FeatureExtractor, load_featnet
from .folder_featnet import FolderData, folder_reference


@functools.lru_cache(maxsize=4)
def reference(data: str = "digits", root: Optional[str] = None) -> dict:
    """Real images and their features: the train split (train + val: the B1 train split), test, and all. For an
    image folder (``data`` a :class:`~genlab.eval.folder_featnet.FolderData`), its train split and, in the place
    of test, its val split (:func:`~genlab.eval.folder_featnet.folder_reference`)."""
    if isinstance(data, FolderData):
        return folder_reference(data)
    fx = load_featnet(data, root=root)
    train = load_dataset(data, "train+val", root=root, labels=True)
    test = load_dataset(data, "test", root=root, labels=True)
    f_train, _ = fx(train.x, train.levels)
    f_test, _ = fx(test.x, test.levels)
    return {"fx": fx, "train": train, "test": test, "levels": train.levels, "shape": tuple(train.shape),
            "f_train": f_train, "f_test": f_test, "stats_train": M.feature_stats(f_train),
            "stats_all": M.feature_stats(np.concatenate([f_train, f_test]))}


NPY_MAGIC = b"\x93NUMPY"
SAMPLES_FIX = "write samples with `genlab sample --out samples.npy`"
DTYPE_KINDS = {"b": "boolean", "c": "complex", "O": "object", "S": "bytes", "U": "string", "V": "structured/void",
               "M": "datetime", "m": "timedelta"}


def check_dtype(dtype: np.dtype, what: str, levels: int) -> None:
    """A ValueError unless ``dtype`` is an integer or floating-point type (floats must then hold integers)."""
    if dtype.kind in "iuf":
        return
    kind = DTYPE_KINDS.get(dtype.kind, "unsupported")
    raise ValueError(f"{what}: dtype {dtype} ({kind}) cannot hold images; expected integer levels "
                     f"0..{levels - 1} (an integer array of shape (N, C, H, W)); {SAMPLES_FIX}")


def _npy_dtype(f, path) -> Optional[np.dtype]:
    """The dtype in the header of an open .npy file (after its magic check), or None for a format version
    without a public header reader; a ValueError when the header is damaged."""
    fmt = np.lib.format
    try:
        major, _ = fmt.read_magic(f)
        reader = {1: fmt.read_array_header_1_0, 2: fmt.read_array_header_2_0}.get(major)
        if reader is None:
            return None
        shape, _, dtype = reader(f)
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize       # (Python ints: no overflow)
        have = os.fstat(f.fileno()).st_size - f.tell()
        if need > have and not dtype.hasobject:     # (object arrays: refused by their dtype next)
            raise ValueError(f"its header announces {shape} x {dtype} ({need} bytes) but only {have} bytes "
                             "follow")
        return dtype
    except (ValueError, OSError, EOFError, SyntaxError) as e:   # SyntaxError: header dict that does not parse
        raise ValueError(f"cannot read {path}: its .npy header is damaged or truncated ({e}); {SAMPLES_FIX}") \
            from None


def read_npy(path: Path, levels: int) -> np.ndarray:
    """The array of a .npy file, with a ValueError saying what is wrong for anything else: another kind of file,
    a damaged or truncated header or data, or a dtype that cannot hold levels (object arrays never unpickled)."""
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
        if head != NPY_MAGIC:
            start = f"it starts with {(head + f.read(10))!r}" if head else "it is empty"
            raise ValueError(f"cannot read samples: {path} is not a .npy file ({start}); {SAMPLES_FIX}")
        f.seek(0)
        dtype = _npy_dtype(f, path)
    if dtype is not None:
        check_dtype(dtype, str(path), levels)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"cannot read {path} as a .npy array: it is damaged or truncated ({e}); "
                         f"{SAMPLES_FIX}") from None


MIN_SAMPLES = 4


def check_samples(levels, data: str = "digits", root: Optional[str] = None, what: str = "samples") -> np.ndarray:
    """The samples as a uint8 array of the dataset's shape and levels, or a ValueError saying what is wrong."""
    ref = reference(data, root)
    a = np.asarray(levels)
    check_dtype(a.dtype, what, ref["levels"])
    if a.ndim == 3 and ref["shape"][0] == 1:
        a = a[:, None]
    if a.ndim != 4 or tuple(a.shape[1:]) != ref["shape"]:
        raise ValueError(f"{what}: expected images of shape (N, {', '.join(map(str, ref['shape']))}) for {data}, "
                         f"got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise ValueError(f"{what}: expected integer levels 0..{ref['levels'] - 1} (dtype {a.dtype} holds "
                             "non-integer values); write samples with `genlab sample --out samples.npy`")
    if a.size and (a.min() < 0 or a.max() > ref["levels"] - 1):
        raise ValueError(f"{what}: values must be levels 0..{ref['levels'] - 1} for {data}, found "
                         f"{a.min()}..{a.max()}")
    if len(a) < MIN_SAMPLES:
        raise ValueError(f"{what}: need at least {MIN_SAMPLES} samples (precision/recall use 3 nearest "
                         f"neighbours), got {len(a)}")
    return a.astype(np.uint8)


def load_samples(path, data: str = "digits", root: Optional[str] = None) -> np.ndarray:
    """A .npy of levels, or a directory of PNG/JPEG images (read by :func:`~genlab.data.images.read_image`)
    mapped to the dataset's levels."""
    path = Path(path)
    ref = reference(data, root)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise ValueError(f"{path}: no PNG/JPEG images found")
        c = ref["shape"][0]
        imgs = []
        for f in files:
            arr = read_image(f, c)
            if arr.shape != ref["shape"]:
                raise ValueError(f"{f}: image of shape {arr.shape}, expected {ref['shape']} for {data}")
            imgs.append(np.round(arr.astype(np.float64) / 255 * (ref["levels"] - 1)))
        return check_samples(np.stack(imgs), data, root, what=str(path))
    return check_samples(read_npy(path, ref["levels"]), data, root, what=str(path))


def evaluate_samples(levels, data: str = "digits", *, seed: int = 0, root: Optional[str] = None,
                     pairs_png=None) -> dict:
    """Every sample metric of B1 on one set of samples (levels). ``pairs_png``: write the closest
    sample/training pairs there."""
    ref = reference(data, root)
    x = check_samples(levels, data, root)
    fx: FeatureExtractor = ref["fx"]
    f, p = fx(x, ref["levels"])
    stats = M.feature_stats(f)
    kid_m, kid_s = M.kid(f, ref["f_train"], subsets=50, subset_size=min(500, len(f)), seed=seed)
    prec, rec = M.precision_recall(ref["f_train"], f)
    mem = M.memorization(x, ref["train"].x.numpy(), feats_samples=f, feats_train=ref["f_train"])
    if pairs_png:
        M.save_closest_pairs(x, ref["train"].x.numpy(), mem, pairs_png, levels=ref["levels"])
    matched = M.matched_n_fid(ref["f_train"], ref["f_test"], f, n=min(len(ref["f_test"]), len(f)), seed=seed)
    # a rotation network's probabilities are rotations, not classes: no class statistics for it
    cs = M.class_stats(p) if getattr(fx, "task", "classes") == "classes" else \
        dict.fromkeys(("entropy", "max_entropy", "confidence"))
    return {"n": len(x), "fid_train": M.fid_from_stats(stats, ref["stats_train"]),
            "fid_all": M.fid_from_stats(stats, ref["stats_all"]), "matched": matched,
            "kid_mean": kid_m, "kid_std": kid_s, "precision": prec, "recall": rec,
            "dup_fraction": mem["exact_duplicate_fraction"], "nn_pixel": mem["pixel_nn_mean"],
            "nn_feature": mem.get("feature_nn_mean"), "entropy": cs["entropy"], "max_entropy": cs["max_entropy"],
            "confidence": cs["confidence"], "heldout": ref.get("heldout", "test split"), **fx.summary()}


def sanity_samples(data: str = "digits", root: Optional[str] = None, seed: int = 0) -> dict:
    """Reference sets that must rank as expected: real test images (best), per-class mean images (blurry but
    the right classes: far worse), one repeated mean image, Gaussian and uniform noise (worst). Each has as many
    images as the test split."""
    ref = reference(data, root)
    train, test, L = ref["train"], ref["test"], ref["levels"]
    rng = np.random.default_rng(seed)
    xt = train.x.numpy().astype(np.float64)
    n = len(test)
    means = {k: xt[train.y.numpy() == k].mean(0) for k in range(train.num_classes)}
    class_means = np.stack([means[int(k)] for k in test.y.numpy()])
    mu, sd = xt.mean(0), xt.std(0)
    q = lambda a: np.clip(np.round(a), 0, L - 1).astype(np.uint8)  # noqa: E731
    return {"real test": test.x.numpy(), "per-class means": q(class_means),
            "one mean image": q(np.repeat(mu[None], n, 0)),
            "Gaussian noise": q(mu + sd * rng.standard_normal((n, *mu.shape))),
            "uniform noise": q(rng.integers(0, L, (n, *mu.shape)))}


def _peak_memory_mb(device) -> tuple[float, str]:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20, "peak CUDA memory"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


def summarize(runs: list[dict]) -> dict:
    """Mean and (population) standard deviation over sampling seeds of every numeric metric."""
    out = {}
    for k, v in runs[0].items():
        if isinstance(v, (int, float)) and v is not None:
            vals = [r[k] for r in runs]
            out[k] = float(np.mean(vals))
            out[k + "_std"] = float(np.std(vals))
        elif isinstance(v, dict):
            out[k] = summarize([r[k] for r in runs])
    return out


def evaluate_run(cfg, method, model, state, *, n: int = 1000, seeds: int = 1, use_ema: bool = True,
                 batch_size: int = 500, pairs_png=None, **opts) -> dict:
    """Sample n images per seed (seed k uses per-sample seeds k * n + i) from a loaded run and evaluate them,
    with their cost. ``opts``: the method's sampling options (None values are dropped); loading a run from
    disk is :func:`genlab.runs.evaluate_checkpoint`."""
    from ..config import check_options

    check_options(n=n, seeds=seeds, batch_size=batch_size, **opts)
    if n < MIN_SAMPLES:
        raise ValueError(f"n={n}: an evaluation needs at least {MIN_SAMPLES} samples")
    opts = {k: v for k, v in opts.items() if v is not None}
    typed = method.options(**opts)       # a clear error for an option of another method
    data, levels = state["data"]["name"], state["data"]["levels"]
    target = FolderData.from_config(cfg.data) if data == "folder" else data   # a folder: known by its config
    dev = next(model.parameters()).device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    runs, secs, nfe = [], [], 0
    for k in range(seeds):
        t0 = time.perf_counter()
        x, nfe = method.sample(model, n, seed=k * n, batch_size=batch_size, device=dev, **opts)
        secs.append(time.perf_counter() - t0)
        runs.append(evaluate_samples(from_model(x, levels).numpy(), target, seed=k, root=cfg.data.root,
                                     pairs_png=pairs_png if k == 0 else None))
    mem, mem_kind = _peak_memory_mb(dev)
    out = summarize(runs)
    out.update({k: v for k, v in runs[0].items() if isinstance(v, str)})    # labels: held-out split, featnet task
    out.update({"checkpoint": state["path"], "step": state["step"], "data": data, "n": n, "seeds": seeds,
                "method": cfg.method, "sampler": method.sampling_label(typed),
                "steps": getattr(typed, "steps", None), "nfe": nfe,
                "seconds_per_1000": 1000 * float(np.mean(secs)) / n, "peak_memory_mb": mem,
                "peak_memory_kind": mem_kind, "weights": "ema" if use_ema else "raw", "per_seed": runs})
    return out


def format_report(res: dict, title: str = "") -> str:
    """A small Markdown table of an evaluation (with mean +- spread when several seeds were drawn)."""
    def val(key, fmt="{:.3f}"):
        v = res.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        s = fmt.format(v)
        sd = res.get(key + "_std")
        return f"{s} ± {fmt.format(sd)}" if sd else s

    m = res.get("matched", {})
    rows = [("FID vs train split (headline)", val("fid_train")), ("FID vs all images", val("fid_all")),
            (f"FID of {m.get('n', '?')}-sample subsets vs train / real-vs-real floor "
             f"({res.get('heldout', 'test split')} vs train)",
             f"{m.get('fake_subset_mean', float('nan')):.3f} / {m.get('floor', float('nan')):.3f} "
             f"(ratio {m.get('ratio', float('nan')):.2f})"),
            ("KID vs train", val("kid_mean", "{:.5f}")), ("precision / recall",
                                                           f"{val('precision')} / {val('recall')}"),
            (f"class entropy (max ln {round(math.exp(res.get('max_entropy') or math.log(10)))} = "
             f"{res.get('max_entropy') or math.log(10):.3f})", val("entropy")),
            ("classifier confidence", val("confidence")),
            ("identical to a training image", val("dup_fraction", "{:.4f}")),
            ("mean nearest-train distance (pixels)", val("nn_pixel")),
            ("feature network test accuracy", val("featnet_test_accuracy", "{:.4f}"))]
    if "featnet_val_accuracy" in res:           # an image folder's network (no test split, maybe no classes)
        rotation = res.get("featnet_task") == "rotation"
        drop = ("class", "feature network test") if rotation else ("feature network test",)
        rows = [r for r in rows if not r[0].startswith(drop)]
        task = "rotation prediction" if rotation else "classes"
        rows.append((f"feature network val accuracy ({task})", val("featnet_val_accuracy", "{:.4f}")))
    if "test_bpd" in res:
        rows.append((f"test bits/dim ({res['test_n']} images)", f"{res['test_bpd']:.4f} ± {res['test_bpd_sem']:.4f}"))
    if "val_bpd" in res:                        # an image folder: no test split
        rows.append((f"val split bits/dim ({res['val_n']} images)", f"{res['val_bpd']:.4f} ± {res['val_bpd_sem']:.4f}"))
    if "nfe" in res:
        rows += [("network evaluations per sample", str(res["nfe"])),
                 ("seconds per 1000 samples", f"{res['seconds_per_1000']:.2f}"),
                 (res["peak_memory_kind"] + " (MB)", f"{res['peak_memory_mb']:.0f}")]
    head = f"### {title}\n\n" if title else ""
    return head + "| metric | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"
