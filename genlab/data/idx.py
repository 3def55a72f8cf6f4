"""MNIST-style IDX files (MNIST, Fashion-MNIST), gzipped or raw."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from .base import ImageDataset, binarize as binarize_levels, default_data_root, resize_images, split_indices

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
DEFAULT_VAL_SIZE = 5000

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
}


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes (gzipped if the name ends in .gz) into a uint8 array.

    Raises ValueError naming the file for a bad magic number, a short/long file or a broken gzip stream.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{path}: not a valid gzip file or truncated ({e}); delete it and download it again") from e

    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(data)} bytes, no header)")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path}: bad IDX magic number {magic} (expected {expected_magic}); is this the right file?")
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise ValueError(f"{path}: bad IDX magic number {magic}; expected an unsigned-byte IDX file (2049 or 2051)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    found = len(data) - header
    if found != expected:
        kind = "truncated" if found < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX file {kind}: header says {'x'.join(map(str, dims))} = {expected} bytes of data, "
            f"found {found}; delete it and download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def find_idx_file(root: Path, stem: str, dataset: str) -> Path:
    """Return ``root/stem.gz`` or ``root/stem``; FileNotFoundError with instructions if neither exists."""
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{dataset}: file {stem}.gz (or uncompressed {stem}) not found in directory {root}. "
        f"To fix: run `genlab data {dataset}` (downloads and verifies), or set data.root=DIR / "
        f"the GENLAB_DATA environment variable to where the files are."
    )


def load_idx_dataset(
    name: str,
    split: str,
    *,
    root: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    labels: bool = False,
    val_size: int | None = None,
    binarize: bool = False,
    seed: int = 0,
) -> ImageDataset:
    """Load a split of MNIST or Fashion-MNIST from the four IDX files in ``root``.

    ``root`` defaults to ``default_data_root()/name``.  "val" is the last ``val_size`` (default
    5000) entries of ``default_rng(seed).permutation(60000)`` over the train file, "train" the rest.
    """
    if channels not in (None, 1):
        raise ValueError(f"{name} is grayscale; channels must be 1 (or unset), got {channels!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 4):
        raise ValueError(f"image_size must be an integer >= 4 (native size is 28), got {image_size!r}")
    root = Path(root).expanduser() if root is not None else default_data_root() / name

    part = "test" if split == "test" else "train"
    images_stem, labels_stem = FILES[part]
    images_path = find_idx_file(root, images_stem, name)
    labels_path = find_idx_file(root, labels_stem, name) if labels else None
    images = read_idx(images_path, IMAGES_MAGIC)
    targets = None
    if labels_path is not None:
        targets = read_idx(labels_path, LABELS_MAGIC)
        if len(targets) != len(images):
            raise ValueError(f"{labels_path}: {len(targets)} labels but {images_path} has {len(images)} images")
        if targets.size and targets.max() >= 10:
            raise ValueError(f"{labels_path}: label {int(targets.max())} out of range 0..9")

    if split == "test":
        idx = np.arange(len(images))
    else:
        order = np.random.default_rng(seed).permutation(len(images))
        idx = split_indices(order, split, DEFAULT_VAL_SIZE if val_size is None else val_size)

    images = images[idx]
    if image_size is not None and image_size != images.shape[1]:
        images = resize_images(images[:, None], image_size)[:, 0]
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    levels = 256
    if binarize:
        x, levels = binarize_levels(x, levels), 2
    if targets is not None:
        y = torch.from_numpy(targets[idx].astype(np.int64))
        return ImageDataset(x, y, levels, 10, list(CLASS_NAMES[name]), name)
    return ImageDataset(x, None, levels, 0, [], name)
