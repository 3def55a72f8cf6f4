"""Feature networks for FID-style metrics, trained in-repo per dataset.

Inception features mean nothing on 8x8 digits or 28x28 MNIST, so each dataset gets a small classifier trained
on its train split only (never the test split), deterministically (fixed seeds, deterministic algorithms), and
stored as safetensors with its test accuracy. Its penultimate activations are the features of FID, KID and
precision/recall; its class probabilities give class entropy, confidence and conditional accuracy. A network
below its dataset's minimum test accuracy is refused. The digits network is built on first use and cached
(seconds); MNIST's is built by ``genlab featnet train --data mnist``.

CIFAR-10's (``genlab featnet train --data cifar10``) is the same conv net, twice as wide (64 and 128 channels),
trained for 30 epochs (about 80 minutes on 2 CPU cores: 0.4 s per step of 128 images) with the usual
augmentation of CIFAR classifiers: random translations by up to 4 pixels (padding 4, random crop) and random
horizontal flips. Its minimum is 80% test accuracy (``min_accuracy=0.80``), chosen from published numbers for
nets of this kind: the Keras example ``cifar10_cnn.py`` (four 3x3 convolutions of 32 and 64 channels, no
normalization, shifts and flips) states 79% after 50 epochs, and this one is twice as wide with a one-cycle
schedule. It is not yet measured on the real data (the tests have none); below it the network is refused like
every other.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageDataset, load_dataset, to_model
from ..files import write_text_atomic

VERSION = 1


@dataclass(frozen=True)
class FeatNetSpec:
    data: str
    size: int               # image side
    channels: int
    classes: int
    width: int              # channels of the first conv block (the second has 2x)
    feat_dim: int           # dimension of the features used by the metrics
    epochs: int
    batch_size: int
    lr: float
    min_accuracy: float     # refuse the network below this test accuracy
    shift: int = 1          # random-translation augmentation, in pixels
    flip: bool = False      # random horizontal flips (for natural images, not for digits)


SPECS = {
    "digits": FeatNetSpec("digits", 8, 1, 10, width=32, feat_dim=128, epochs=60, batch_size=64, lr=2e-3,
                          min_accuracy=0.985, shift=1),
    "mnist": FeatNetSpec("mnist", 28, 1, 10, width=32, feat_dim=128, epochs=4, batch_size=128, lr=2e-3,
                         min_accuracy=0.99, shift=2),
    "fashion-mnist": FeatNetSpec("fashion-mnist", 28, 1, 10, width=32, feat_dim=128, epochs=8, batch_size=128,
                                 lr=2e-3, min_accuracy=0.90, shift=2),
    "cifar10": FeatNetSpec("cifar10", 32, 3, 10, width=64, feat_dim=128, epochs=30, batch_size=128, lr=2e-3,
                           min_accuracy=0.80, shift=4, flip=True),
}


class FeatureError(RuntimeError):
    """A feature network is missing or not good enough to be trusted."""


class FeatNet(nn.Module):
    """conv-conv-pool twice, then a fully connected feature layer and a linear classifier."""

    def __init__(self, spec: FeatNetSpec):
        super().__init__()
        w = spec.width
        self.body = nn.Sequential(
            nn.Conv2d(spec.channels, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(2 * w * (spec.size // 4) ** 2, spec.feat_dim), nn.ReLU())
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(spec.feat_dim, spec.classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [-1, 1] -> (features N x feat_dim, logits N x classes)."""
        f = self.body(x)
        return f, self.head(self.drop(f))


def _shift(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Random translations by up to k pixels (pad with the background level -1, random crop)."""
    if k <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (k, k, k, k), value=-1.0)
    dy = torch.randint(0, 2 * k + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * k + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :]
    idx = torch.arange(n)[:, None, None, None]
    return padded[idx, torch.arange(x.shape[1])[None, :, None, None], rows, cols]


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the images left to right (each image with probability 1/2)."""
    mirror = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(mirror[:, None, None, None], x.flip(3), x)


@torch.no_grad()
def _accuracy(net: FeatNet, ds: ImageDataset, batch: int = 1000) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(ds), batch):
        x = to_model(ds.x[i:i + batch], ds.levels)
        correct += (net(x)[1].argmax(1) == ds.y[i:i + batch]).sum().item()
    return correct / len(ds)


def default_cache_dir() -> Path:
    base = os.environ.get("GENLAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "genlab")
    return Path(base) / "featnets"


def save_net(net: nn.Module, info: dict, out: Path) -> None:
    """Write ``out/model.safetensors`` and then ``out/info.json``, each atomically (a temporary file renamed)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".model.{os.getpid()}.tmp"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    os.replace(tmp, out / "model.safetensors")
    write_text_atomic(out / "info.json", json.dumps(info, indent=1))


class CacheUnreadable(Exception):
    """A cached network whose files exist but cannot be used; the message says why."""


def cache_present(d: Path) -> bool:
    """Whether ``d`` holds any file of a cached network (a complete or a damaged one)."""
    return (d / "model.safetensors").exists() or (d / "info.json").exists()


def load_cached_net(d: Path, net: nn.Module, required: tuple[str, ...]) -> dict:
    """Load ``d/model.safetensors`` into ``net`` and return ``d/info.json``, which must hold the ``required``
    keys; CacheUnreadable (saying which file and why) when either file is missing, damaged or does not fit."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(d / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CacheUnreadable(f"model.safetensors: {e}") from None
    try:
        net.load_state_dict(tensors)
    except RuntimeError as e:            # missing, unexpected or mis-shaped tensors
        raise CacheUnreadable("model.safetensors does not match the network: " + str(e).splitlines()[0]) from None
    try:
        info = json.loads((d / "info.json").read_text())
    except (OSError, ValueError) as e:    # ValueError: JSON or UTF-8 that does not decode
        raise CacheUnreadable(f"info.json: {e}") from None
    missing = [k for k in required if not isinstance(info, dict) or k not in info]
    if missing:
        raise CacheUnreadable(f"info.json lacks {', '.join(missing)}")
    return info


def fit_featnet(spec: FeatNetSpec, n: int, batch, *, seed: int = 0, steps: Optional[int] = None,
                on_step=None) -> FeatNet:
    """Train a FeatNet deterministically by cross-entropy: AdamW (weight decay 1e-4) with a one-cycle schedule,
    a fresh permutation of the ``n`` training images every epoch, ``batch(idx, gen) -> (x, y)`` making each
    step's inputs and targets (augmented with ``gen``), for ``steps`` steps (default ``spec.epochs`` epochs).
    ``on_step(done, steps)`` is called after every step."""
    steps_per_epoch = (n + spec.batch_size - 1) // spec.batch_size
    steps = spec.epochs * steps_per_epoch if steps is None else steps
    det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(seed)
        net = FeatNet(spec)
        opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=1e-4)
        gen = torch.Generator().manual_seed(seed)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, spec.lr, total_steps=steps)
        done = 0
        while done < steps:
            net.train()
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, spec.batch_size):
                x, y = batch(perm[i:i + spec.batch_size], gen)
                loss = F.cross_entropy(net(x)[1], y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                done += 1
                if on_step is not None:
                    on_step(done, steps)
                if done == steps:
                    break
    finally:
        torch.use_deterministic_algorithms(det)
    return net


def train_featnet(data: str = "digits", *, root=None, seed: int = 0, out_dir=None, log=print) -> "FeatureExtractor":
    """Train the feature network of ``data`` on its train split (train + val), deterministically, save it under
    ``out_dir`` (default: the cache) and return it. Raises FeatureError below the minimum test accuracy."""
    if data not in SPECS:
        raise ValueError(f"no feature network for {data!r}; available: {', '.join(SPECS)}")
    spec = SPECS[data]
    train = load_dataset(data, "train+val", root=root, labels=True)
    test = load_dataset(data, "test", root=root, labels=True)
    t0 = time.time()

    def batch(idx, gen):
        x = _shift(to_model(train.x[idx], train.levels), spec.shift, gen)
        if spec.flip:      # drawn after the shift: the specs without flips keep their random stream
            x = _flip(x, gen)
        return x, train.y[idx]

    net = fit_featnet(spec, len(train), batch, seed=seed)
    acc = _accuracy(net, test)
    info = {"data": data, "version": VERSION, "test_accuracy": acc, "train_images": len(train),
            "test_images": len(test), "seed": seed, "seconds": round(time.time() - t0, 1),
            "torch": torch.__version__, "spec": asdict(spec)}
    log(f"feature network for {data}: test accuracy {acc:.4f} ({len(test)} test images, trained on the "
        f"{len(train)} train-split images in {info['seconds']}s)")
    save_net(net, info, Path(out_dir) if out_dir else default_cache_dir() / f"{data}-v{VERSION}")
    fx = FeatureExtractor(net.eval(), spec, info)
    fx.check()
    return fx


class FeatureExtractor:
    """``features(levels)`` and ``probs(levels)`` for uint8 level arrays N x C x H x W of the dataset."""

    def __init__(self, net: FeatNet, spec: FeatNetSpec, info: dict):
        self.net, self.spec, self.info = net, spec, info

    @property
    def test_accuracy(self) -> float:
        return self.info["test_accuracy"]

    def summary(self) -> dict:
        """What an evaluation reports about the network (a folder's: its val accuracy and task)."""
        return {"featnet_test_accuracy": self.test_accuracy}

    def check(self) -> None:
        if self.test_accuracy < self.spec.min_accuracy:
            raise FeatureError(f"the {self.spec.data} feature network has test accuracy {self.test_accuracy:.4f}, "
                               f"below the {self.spec.min_accuracy} needed to trust its features; retrain it "
                               f"(`genlab featnet train --data {self.spec.data}`)")

    @torch.no_grad()
    def __call__(self, levels, levels_count: int, batch: int = 2000) -> tuple[np.ndarray, np.ndarray]:
        """(features N x D float64, class probabilities N x K) of integer level images."""
        x = torch.as_tensor(np.asarray(levels))
        c, h, w = self.spec.channels, self.spec.size, self.spec.size
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise ValueError(f"the {self.spec.data} feature network takes images of shape (N, {c}, {h}, {w}); "
                             f"got {tuple(x.shape)}")
        feats, probs = [], []
        self.net.eval()
        for i in range(0, len(x), batch):
            f, logits = self.net(to_model(x[i:i + batch], levels_count))
            feats.append(f.double())
            probs.append(logits.softmax(1).double())
        return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def load_featnet(data: str = "digits", *, cache_dir=None, build: Optional[bool] = None, root=None,
                 log=print) -> FeatureExtractor:
    """The cached feature network of ``data``; digits' is trained on first use (seconds), others must be built
    with ``genlab featnet train --data NAME``. Loading reads safetensors only. A cache that exists but cannot be
    read (damaged files, a network that does not fit) is rebuilt in place, for any dataset, saying so."""
    if data not in SPECS:
        raise ValueError(f"no feature network for {data!r}; available: {', '.join(SPECS)}")
    d = Path(cache_dir) if cache_dir else default_cache_dir() / f"{data}-v{VERSION}"
    if not cache_present(d):
        if build if build is not None else data == "digits":
            log(f"building the {data} feature network (first use) into {d}")
            return train_featnet(data, root=root, out_dir=d, log=log)
        raise FeatureError(f"no {data} feature network in {d}; build it with `genlab featnet train --data {data}`")
    spec = SPECS[data]
    net = FeatNet(spec)
    try:
        info = load_cached_net(d, net, ("data", "test_accuracy"))
        if not isinstance(info["test_accuracy"], (int, float)):
            raise CacheUnreadable(f"info.json has test_accuracy {info['test_accuracy']!r}, not a number")
    except CacheUnreadable as e:
        log(f"the cached {data} feature network in {d} cannot be read ({e}); rebuilding it")
        return train_featnet(data, root=root, out_dir=d, log=log)
    fx = FeatureExtractor(net.eval(), spec, info)
    fx.check()
    return fx
