"""Attribute accuracy of captioned-shapes samples: did the generator draw what the caption asked for?

:class:`AttributeNet` reads an image of the shapes dataset and predicts its four attributes (shape, colour, size,
position). It is trained on the data generator's ground truth (:func:`genlab.data.shapes.make_shapes`) over
every (shape, colour) pair, including the pairs held out from the generators' training data, so it can judge
samples of unseen combinations too. Its penultimate layer (128 features) doubles as the feature network for FID
on shapes. Cached like the digits feature network (``$GENLAB_CACHE/featnets/shapes{size}-attrs-v1``), trained on
first use in well under a minute, refused below 98% accuracy on every attribute.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.base import to_model
from ..data.shapes import ATTRIBUTES, LEVELS, VOCAB, make_shapes
from .features import (CacheUnreadable, FeatureError, cache_present, default_cache_dir, load_cached_net,
                       save_net)

VERSION = 1
MIN_ACCURACY = 0.98
TRAIN_IMAGES, TEST_IMAGES, EPOCHS = 24000, 2000, 6
TRAIN_SEED, TEST_SEED = 101, 102      # distinct from the dataset splits (seeds 1, 2, 3)


class AttributeNet(nn.Module):
    """Conv net -> 4x4 map -> flatten (keeps where the shape is) -> 128 features -> one head per attribute."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.GELU())
        self.heads = nn.ModuleDict({a: nn.Linear(128, len(VOCAB[a])) for a in ATTRIBUTES})

    def forward(self, x: torch.Tensor):
        """x in [-1, 1] (N, 3, S, S), S a multiple of 4 -> (features (N, 128), {attribute: logits})."""
        h = self.body(x)
        if h.shape[-1] != 4:
            h = F.adaptive_avg_pool2d(h, 4)
        f = self.fc(h)
        return f, {a: head(f) for a, head in self.heads.items()}


def _batches(n: int, size: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n, size):
        yield perm[i:i + size]


def train_attribute_net(image_size: int = 16, *, seed: int = 0, out_dir=None, log=print) -> "AttributeClassifier":
    """Train on TRAIN_IMAGES generated images (all combinations), test on TEST_IMAGES others, save, return."""
    t0 = time.time()
    x, attrs, _ = make_shapes(TRAIN_IMAGES, image_size, seed=TRAIN_SEED)
    xt, attrs_t, _ = make_shapes(TEST_IMAGES, image_size, seed=TEST_SEED)
    x = to_model(torch.from_numpy(x), LEVELS)
    ys = {a: torch.from_numpy(v) for a, v in attrs.items()}
    torch.manual_seed(seed)
    net = AttributeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    total = EPOCHS * ((len(x) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=total)
    net.train()
    for _ in range(EPOCHS):
        for idx in _batches(len(x), 128, gen):
            _, logits = net(x[idx])
            loss = sum(F.cross_entropy(logits[a], ys[a][idx]) for a in ATTRIBUTES)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    clf = AttributeClassifier(net.eval(), {"image_size": image_size})
    acc = clf.accuracy(xt, {a: torch.from_numpy(v) for a, v in attrs_t.items()})
    info = {"image_size": image_size, "version": VERSION, "test_accuracy": acc, "train_images": TRAIN_IMAGES,
            "test_images": TEST_IMAGES, "seed": seed, "seconds": round(time.time() - t0, 1), "torch": torch.__version__}
    clf.info = info
    log(f"shapes attribute classifier ({image_size}x{image_size}): test accuracy "
        + ", ".join(f"{a} {acc[a]:.4f}" for a in ATTRIBUTES) + f" (trained in {info['seconds']}s)")
    clf.check()                 # refuse before caching a classifier that cannot be trusted
    save_net(net, info, Path(out_dir) if out_dir else default_cache_dir() / f"shapes{image_size}-attrs-v{VERSION}")
    return clf


class AttributeClassifier:
    """Attribute predictions and features of uint8 shapes images (N, 3, S, S) with 256 levels."""

    def __init__(self, net: AttributeNet, info: dict):
        self.net, self.info = net, info

    def check(self) -> None:
        acc = self.info.get("test_accuracy", {})
        low = {a: acc[a] for a in ATTRIBUTES if a in acc and acc[a] < MIN_ACCURACY}
        if low:
            raise FeatureError(f"the shapes attribute classifier is below {MIN_ACCURACY} test accuracy on "
                               + ", ".join(f"{a} ({v:.3f})" for a, v in low.items()) + "; delete its cache to retrain")

    @torch.no_grad()
    def predict(self, levels, batch: int = 1000) -> tuple[np.ndarray, dict]:
        """(features (N, 128) float64, {attribute: predicted id (N,)}) of uint8 images."""
        x = torch.as_tensor(np.asarray(levels))
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-1] % 4:
            raise ValueError(f"the attribute classifier takes RGB images (N, 3, S, S); got {tuple(x.shape)}")
        feats, preds = [], {a: [] for a in ATTRIBUTES}
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            f, logits = self.net(to_model(xb, LEVELS) if xb.dtype == torch.uint8 else xb.float())
            feats.append(f.double())
            for a in ATTRIBUTES:
                preds[a].append(logits[a].argmax(1))
        return torch.cat(feats).numpy(), {a: torch.cat(v).numpy() for a, v in preds.items()}

    def accuracy(self, levels, attrs: dict) -> dict:
        """Per-attribute accuracy, their mean, and the fraction with all four right."""
        _, pred = self.predict(levels)
        ok = {a: pred[a] == np.asarray(attrs[a]) for a in ATTRIBUTES if a in attrs}
        out = {a: float(v.mean()) for a, v in ok.items()}
        out["mean"] = float(np.mean([out[a] for a in ok]))
        out["all"] = float(np.logical_and.reduce(list(ok.values())).mean())
        return out


def load_attribute_classifier(image_size: int = 16, *, cache_dir=None, log=print) -> AttributeClassifier:
    """The cached attribute classifier for shapes at ``image_size`` (trained on first use; a cache that exists
    but cannot be read is rebuilt in place, saying so)."""
    d = Path(cache_dir) if cache_dir else default_cache_dir() / f"shapes{image_size}-attrs-v{VERSION}"
    if not cache_present(d):
        return train_attribute_net(image_size, out_dir=d, log=log)
    net = AttributeNet()
    try:
        info = load_cached_net(d, net, ("image_size", "test_accuracy"))
        if not isinstance(info["test_accuracy"], dict):
            raise CacheUnreadable(f"info.json has test_accuracy {info['test_accuracy']!r}, not one per attribute")
    except CacheUnreadable as e:
        log(f"the cached shapes attribute classifier in {d} cannot be read ({e}); rebuilding it")
        return train_attribute_net(image_size, out_dir=d, log=log)
    clf = AttributeClassifier(net.eval(), info)
    clf.check()
    return clf


def shapes_fid(clf: AttributeClassifier, fake_levels, real_levels, real_feats: Optional[np.ndarray] = None) -> float:
    """FID between two sets of shapes images in the attribute classifier's feature space."""
    from .metrics import fid

    ff, _ = clf.predict(fake_levels)
    rf = real_feats if real_feats is not None else clf.predict(real_levels)[0]
    return fid(rf, ff)
