"""Feature networks for image folders, trained on the folder's own train split.

A folder of your own images has no Inception weights to lean on (genlab runs offline) and usually no labels, so
its feature network learns by rotation prediction (Gidaris et al. 2018, "Unsupervised Representation Learning by
Predicting Image Rotations", ICLR): every image is shown upright and turned by 90, 180 and 270 degrees, and the
network (the :class:`~genlab.eval.features.FeatNet` of the other datasets, 4 outputs) must say which. Telling
which way is up needs the objects and their parts, so its penultimate layer (128-d) gives the features of FID,
KID, precision/recall and memorization, computed on upright images. A folder with class sub-folders loaded with
``data.labels=true`` (2 classes or more) gets a supervised classifier instead, like the other datasets.

Splits: the network is trained on the folder's "train" split only (the images the generator trained on) and
checked on its "val" split, which neither the generator nor the network has seen; folders have no test split, so
val is also the held-out set of the matched-N comparison and of bits/dim.

Training: batches of 32 images in all 4 rotations (128 inputs; a supervised one: 128 images), translations by up
to ``size // 16`` pixels, AdamW with a one-cycle schedule, deterministic on the CPU, for at most
``MAX_EPOCHS`` epochs and at most :func:`step_budget` steps: 1000 up to 32 px, fewer above (250 at 64 px), so
the time stays about the same: 0.1-0.3 s per step at 32 px and 0.6-1.8 s at 64 px on 2 CPU cores (1 shared core
to 2 free ones), a few minutes in all. The first steps are timed and the estimate printed.

The gate: the val accuracy of the training task must reach :func:`min_accuracy`, twice chance (0.5 for the
4 rotations, 2/K for K classes), or halfway from chance to perfect when twice chance is out of reach (2 classes:
0.75); below it the network is refused (:class:`~genlab.eval.features.FeatureError`, with the reason and the
fix). It also needs at least ``MIN_VAL_IMAGES`` val images: on fewer, a network at chance could pass by luck.

The cache: ``$GENLAB_CACHE/featnets/folder-v1/<folder name>-<S>px-<rgb|gray>-<hash>/`` (``GENLAB_CACHE``
defaults to ``~/.cache/genlab``), with ``model.safetensors`` and ``info.json`` written atomically. The hash
covers the resolved folder path, image size, channels, labels, split seed, val size, binarize and the listing of
the folder's images (relative path, size and modification time of each, as the folder's decoded-image cache
checks them), so an image added, removed or changed gives a new network; networks of earlier states of the
folder stay in their directories until you delete them. A refused network is kept too, so the check repeats
without retraining until the folder changes.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..data import ImageDataset, load_dataset, to_model
from ..data import cache as folder_cache
from ..data.folder import find_images
from . import metrics as M
from .features import (VERSION, CacheUnreadable, FeatNet, FeatNetSpec, FeatureError, FeatureExtractor, _accuracy,
                       _shift, cache_present, default_cache_dir, fit_featnet, load_cached_net, save_net)

MAX_EPOCHS = 100
STEPS = 1000                 # the step budget up to 32 px (scaled by (32 / size)^2 above, at least MIN_STEPS)
MIN_STEPS = 200
ROTATION_IMAGES = 32         # images per step of rotation prediction (x 4 rotations = 128 inputs)
CLASS_IMAGES = 128           # images per step of a supervised network
MIN_VAL_IMAGES = 10
SECONDS_PER_STEP = 0.3       # at 32 px on one of 2 busy CPU cores (measured): the estimate printed before timing


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class FolderData:
    """An image folder as a run's ``data`` section describes it: everything that decides the pixels of its
    train and val splits. Stands in for a dataset name in :mod:`genlab.eval.evaluate`."""
    root: str
    image_size: int
    channels: int = 3
    labels: bool = False
    split_seed: int = 0
    val_size: Optional[int] = None
    binarize: bool = False
    on_bad_image: str = "error"
    cache: bool = True
    cache_dir: Optional[str] = None

    @classmethod
    def from_config(cls, d) -> "FolderData":
        """From a config's ``data`` section (``cfg.data`` of a run)."""
        return cls(root=d.root, image_size=d.image_size, channels=3 if d.channels is None else d.channels,
                   labels=bool(d.labels), split_seed=d.split_seed, val_size=d.val_size, binarize=d.binarize,
                   on_bad_image=d.on_bad_image, cache=d.cache, cache_dir=d.cache_dir)

    @property
    def name(self) -> str:
        return "folder"

    def __str__(self) -> str:
        return f"the folder {self.root} ({self.image_size}px {'RGB' if self.channels == 3 else 'grayscale'})"

    def load(self, split: str) -> ImageDataset:
        """One split ("train" or "val") of the folder, as training loaded it."""
        return load_dataset("folder", split, root=self.root, image_size=self.image_size, channels=self.channels,
                            labels=self.labels, on_bad_image=self.on_bad_image, val_size=self.val_size,
                            binarize=self.binarize, seed=self.split_seed, cache=self.cache, cache_dir=self.cache_dir)


# ------------------------------------------------------------------------------------------------ spec and key

def step_budget(size: int) -> int:
    """Training steps at most: ``STEPS`` up to 32 px, then fewer in proportion to the pixels (same time)."""
    return max(MIN_STEPS, min(STEPS, round(STEPS * (32 / size) ** 2)))


def min_accuracy(classes: int) -> float:
    """The gate: twice chance, or halfway from chance to perfect where twice chance is out of reach."""
    return min(2 / classes, (1 + 1 / classes) / 2)


def folder_spec(fd: FolderData, classes: int = 0) -> FeatNetSpec:
    """The FeatNet of a folder: rotation prediction (4 outputs) unless ``classes`` >= 2."""
    k = classes if classes >= 2 else 4
    return FeatNetSpec("folder", fd.image_size, fd.channels, k, width=32, feat_dim=128, epochs=MAX_EPOCHS,
                       batch_size=CLASS_IMAGES if classes >= 2 else ROTATION_IMAGES, lr=2e-3,
                       min_accuracy=min_accuracy(k), shift=max(1, fd.image_size // 16))


def _classes(files, labels: bool) -> int:
    """Classes a labeled folder has (its first-level sub-folders, as the loader counts them), else 0."""
    if not labels:
        return 0
    return len({r.split("/", 1)[0] for r in map(files.relative, range(len(files))) if "/" in r})


def identity(fd: FolderData) -> tuple[dict, int]:
    """(what the network depends on, the number of classes): the folder's settings and a digest of the listing of
    its images (paths, sizes, modification times)."""
    if fd.root is None or fd.image_size is None or not Path(fd.root).expanduser().is_dir():
        fd.load("train")             # the folder loader's own error: no data.root or size, missing, a file
    root = Path(fd.root).expanduser()
    files = find_images(root)
    entries = folder_cache.listing(files)
    digest = entries.digest()
    key = {"version": VERSION, "root": str(root.resolve()), "image_size": fd.image_size, "channels": fd.channels,
           "labels": fd.labels, "split_seed": fd.split_seed, "val_size": fd.val_size, "binarize": fd.binarize,
           "images": len(files), "listing_sha256": digest}
    return key, _classes(files, fd.labels)


def featnet_dir(key: dict, base=None) -> Path:
    """``base`` (default ``$GENLAB_CACHE/featnets``) ``/folder-v1/<name>-<S>px-<rgb|gray>-<hash of key>``."""
    base = Path(base) if base else default_cache_dir()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(key["root"]).name).strip("._")[:40] or "root"
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    kind = "rgb" if key["channels"] == 3 else "gray"
    return base / f"folder-v{VERSION}" / f"{name}-{key['image_size']}px-{kind}-{digest}"


# ------------------------------------------------------------------------------------------------ the extractor

class FolderFeatureExtractor(FeatureExtractor):
    """A folder's feature network: checked by its val accuracy on the task it was trained for."""

    @property
    def task(self) -> str:
        return self.info["task"]           # "rotation" or "classes"

    @property
    def val_accuracy(self) -> float:
        return self.info["val_accuracy"]

    @property
    def test_accuracy(self):               # folders have no test split
        return None

    def summary(self) -> dict:
        return {"featnet_val_accuracy": self.val_accuracy, "featnet_task": self.task}

    def check(self) -> None:
        if self.val_accuracy >= self.spec.min_accuracy:
            return
        i, k = self.info, self.spec.classes
        where = f"it is kept in {i['dir']}, so this check repeats without retraining until the folder changes"
        if self.task == "rotation":
            why = ("its images may look alike when turned (round or symmetric objects, textures, top-down or "
                   f"microscope views), or be too few ({i['train_images']} train-split images)")
            fix = ("add more, varied images; or sort them into class sub-folders and set data.labels=true for a "
                   "supervised feature network")
            task = "telling the 4 rotations (0/90/180/270 degrees) of its images apart"
        else:
            why = f"its {k} classes are not told apart from {i['train_images']} train-split images"
            fix = "add more images per class, or merge classes that look alike"
            task = f"telling its {k} classes apart"
        raise FeatureError(f"the feature network of {i['root']} reaches {self.val_accuracy:.3f} accuracy at "
                           f"{task} on its {i['val_images']} val-split images (chance {1 / k:.2f}), below the "
                           f"{self.spec.min_accuracy:.2f} needed to trust its features for FID: {why}. Fix: {fix} "
                           f"({where})")


@torch.no_grad()
def rotation_accuracy(net: FeatNet, ds: ImageDataset, batch: int = 500) -> float:
    """Fraction of the 4 rotations of every image of ``ds`` whose rotation the network names."""
    net.eval()
    correct = 0
    for i in range(0, len(ds), batch):
        x = to_model(ds.x[i:i + batch], ds.levels)
        for k in range(4):
            correct += (net(torch.rot90(x, k, (2, 3)))[1].argmax(1) == k).sum().item()
    return correct / (4 * len(ds))


def _rotation_batch(train: ImageDataset, spec: FeatNetSpec):
    """Each image translated, then in all 4 rotations (Gidaris et al. 2018: the 4 copies in one batch)."""
    def batch(idx, gen):
        x = _shift(to_model(train.x[idx], train.levels), spec.shift, gen)
        x = torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)])
        return x, torch.arange(4).repeat_interleave(len(idx))
    return batch


def _class_batch(train: ImageDataset, spec: FeatNetSpec):
    def batch(idx, gen):
        return _shift(to_model(train.x[idx], train.levels), spec.shift, gen), train.y[idx]
    return batch


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min"


# ------------------------------------------------------------------------------------------------ train and load

def train_folder_featnet(fd: FolderData, *, seed: int = 0, out_dir=None, log=_say) -> FolderFeatureExtractor:
    """Train the feature network of a folder on its train split, check it on its val split, save it under
    ``out_dir`` (default: its place in the cache, :func:`featnet_dir`) and return it; FeatureError when its val
    accuracy is below the gate (the network is saved all the same)."""
    key, classes = identity(fd)
    out = Path(out_dir) if out_dir else featnet_dir(key)
    train, val = fd.load("train"), fd.load("val")
    if len(val) < MIN_VAL_IMAGES:
        raise FeatureError(f"{fd} has a val split of {len(val)} image(s); its feature network needs at least "
                           f"{MIN_VAL_IMAGES} held-out images to be checked: add images (the val split is 10% of "
                           "them), or set data.val_size (genlab featnet --val-size) to 10 or more")
    spec = folder_spec(fd, classes)
    rotation = spec.classes == 4 and classes < 2
    per_epoch = math.ceil(len(train) / spec.batch_size)
    steps = min(spec.epochs * per_epoch, step_budget(fd.image_size))
    what = "rotation prediction (which of 0/90/180/270 degrees each image is turned by)" if rotation else \
        f"classifying its {classes} class sub-folders"
    guess = SECONDS_PER_STEP * (fd.image_size / 32) ** 2 * steps
    log(f"training the feature network of {fd} for FID (first use): {what}, on its {len(train)} train-split "
        f"images, {steps} steps ({steps / per_epoch:.1f} epochs) on the CPU, roughly {_duration(guess)}; saved "
        f"in {out} and reused while the folder is unchanged")
    t0 = time.time()

    def eta(done, total):
        if done == 5 and total > 20:
            per = (time.time() - t0) / done
            log(f"  {per:.2f} s per step: about {_duration(per * (total - done))} to go")

    batch = _rotation_batch(train, spec) if rotation else _class_batch(train, spec)
    net = fit_featnet(spec, len(train), batch, seed=seed, steps=steps, on_step=eta)
    acc = rotation_accuracy(net, val) if rotation else _accuracy(net, val)
    info = {"data": "folder", "version": VERSION, "task": "rotation" if rotation else "classes",
            "val_accuracy": acc, "chance": 1 / spec.classes, "min_accuracy": spec.min_accuracy,
            "root": key["root"], "dir": str(out), "identity": key, "train_images": len(train),
            "val_images": len(val), "steps": steps, "epochs": round(steps / per_epoch, 2), "seed": seed,
            "seconds": round(time.time() - t0, 1), "torch": torch.__version__, "spec": asdict(spec)}
    log(f"feature network of {fd}: val accuracy {acc:.3f} at {'rotation prediction' if rotation else 'its classes'} "
        f"(chance {1 / spec.classes:.2f}, needed {spec.min_accuracy:.2f}; {len(val)} val-split images), trained "
        f"in {info['seconds']} s")
    save_net(net, info, out)
    fx = FolderFeatureExtractor(net.eval(), spec, info)
    fx.check()
    return fx


def load_folder_featnet(fd: FolderData, *, cache_dir=None, build: bool = True, log=_say) -> FolderFeatureExtractor:
    """The cached feature network of the folder as it is now; trained first when there is none (or, with
    ``build``, when the cached one cannot be read), else FeatureError naming the command that builds it."""
    key, classes = identity(fd)
    d = Path(cache_dir) if cache_dir else featnet_dir(key)
    if not cache_present(d):
        if build:
            return train_folder_featnet(fd, out_dir=d, log=log)
        raise FeatureError(f"no feature network for {fd} in {d}; build it with `genlab featnet train --data folder "
                           f"--root {fd.root} --image-size {fd.image_size} --channels {fd.channels}`")
    spec = folder_spec(fd, classes)
    net = FeatNet(spec)
    try:
        info = load_cached_net(d, net, ("data", "task", "val_accuracy", "train_images", "val_images", "root",
                                        "dir"))
        if not isinstance(info["val_accuracy"], (int, float)) or info["task"] not in ("rotation", "classes"):
            raise CacheUnreadable(f"info.json has val_accuracy {info['val_accuracy']!r} and task {info['task']!r}")
    except CacheUnreadable as e:
        log(f"the cached feature network of {fd} in {d} cannot be read ({e}); rebuilding it")
        return train_folder_featnet(fd, out_dir=d, log=log)
    fx = FolderFeatureExtractor(net.eval(), spec, info)
    fx.check()
    return fx


def folder_reference(fd: FolderData) -> dict:
    """The evaluation reference of a folder (see :func:`genlab.eval.evaluate.reference`): its train split (FID's
    headline statistics and memorization) and its val split in the place of a test split."""
    fx = load_folder_featnet(fd)
    train, val = fd.load("train"), fd.load("val")
    f_train, _ = fx(train.x, train.levels)
    f_val, _ = fx(val.x, val.levels)
    return {"fx": fx, "train": train, "test": val, "heldout": "val split", "levels": train.levels,
            "shape": tuple(train.shape), "f_train": f_train, "f_test": f_val,
            "stats_train": M.feature_stats(f_train), "stats_all": M.feature_stats(np.concatenate([f_train, f_val]))}
