"""The scikit-learn 8x8 handwritten digits (1797 images, pixel values 0..16), built in."""

from __future__ import annotations

import numpy as np
import torch

from .base import ImageDataset, binarize as binarize_levels, split_indices

NUM_IMAGES = 1797
NUM_TRAIN = 1437  # the rest (360) is the test split
DEFAULT_VAL_SIZE = 144
LEVELS = 17


def digits_permutation() -> np.ndarray:
    """The fixed permutation that defines the digits splits (independent of any seed)."""
    return np.random.default_rng(0).permutation(NUM_IMAGES)


def load_digits_dataset(
    split: str,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    labels: bool = False,
    val_size: int | None = None,
    binarize: bool = False,
) -> ImageDataset:
    """Load a split of the digits.

    ``perm = default_rng(0).permutation(1797)``; the train split is ``perm[:1437]``, the test
    split ``perm[1437:]``; "val" is the last ``val_size`` (default 144) entries of the train
    split and "train" the rest.  The seed of the run does not change this split.
    """
    if image_size not in (None, 8):
        raise ValueError(
            f"the digits dataset is native 8x8 grayscale; image_size must be 8 (or unset), got {image_size!r}"
        )
    if channels not in (None, 1):
        raise ValueError(
            f"the digits dataset is native 8x8 grayscale; channels must be 1 (or unset), got {channels!r}"
        )
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images).round().astype(np.uint8)  # (1797, 8, 8), values 0..16
    targets = np.asarray(bunch.target, dtype=np.int64)

    perm = digits_permutation()
    if split == "test":
        idx = perm[NUM_TRAIN:]
    else:
        idx = split_indices(perm[:NUM_TRAIN], split, DEFAULT_VAL_SIZE if val_size is None else val_size)

    x = torch.from_numpy(images[idx]).unsqueeze(1).contiguous()
    levels = LEVELS
    if binarize:
        x, levels = binarize_levels(x, levels), 2
    if labels:
        return ImageDataset(x, torch.from_numpy(targets[idx]), levels, 10, [str(i) for i in range(10)], "digits")
    return ImageDataset(x, None, levels, 0, [], "digits")
