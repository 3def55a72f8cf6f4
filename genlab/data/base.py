"""The in-memory dataset type shared by all loaders, and the one pixel quantizer.

Images are stored as small integers ("levels"): 0..16 for the scikit-learn digits,
0..255 for MNIST and image folders, 0..1 when binarized.  Models see floats in
[-1, 1]; :func:`to_model` and :func:`from_model` convert between the two and are the
only place where that mapping is defined.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SPLITS = ("train", "val", "train+val", "test", "heldout")  # "heldout": shapes only (unseen attribute combinations)
ON_BAD_IMAGE = ("error", "skip")


def default_data_root() -> Path:
    """Directory where datasets are looked for and downloaded to.

    ``$GENLAB_DATA`` if set, else ``$XDG_CACHE_HOME/genlab/data`` (``~/.cache/genlab/data``
    when ``XDG_CACHE_HOME`` is unset).
    """
    env = os.environ.get("GENLAB_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "genlab" / "data"


def to_model(levels_tensor: torch.Tensor, levels: int) -> torch.Tensor:
    """Map integer levels ``0..levels-1`` to float32 in ``[-1, 1]``: ``v / (levels-1) * 2 - 1``.

    For the digits (``levels=17``) this is exactly ``v / 8 - 1`` (all steps are powers of two).
    """
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    return levels_tensor.to(torch.float32) / (levels - 1) * 2 - 1


def from_model(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Quantize model-space floats back to uint8 levels: ``round((x+1)/2*(levels-1))`` clamped.

    This is the single quantizer used everywhere (sampling, evaluation, saving images).
    NaN maps to level 0, +-inf to the nearest end.
    """
    if not 2 <= levels <= 256:
        raise ValueError(f"levels must be in 2..256 to fit uint8, got {levels}")
    v = torch.round((x.to(torch.float32) + 1) / 2 * (levels - 1))
    v = torch.nan_to_num(v, nan=0.0).clamp_(0, levels - 1)
    return v.to(torch.uint8)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize ``N x C x H x W`` uint8 images (C = 1 or 3) to ``size x size``: area filter down, bicubic up (PIL)."""
    from PIL import Image

    n, c, h, _ = images.shape
    resample = Image.Resampling.BOX if size < h else Image.Resampling.BICUBIC
    out = np.empty((n, c, size, size), dtype=np.uint8)
    for i, im in enumerate(images):
        pil = Image.fromarray(im[0], mode="L") if c == 1 else \
            Image.fromarray(np.ascontiguousarray(im.transpose(1, 2, 0)), mode="RGB")
        arr = np.asarray(pil.resize((size, size), resample))
        out[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return out


def binarize(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Threshold levels at the midpoint: ``v >= (levels-1)/2 -> 1`` (``v >= 128`` for 256 levels)."""
    return (x.to(torch.int32) * 2 >= levels - 1).to(torch.uint8)


@dataclass
class ImageDataset:
    """A whole image dataset split held in memory.

    Attributes:
        x: uint8 tensor ``N x C x H x W`` of integer levels ``0..levels-1`` (for an image folder by default a view
            of its memory-mapped cache file, see :mod:`genlab.data.cache`: indexing it reads the file's pages).
        y: int64 labels ``(N,)``, or ``None`` when unlabeled.
        levels: number of discrete pixel levels (17 digits, 256 MNIST/folders, 2 binarized).
        num_classes: number of classes, 0 when unlabeled.
        class_names: one name per class (empty when unlabeled).
        name: dataset name, e.g. ``"digits"``.
        captions: one caption per image (the shapes dataset), or ``None``.
        attrs: ground-truth attributes, ``{name: int64 (N,)}`` (the shapes dataset), or ``None``.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    levels: int
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    name: str = ""
    captions: list[str] | None = None
    attrs: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"x must be a uint8 N x C x H x W tensor, got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y is not None:
            if self.y.dtype != torch.int64 or self.y.shape != (self.x.shape[0],):
                raise ValueError(f"y must be int64 of shape ({self.x.shape[0]},), got {self.y.dtype} {tuple(self.y.shape)}")
            if self.num_classes <= 0:
                raise ValueError("a labeled dataset needs num_classes > 0")
        elif self.num_classes != 0:
            raise ValueError("num_classes must be 0 when y is None")
        n = self.x.shape[0]
        if self.captions is not None:
            if len(self.captions) != n or not all(isinstance(c, str) for c in self.captions):
                raise ValueError(f"captions must be a list of {n} strings (one per image), got {len(self.captions)} items")
        if self.attrs is not None:
            for key, v in self.attrs.items():
                if not isinstance(v, torch.Tensor) or v.dtype != torch.int64 or v.shape != (n,):
                    got = f"{v.dtype} {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
                    raise ValueError(f"attrs[{key!r}] must be int64 of shape ({n},), got {got}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image shape ``(C, H, W)``."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def head(self, n: int) -> "ImageDataset":
        """The first ``n`` images (labels, captions and attributes with them); views, no copies."""
        return dataclasses.replace(
            self, x=self.x[:n], y=None if self.y is None else self.y[:n],
            captions=None if self.captions is None else self.captions[:n],
            attrs=None if self.attrs is None else {k: v[:n] for k, v in self.attrs.items()})

    def batch(self, idx: torch.Tensor) -> dict:
        """Return ``{"x": float32 N x C x H x W in [-1, 1], "y": int64 (labeled only)}`` for ``idx``.

        Captioned datasets also give ``"text"`` (list of str) and ``"attrs"`` (``{name: int64}``).
        """
        out = {"x": to_model(self.x[idx], self.levels)}
        if self.y is not None:
            out["y"] = self.y[idx]
        if self.captions is not None:
            rows = torch.arange(len(self))[idx].reshape(-1).tolist()
            out["text"] = [self.captions[i] for i in rows]
        if self.attrs is not None:
            out["attrs"] = {key: v[idx] for key, v in self.attrs.items()}
        return out


def split_indices(order: np.ndarray, split: str, val_size: int) -> np.ndarray:
    """Pick one split out of the shuffled train-split indices ``order``.

    The validation subset is the last ``val_size`` entries of ``order``, "train" the rest,
    "train+val" all of it.  ("test" is handled by each loader.)
    """
    n = len(order)
    if split == "train+val":               # the whole train split, whatever the size of the validation subset
        return order
    if not isinstance(val_size, (int, np.integer)) or isinstance(val_size, bool) or not 0 <= val_size < n:
        raise ValueError(f"val_size must be an integer in 0..{n - 1} (the train split has {n} images), got {val_size!r}")
    cut = n - int(val_size)
    if split == "train":
        return order[:cut]
    if split == "val":
        return order[cut:]
    if split == "train+val":
        return order
    raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
