"""Datasets: built-in digits, generated captioned shapes, MNIST / Fashion-MNIST IDX files, CIFAR-10 (binary
archive), and folders of images.

Everything is loaded into memory as uint8 levels (:class:`ImageDataset`); models see
``to_model(x, levels)`` in [-1, 1] and samples come back through ``from_model``.
"""

from __future__ import annotations

from pathlib import Path

from .base import ON_BAD_IMAGE, SPLITS, ImageDataset, default_data_root, from_model, to_model
from .download import download

DATASETS = ("digits", "shapes", "mnist", "fashion-mnist", "cifar10", "folder")

__all__ = [
    "DATASETS", "SPLITS", "ImageDataset", "default_data_root", "download", "from_model",
    "load_dataset", "to_model",
]


def load_dataset(
    name: str,
    split: str,
    *,
    root: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    labels: bool | None = None,
    on_bad_image: str = "error",
    val_size: int | None = None,
    binarize: bool = False,
    seed: int = 0,
    captions_required: bool = False,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> ImageDataset:
    """Load one split of a dataset into memory (a folder: by default a memory map of its decoded-image cache).

    Args:
        name: one of ``DATASETS``.
        split: "train" (train split minus validation), "val" (validation subset carved from the
            train split), "train+val" (whole train split), "test", or "heldout" (shapes only: the
            held-out attribute combinations, see ``genlab.data.shapes``).
        root: data directory (MNIST-style: the directory holding the four IDX files; cifar10: the one
            holding ``cifar-10-binary.tar.gz`` or the extracted ``cifar-10-batches-bin/``; both default to
            ``default_data_root()/name``; folder: the image directory, required). Unused for digits
            and shapes.
        image_size: output size (required for folders; digits only 8; shapes 16 (default) or 32;
            MNIST resizes if not 28, CIFAR-10 if not 32).
        channels: 1 or 3 for folders (default 3); only 1 for digits and MNIST; only 3 for shapes and CIFAR-10.
        labels: attach class labels (``y``, ``num_classes``, ``class_names``); otherwise ``y`` is None.
            None (default): yes for digits, shapes (the shape class), MNIST, Fashion-MNIST and CIFAR-10,
            which always have labels; no for folders, whose labels come from sub-folder names only when asked.
        on_bad_image: "error" or "skip" for unreadable files in a folder.
        val_size: size of the validation subset (defaults: digits 144, shapes 500, MNIST and CIFAR-10 5000,
            folder 10%).
        binarize: threshold pixels at the middle level, giving ``levels == 2``.
        seed: seed of the validation permutation (MNIST, CIFAR-10 and folders; the digits and shapes splits
            are fixed).
        captions_required: folders: an incomplete set of captions is an error (else a warning, no captions).
        cache: folders: decode each image once into a memory-mapped cache outside the folder, checked against the
            folder on every load and rebuilt when it changed (see ``genlab.data.cache``); False decodes the split
            into memory on every load.
        cache_dir: folders: where the caches go (default ``default_data_root()/folder-cache``).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "heldout" and name != "shapes":
        raise ValueError(f"split 'heldout' exists only for the shapes dataset, not {name!r}; "
                         f"choose one of train, val, train+val, test")
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, got {on_bad_image!r}")

    if labels is None:
        labels = name != "folder"
    if name == "digits":
        from .digits import load_digits_dataset

        return load_digits_dataset(split, image_size=image_size, channels=channels, labels=labels,
                                   val_size=val_size, binarize=binarize)
    if name == "shapes":
        from .shapes import load_shapes_dataset

        return load_shapes_dataset(split, image_size=image_size, channels=channels, labels=labels,
                                   val_size=val_size, binarize=binarize)
    if name in ("mnist", "fashion-mnist"):
        from .idx import load_idx_dataset

        return load_idx_dataset(name, split, root=root, image_size=image_size, channels=channels,
                                labels=labels, val_size=val_size, binarize=binarize, seed=seed)
    if name == "cifar10":
        from .cifar import load_cifar_dataset

        return load_cifar_dataset(split, root=root, image_size=image_size, channels=channels, labels=labels,
                                  val_size=val_size, binarize=binarize, seed=seed)
    from .folder import load_folder_dataset

    return load_folder_dataset(split, root=root, image_size=image_size, channels=channels, labels=labels,
                               on_bad_image=on_bad_image, val_size=val_size, binarize=binarize, seed=seed,
                               captions_required=captions_required, cache=cache, cache_dir=cache_dir)
