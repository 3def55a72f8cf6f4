"""CIFAR-10 from the official binary archive ``cifar-10-binary.tar.gz`` (never the pickled Python version).

The format, from the CIFAR-10 page (https://www.cs.toronto.edu/~kriz/cifar.html, "Binary version"): the
archive holds the folder ``cifar-10-batches-bin/`` with ``data_batch_1.bin`` .. ``data_batch_5.bin`` (the
train split, 10000 records each), ``test_batch.bin`` (10000 records) and ``batches.meta.txt`` (the class
names, one per line). Each record is 3073 bytes: the label (one byte, 0..9), then the 3072 pixel bytes of a
32x32 image, the 1024 red values first, then the green, then the blue, each plane in row-major order.

The archive is read as a stream (nothing is extracted, the gzip CRC is checked at its end); an extracted
``cifar-10-batches-bin/`` folder works too. The checks are on the structure and each file's length, not the
totals, so a smaller archive of the same layout loads as well.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from .base import ImageDataset, binarize as binarize_levels, default_data_root, resize_images, split_indices

ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"
TRAIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_BATCHES = ("test_batch.bin",)
META = "batches.meta.txt"
SIZE = 32
RECORD = 1 + 3 * SIZE * SIZE  # label byte + red, green and blue planes
DEFAULT_VAL_SIZE = 5000
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FIX = "delete it and download it again with `genlab data cifar10`"


def find_cifar(root: Path) -> Path:
    """The archive or extracted folder under ``root``: ``root`` itself if it is the archive or the folder,
    else ``root/cifar-10-binary.tar.gz``, else ``root/cifar-10-batches-bin/``. FileNotFoundError if none."""
    if root.is_file() or (root / TEST_BATCHES[0]).is_file():
        return root
    if (root / ARCHIVE).is_file():
        return root / ARCHIVE
    if (root / FOLDER).is_dir():
        return root / FOLDER
    raise FileNotFoundError(
        f"cifar10: neither {ARCHIVE} nor the extracted folder {FOLDER}/ found in directory {root}. "
        f"To fix: run `genlab data cifar10` (downloads 162 MB and verifies its MD5), or set data.root=DIR / "
        f"the GENLAB_DATA environment variable to where the archive is."
    )


def read_archive_members(path: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """The contents of ``cifar-10-batches-bin/NAME`` for each of ``names``, streamed out of the .tar.gz.

    The whole archive is read, so that the gzip CRC-32 at its end is checked; a broken or truncated archive,
    a member that is missing or not a regular file raise ValueError naming the archive.
    """
    wanted = {f"{FOLDER}/{name}": name for name in names}
    found: dict[str, bytes] = {}
    seen_python_version = False
    try:
        with gzip.open(path, "rb") as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
            for member in tar:
                member_name = member.name.removeprefix("./")
                seen_python_version |= member_name.startswith("cifar-10-batches-py/")
                if member_name not in wanted:
                    continue
                if not member.isfile():
                    raise ValueError(f"{path}: {member_name} is not a regular file in the archive; {FIX}")
                found[wanted[member_name]] = tar.extractfile(member).read()
            gz.read()  # drain to the end of the gzip stream: checks its CRC-32 and length
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: not a valid .tar.gz archive, or truncated ({e}); {FIX}") from e

    missing = [f"{FOLDER}/{name}" for name in names if name not in found]
    if missing:
        hint = (" This is the pickled Python version (cifar-10-batches-py/); genlab reads the binary version "
                f"{ARCHIVE}." if seen_python_version else "")
        raise ValueError(f"{path}: the archive lacks {', '.join(missing)}.{hint} To fix: {FIX}")
    return found


def read_folder_members(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """The contents of ``folder/NAME`` for each of ``names`` (an extracted ``cifar-10-batches-bin/``)."""
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"{folder}: the extracted CIFAR-10 folder lacks {', '.join(missing)}; put the whole "
            f"{FOLDER}/ folder there, or {ARCHIVE} itself (`genlab data cifar10` downloads it)"
        )
    return {name: (folder / name).read_bytes() for name in names}


def parse_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 images N x 3 x 32 x 32, uint8 labels N), checking length and labels."""
    if len(data) == 0 or len(data) % RECORD:
        raise ValueError(
            f"{where}: {len(data)} bytes is not a whole number of {RECORD}-byte CIFAR-10 records "
            f"(truncated or not a CIFAR-10 batch); {FIX}"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise ValueError(f"{where}: record {bad} has label {int(labels[bad])}, outside 0..9; {FIX}")
    return records[:, 1:].reshape(-1, 3, SIZE, SIZE), labels


def parse_meta(data: bytes, where: str) -> list[str]:
    """``batches.meta.txt``: the ten class names, one per line (blank lines ignored)."""
    names = [line.strip() for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if names != CLASS_NAMES:
        raise ValueError(f"{where}: class names {names} are not CIFAR-10's {CLASS_NAMES}; is this CIFAR-10?")
    return names


def read_cifar(source: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """The "train" (data batches 1..5, in order) or "test" part of the archive or extracted folder ``source``:
    (uint8 images N x 3 x 32 x 32, int64 labels N)."""
    batches = TRAIN_BATCHES if part == "train" else TEST_BATCHES
    names = batches + (META,)
    if source.is_dir():
        members = read_folder_members(source, names)
        where = {name: str(source / name) for name in names}
    else:
        members = read_archive_members(source, names)
        where = {name: f"{source}: {FOLDER}/{name}" for name in names}
    parse_meta(members[META], where[META])
    parsed = [parse_batch(members.pop(name), where[name]) for name in batches]
    images = np.concatenate([p[0] for p in parsed])
    labels = np.concatenate([p[1] for p in parsed]).astype(np.int64)
    return images, labels


def load_cifar_dataset(
    split: str,
    *,
    root: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    labels: bool = True,
    val_size: int | None = None,
    binarize: bool = False,
    seed: int = 0,
) -> ImageDataset:
    """Load a split of CIFAR-10 from ``root`` (default ``default_data_root()/"cifar10"``).

    ``root`` holds ``cifar-10-binary.tar.gz`` or the extracted ``cifar-10-batches-bin/`` (or is either).
    "val" is the last ``val_size`` (default 5000) entries of ``default_rng(seed).permutation`` over the train
    batches, "train" the rest, "train+val" all of them; "test" is ``test_batch.bin`` in file order.
    """
    if channels not in (None, 3):
        raise ValueError(f"cifar10 is RGB; channels must be 3 (or unset), got {channels!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 4):
        raise ValueError(f"image_size must be an integer >= 4 (native size is 32), got {image_size!r}")
    root = Path(root).expanduser() if root is not None else default_data_root() / "cifar10"

    part = "test" if split == "test" else "train"
    images, targets = read_cifar(find_cifar(root), part)
    if split == "test":
        idx = np.arange(len(images))
    else:
        order = np.random.default_rng(seed).permutation(len(images))
        if split == "train+val" and val_size is None:
            idx = order  # the whole train part: no validation subset to carve, whatever its size
        else:
            idx = split_indices(order, split, DEFAULT_VAL_SIZE if val_size is None else val_size)

    images = images[idx]
    if image_size is not None and image_size != SIZE:
        images = resize_images(images, image_size)
    x = torch.from_numpy(np.ascontiguousarray(images))
    levels = 256
    if binarize:
        x, levels = binarize_levels(x, levels), 2
    if labels:
        return ImageDataset(x, torch.from_numpy(targets[idx]), levels, 10, list(CLASS_NAMES), "cifar10")
    return ImageDataset(x, None, levels, 0, [], "cifar10")
