"""A directory of your own images (.png/.jpg/.jpeg, searched recursively), optionally with class labels (the
first sub-folder) and captions: a ``captions.csv`` at the root (columns ``file,caption``, file paths relative to
the root) or one ``.txt`` file next to each image with the same stem (``cat.png`` + ``cat.txt``).

Images are read by :func:`genlab.data.images.read_image`, as evaluation and inpainting read them: 16-bit images
are scaled to 8 bits (value / 257), alpha (RGBA, LA, transparent palettes) is composited over black, and a file
that cannot be read (damaged, or values out of range such as a float image outside [0, 1]) is an
:class:`~genlab.data.images.ImageReadError` naming the file and the fix, or is skipped with
``data.on_bad_image=skip``.

By default (``data.cache=true``) the decoded images live in a memory-mapped cache outside the folder
(:mod:`genlab.data.cache`): decoded once, checked against the folder on every load, rebuilt when it changed, and
read from the file during training instead of held in memory; ``data.cache=false`` decodes the split into
memory on every load."""

from __future__ import annotations

import csv
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import cache as folder_cache
from .base import ON_BAD_IMAGE, ImageDataset, binarize as binarize_levels, split_indices
from .images import ImageReadError, read_image

EXTENSIONS = (".png", ".jpg", ".jpeg")
MIN_IMAGE_SIZE = 4
SKIP_HINT = "; or set data.on_bad_image=skip to skip unreadable images"


class ImageFiles(Sequence):
    """The sorted image files of a folder, held compactly: their relative paths as one bytes buffer with offsets
    (about 30 bytes per image; a list of 100,000 ``Path`` objects holds about 50 MB). ``files[i]`` makes the
    ``Path``, ``files.relative(i)`` the relative POSIX path; ``blob`` and ``offsets`` are the arrays themselves
    (the folder cache stores and compares them as they are)."""

    def __init__(self, root: Path, blob: np.ndarray, offsets: np.ndarray):
        self.root, self.blob, self.offsets = Path(root), blob, offsets

    @classmethod
    def from_relative(cls, root: Path, rel: list[bytes]) -> "ImageFiles":
        """From relative paths as file-system bytes with ``/`` separators, in the order given."""
        offsets = np.zeros(len(rel) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rel], out=offsets[1:])
        return cls(root, np.frombuffer(b"".join(rel), dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def raw(self, i: int) -> bytes:
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes()

    def relative(self, i: int) -> str:
        return os.fsdecode(self.raw(i))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"image index {i} out of range for {len(self)} images")
        return self.root / self.relative(i % len(self))

    def __iter__(self):
        return (self[i] for i in range(len(self)))


_EXTENSIONS_B = tuple(e.encode() for e in EXTENSIONS)


def find_images(root: Path) -> ImageFiles:
    """All image files under ``root`` (case-insensitive extensions, searched recursively; symlinked files are
    followed, symlinked directories are not, as ``Path.rglob`` does), sorted by relative path for determinism."""
    found: list[bytes] = []
    stack = [b""]
    base = os.fsencode(Path(root))
    while stack:
        rel = stack.pop()
        try:
            it = os.scandir(os.path.join(base, rel) if rel else base)
        except OSError:
            continue
        with it:
            for e in it:
                r = rel + b"/" + e.name if rel else e.name
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(r)
                    elif os.path.splitext(e.name)[1].lower() in _EXTENSIONS_B and e.is_file():
                        found.append(r)
                except OSError:
                    continue
    found.sort()
    return ImageFiles.from_relative(root, found)


def load_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """Read one image (:func:`~genlab.data.images.read_image`: ``channels`` 1 or 3, EXIF-transposed, alpha over
    black), resize its shorter side to ``image_size`` (Lanczos) and center-crop it to a square.  Returns uint8
    ``C x H x W``; raises ImageReadError for a file that cannot be read."""
    arr = read_image(path, channels)
    im = Image.fromarray(arr[0] if channels == 1 else arr.transpose(1, 2, 0))
    w, h = im.size
    scale = image_size / min(w, h)
    new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.Resampling.LANCZOS)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    im = im.crop((left, top, left + image_size, top + image_size))
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def read_or_reason(path: Path, image_size: int, channels: int, on_bad_image: str,
                   binarize: bool = False) -> np.ndarray | str:
    """:func:`load_image` (thresholded with ``binarize``), or for a file that cannot be read the reason (skip),
    or an ImageReadError naming the file and the fix (on_bad_image=error)."""
    try:
        arr = load_image(path, image_size, channels)
    except (ImageReadError, FileNotFoundError) as e:   # FileNotFoundError: deleted since it was listed
        msg = str(e) if isinstance(e, ImageReadError) else f"cannot read image {path}: {e}"
        if on_bad_image == "error":
            raise ImageReadError(msg + SKIP_HINT) from e
        return msg
    return binarize_levels(torch.tensor(arr), 256).numpy() if binarize else arr     # (a copy: arr is read-only)


CAPTIONS_CSV = "captions.csv"


def find_captions(root: Path, files: ImageFiles) -> list[str] | None:
    """One caption per file from ``root/captions.csv`` or sibling ``.txt`` files; None when there are neither.
    Every image needs a caption once any is given (a ValueError names the first one without)."""
    table = root / CAPTIONS_CSV
    has_txt = np.fromiter((p.with_suffix(".txt").is_file() for p in files), dtype=bool, count=len(files))
    if table.is_file():
        if any(has_txt):
            raise ValueError(f"{root} has both {CAPTIONS_CSV} and per-image .txt captions; keep one of the two")
        with open(table, newline="", encoding="utf-8-sig") as f:     # -sig: spreadsheets' byte-order mark
            try:
                rows = list(csv.reader(f))
            except (csv.Error, UnicodeDecodeError) as e:
                raise ValueError(f"{table} is not a readable UTF-8 CSV file (file,caption): {e}") from None
        if rows and [c.strip().lower() for c in rows[0][:2]] == ["file", "caption"]:
            rows = rows[1:]
        caps = {}
        for k, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != 2:
                raise ValueError(f"{table} line {k}: expected 2 columns (file,caption), got {len(row)}; quote "
                                 "captions that contain commas")
            caps[Path(row[0].strip()).as_posix()] = row[1].strip()
        rel = [files.relative(i) for i in range(len(files))]
        missing = [r for r in rel if r not in caps]
        if missing:
            raise ValueError(f"{len(missing)} image(s) have no caption in {table} (e.g. {missing[0]}); add a "
                             "row 'file,caption' for each image")
        unused = set(caps) - set(rel)
        if unused:
            warnings.warn(f"{table} names {len(unused)} file(s) that are not images here (e.g. {sorted(unused)[0]})",
                          stacklevel=3)
        return [caps[r] for r in rel]
    if not any(has_txt):
        return None
    if not all(has_txt):
        i = int(np.argmin(has_txt))
        raise ValueError(f"{int(has_txt.sum())} image(s) under {root} have a .txt caption but {files[i]} has none "
                         f"(expected {files[i].with_suffix('.txt')}); give every image a caption, or use "
                         f"{CAPTIONS_CSV}")
    caps = []
    for p in (f.with_suffix(".txt") for f in files):
        try:
            caps.append(p.read_text(encoding="utf-8").strip())
        except UnicodeDecodeError as e:
            raise ValueError(f"caption file {p} is not UTF-8 text ({e})") from None
    return caps


def load_folder_dataset(
    split: str,
    *,
    root: str | Path | None,
    image_size: int | None,
    channels: int | None = None,
    labels: bool = False,
    on_bad_image: str = "error",
    val_size: int | None = None,
    binarize: bool = False,
    seed: int = 0,
    captions_required: bool = False,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> ImageDataset:
    """Load a split of an image folder.

    The split is made over the sorted list of files found: "val" is the last ``val_size``
    (default 10% of the files, 0 under 10 files) of ``default_rng(seed).permutation(N)``,
    "train" the rest.  Folders have no test split.  With ``labels=True`` each image's class is
    its first sub-folder under ``root``. Captions (see the module docstring) come along when present; an
    incomplete set is an error with ``captions_required`` (a text-conditional model) and a warning otherwise.

    ``cache``: read the images from the memory-mapped cache of :mod:`genlab.data.cache` under ``cache_dir``
    (default ``default_data_root()/folder-cache``), building it when it is missing or stale; ``x`` is then a view
    of the cache file, with the same pixels and order as without it. A cache directory that cannot be written is
    one message on stderr and in-memory decoding. With the cache, on_bad_image=error refuses an unreadable image
    anywhere in the folder (the cache holds both splits); without it, only one in the split loaded.
    """
    if split == "test":
        raise ValueError(
            "folder datasets have no test split; use split 'val' (carved from your images) or "
            "keep a separate folder of test images and load it with split 'train+val'"
        )
    if root is None:
        raise ValueError("the folder dataset needs a directory: set data.root=DIR")
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist; set data.root to a directory of images")
    if not root.is_dir():
        raise NotADirectoryError(f"data.root {root} is a file; set data.root to the directory that contains the images")
    if image_size is None:
        raise ValueError("the folder dataset needs an image size: set data.image_size (e.g. 32 or 64)")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"data.image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"data.on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, got {on_bad_image!r}")
    channels = 3 if channels is None else channels
    if channels not in (1, 3):
        raise ValueError(f"data.channels must be 1 (grayscale) or 3 (RGB) for a folder dataset, got {channels!r}")
    if not isinstance(cache, bool):
        raise ValueError(f"data.cache must be true or false, got {cache!r}")

    files = find_images(root)
    if not files:
        raise ValueError(
            f"no images found under {root} (searched recursively for {', '.join(EXTENSIONS)}, any case); "
            "put your images there or point data.root at the right directory"
        )

    targets = None
    class_names: list[str] = []
    if labels:
        first = np.zeros(len(files), dtype=np.int64)        # index into `seen`, one pass, no list per file
        seen: dict[str, int] = {}
        loose = []                                           # file indices of images directly in root
        for i in range(len(files)):
            head, sep, _ = files.relative(i).partition("/")
            if sep:
                first[i] = seen.setdefault(head, len(seen))
            else:
                loose.append(i)
        if loose:
            raise ValueError(
                f"labels=True takes each image's class from its sub-folder, but {len(loose)} image(s) lie "
                f"directly in {root} (e.g. {files[loose[0]].name}); move them into class sub-folders or set "
                "data.labels=false"
            )
        class_names = sorted(seen)
        rank = {name: k for k, name in enumerate(class_names)}
        targets = np.array([rank[name] for name in seen], dtype=np.int64)[first]

    try:
        captions = find_captions(root, files)
    except ValueError as e:
        if captions_required:
            raise
        warnings.warn(f"ignoring the captions under {root}: {e}", stacklevel=3)   # not needed by this model
        captions = None
    n = len(files)
    if val_size is None:
        val_size = n // 10
    order = np.random.default_rng(seed).permutation(n)
    idx = split_indices(order, split, val_size)
    start = n - int(val_size) if split == "val" else 0      # the split is order[start:start + len(idx)]

    got = None
    if cache:
        got = _from_cache(root, files, order, start, start + len(idx), image_size=image_size, channels=channels,
                          on_bad_image=on_bad_image, binarize=binarize, seed=seed, cache_dir=cache_dir)
    if got is None:
        got = _decode(files, idx, image_size, channels, on_bad_image, binarize)
    x, kept, bad = got
    if bad:
        shown = ", ".join(files.relative(i) for i in bad[:5])
        warnings.warn(
            f"skipped {len(bad)} unreadable image(s) under {root}: {shown}{' ...' if len(bad) > 5 else ''}",
            stacklevel=3,
        )
    if len(idx) and not len(kept):
        raise ValueError(f"split {split!r} of {root} has no readable images")

    levels = 2 if binarize else 256
    caps = [captions[i] for i in kept] if captions is not None else None
    if targets is not None:
        y = torch.from_numpy(targets[np.asarray(kept, dtype=np.int64)])
        return ImageDataset(x, y, levels, len(class_names), class_names, "folder", caps)
    return ImageDataset(x, None, levels, 0, [], "folder", caps)


def _decode(files: ImageFiles, idx: np.ndarray, image_size: int, channels: int, on_bad_image: str,
            binarize: bool) -> tuple[torch.Tensor, list[int], list[int]]:
    """The images ``files[idx]`` decoded into memory: (uint8 tensor, kept file indices, unreadable ones)."""
    arrays, kept, bad = [], [], []
    for i in idx:
        img = read_or_reason(files[i], image_size, channels, on_bad_image, binarize)
        if isinstance(img, str):
            bad.append(int(i))
        else:
            arrays.append(img)
            kept.append(int(i))
    if arrays:
        x = torch.from_numpy(np.stack(arrays))
    else:  # an empty split (e.g. "val" of a folder with fewer than 10 images)
        x = torch.zeros((0, channels, image_size, image_size), dtype=torch.uint8)
    return x, kept, bad


def _from_cache(root: Path, files: ImageFiles, order: np.ndarray, a: int, b: int, *, image_size: int,
                channels: int, on_bad_image: str, binarize: bool, seed: int, cache_dir):
    """Permutation positions ``[a, b)`` read from the folder's cache (see :mod:`genlab.data.cache`): (uint8 view
    of the cache file, kept file indices, unreadable ones), or None when the cache directory cannot be used."""
    params = {"root": str(root.resolve()), "image_size": image_size, "channels": channels, "split_seed": int(seed),
              "binarize": bool(binarize)}

    def read(path: Path):
        return read_or_reason(path, image_size, channels, on_bad_image, binarize)

    try:
        opened = folder_cache.open_cache(root, files, params, order, read,
                                         base=Path(cache_dir).expanduser() if cache_dir else None)
    except folder_cache.CacheUnavailable as e:
        print(f"{e}; decoding the images in memory instead (set data.cache_dir to a writable directory, or "
              "data.cache=false to skip the cache)", file=sys.stderr)
        return None
    if on_bad_image == "error" and opened.unreadable:   # a cache built under skip, now loaded strictly
        first = next(int(i) for i in opened.order if int(i) in opened.unreadable)
        raise ImageReadError(opened.unreadable[first] + SKIP_HINT)
    x, kept, bad = opened.split(a, b)
    return x, kept, bad
