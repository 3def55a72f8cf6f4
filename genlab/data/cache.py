"""A decoded, memory-mapped copy of an image folder: each image is decoded and resized once, so a folder larger
than memory trains without decoding every image on every load, and without holding it in memory.

Layout, under ``data.cache_dir`` (default ``default_data_root()/folder-cache``), one directory per folder and
setting, never inside the image folder::

    <folder name>-<S>px-<rgb|gray>-seed<split_seed>[-binary]-<hash>/
      manifest.json     what the array holds: image_size, channels, split_seed, binarize, the format version, the
                        unreadable files (with the reason), the names of the array and listing files, the shape
      listing-<id>.npz  the folder's listing as arrays (numpy .npz, read with allow_pickle=False): the relative
                        paths (one bytes buffer and offsets), size and mtime_ns of every image, and the file index
                        of each row; arrays, not JSON lists, so that checking 100,000 files holds a few MB, not
                        a Python object per file
      images-<id>.u8    the rows: raw uint8, shape R x C x S x S (R readable images), no header
      .lock             flock: shared while a process checks and maps the cache, exclusive while one builds it

The hash covers everything that changes the array's bytes: the resolved folder path, image_size, channels,
split_seed, binarize and :data:`FORMAT` (bumped when the decoder, ``folder.load_image``, changes).

**Rows in split order.** A split is a subset of ``default_rng(split_seed).permutation(N)`` ("val" its last
``val_size`` entries, see :func:`genlab.data.base.split_indices`), not a slice of the sorted file list. So the rows
are stored in that permutation's order, unreadable files left out: every split, for any ``val_size``, is one
contiguous range of rows, and ``ImageDataset.x`` is a zero-copy uint8 tensor over an ``np.memmap`` of that range,
in exactly the order (and with exactly the pixels) of the in-memory loader. The price: ``split_seed`` is part of
the key, so another seed makes another cache. (The alternative, file order plus an index array, would need
``x[index]``, a copy of the split, or a dataset type whose ``x`` is not a tensor.)

The map is opened with mode "c" (copy-on-write): a write to ``x`` changes private memory, never the file, and
``torch.from_numpy`` takes it without the warning it gives for mode "r". Batches (``x[idx]``) read through the page
cache; those pages are file-backed (RssFile, not RssAnon) and shared by every process that maps the file, so a
process's anonymous memory does not grow with the folder.

**Never stale.** Every open compares the folder's listing (paths, sizes, mtimes) with the listing file and the array
file's size with its shape; a difference prints ``rebuilding the cache of DIR: <reason>`` (files changed / added /
removed, the cache file truncated or missing, a manifest that is not JSON, a damaged listing, ...) and rebuilds. A
build writes a new array file and a new listing file under temporary names, syncs and renames them, then replaces
the manifest atomically and only then removes the old pair: a reader sees the old set or the new one, and a build
that fails or is killed leaves no half-written file under a live name. Rows of files whose listing entry is
unchanged are copied from the old array instead of decoded again. The stat is taken before the decode, so a file
changed during a build is rebuilt next time.

**Many processes** (torchrun, or two runs on one folder). Every process takes the lock: shared to check and map,
exclusive to build. Whoever comes first builds, the others wait on the lock, then all map the same file. Under
torchrun (``runs.train`` loads the data before ``torch.distributed`` is initialised, so the ranks cannot talk yet)
this means one builder per node on node-local disks, and one in all on a shared file system with working locks
(NFSv4, most cluster file systems). No rank is chosen and no timeout is needed: a builder that dies releases its
lock with it, and the next process finds no valid cache and builds it (or fails with the same clear error, e.g. an
unreadable image under ``data.on_bad_image=error``). A directory that cannot be written or locked is one message,
then in-memory decoding (:class:`CacheUnavailable`).

**No DataLoader workers.** Gathering a batch from the map is not a bottleneck: it costs what gathering from memory
costs. Measured with ``benchmarks/folder_cache.py --n 500 --threads 1`` on one (shared) CPU core: a batch of 64
random 64x64 RGB images through ``ImageDataset.batch`` takes 2.2-2.4 ms from the cache and 2.2-2.3 ms from the
in-memory split (0.4 ms the gather, the rest the conversion to float that both share), decoding the PNGs instead
15 ms, and one training step of the digits_ddpm UNet at 64x64 on that core 8.9 s (the gather: 0.03% of it). On a
GPU the step is much shorter (not measured here; the benchmark's ``--device cuda`` does): workers would pay only
where the step comes near the ~2 ms of the (already existing) float conversion, or for a cache larger than the page
cache on a slow disk (random 12 KB reads).
"""
from __future__ import annotations

import bisect
import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from ..files import write_text_atomic

FORMAT = 2          # 2: the listing moved from manifest.json to listing-<id>.npz
MANIFEST = "manifest.json"
LOCK = ".lock"
KIND = "genlab folder cache"

Read = Callable[[Path], Union[np.ndarray, str]]   # a decoded C x S x S image, or why the file cannot be read


class CacheUnavailable(OSError):
    """The cache directory cannot be created, locked or written; the message says where and why."""


@dataclass
class FolderCache:
    """An open cache: ``array`` (a copy-on-write np.memmap ``R x C x S x S``, None when R is 0), ``rows`` (the
    file index of each row), ``unreadable`` (file index -> reason) and ``order`` (the split permutation)."""
    path: Path
    array: Optional[np.memmap]
    rows: np.ndarray
    unreadable: dict[int, str]
    order: np.ndarray
    shape: tuple[int, int, int]
    _bad_pos: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.unreadable:                      # their positions in the permutation
            where = np.empty(len(self.order), dtype=np.int64)
            where[self.order] = np.arange(len(self.order))
            self._bad_pos = sorted(int(where[i]) for i in self.unreadable)

    def split(self, a: int, b: int) -> tuple[torch.Tensor, np.ndarray, list[int]]:
        """The images of permutation positions ``[a, b)``: (uint8 tensor view of their rows, their file indices,
        the unreadable file indices among them in permutation order)."""
        ra = a - bisect.bisect_left(self._bad_pos, a)
        rb = b - bisect.bisect_left(self._bad_pos, b)
        if rb > ra:
            x = torch.from_numpy(self.array[ra:rb])
        else:
            x = torch.zeros((0, *self.shape), dtype=torch.uint8)
        bad = [int(self.order[p]) for p in self._bad_pos if a <= p < b]
        return x, self.rows[ra:rb], bad


# ------------------------------------------------------------------------------------------------ the listing

LISTING_KEYS = ("blob", "offsets", "sizes", "mtimes")


@dataclass
class Listing:
    """A folder's listing as arrays: relative paths (``blob`` bytes cut at ``offsets``, as in
    :class:`genlab.data.folder.ImageFiles`), ``sizes`` and ``mtimes`` (ns; -1 for a file gone since it was
    found)."""
    blob: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    mtimes: np.ndarray

    def __len__(self) -> int:
        return len(self.sizes)

    def relative(self, i: int) -> str:
        return os.fsdecode(self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes())

    def entry(self, i: int) -> tuple[str, int, int]:
        return self.relative(i), int(self.sizes[i]), int(self.mtimes[i])

    def same(self, other: "Listing") -> bool:
        return all(np.array_equal(getattr(self, k), getattr(other, k)) for k in LISTING_KEYS)

    def digest(self) -> str:
        """sha256 of the listing's arrays (little-endian int64 and the path bytes)."""
        h = hashlib.sha256()
        for k in LISTING_KEYS:
            a = np.ascontiguousarray(getattr(self, k))
            h.update(k.encode() + str(len(a)).encode() + (a.astype("<i8") if a.dtype != np.uint8 else a).tobytes())
        return h.hexdigest()

    def as_dict(self) -> dict[str, tuple[int, int]]:
        """{relative path: (size, mtime_ns)}: Python objects per file, for the rare rebuild only."""
        return {self.relative(i): (int(self.sizes[i]), int(self.mtimes[i])) for i in range(len(self))}


def listing(files) -> Listing:
    """The listing of ``files`` (an :class:`~genlab.data.folder.ImageFiles`): one stat per file."""
    n = len(files)
    sizes, mtimes = np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
    for i, p in enumerate(files):
        try:
            st = p.stat()
            sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns
        except OSError:
            pass
    return Listing(files.blob, files.offsets, sizes, mtimes)


def read_listing(f: Path) -> tuple[Optional[Listing], Optional[np.ndarray], Optional[str]]:
    """(listing, rows, None) from a listing file, or (None, None, reason) when it is missing or damaged."""
    try:
        with np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in (*LISTING_KEYS, "rows")}
    except FileNotFoundError:
        return None, None, f"its listing file {f.name} is missing"
    except Exception as e:       # a truncated or foreign file: zipfile.BadZipFile, ValueError, EOFError, KeyError
        return None, None, f"its listing file {f.name} is damaged ({type(e).__name__})"
    lst = Listing(*(arrays[k] for k in LISTING_KEYS))
    o = lst.offsets
    if (lst.blob.dtype != np.uint8 or any(a.dtype != np.int64 for a in (o, lst.sizes, lst.mtimes, arrays["rows"]))
            or len(o) != len(lst.sizes) + 1 or len(lst.mtimes) != len(lst.sizes) or o[0] != 0
            or o[-1] != len(lst.blob) or np.any(np.diff(o) < 0)):
        return None, None, f"its listing file {f.name} is damaged (inconsistent arrays)"
    return lst, arrays["rows"], None


def _write_listing(f: Path, lst: Listing, rows: np.ndarray) -> None:
    with open(f, "wb") as fh:
        np.savez(fh, **{k: getattr(lst, k) for k in LISTING_KEYS}, rows=rows)
        fh.flush()
        os.fsync(fh.fileno())


# ------------------------------------------------------------------------------------------------ where

def cache_path(root: Path, params: dict, base: Optional[Path] = None) -> Path:
    """The cache directory of folder ``root`` with ``params`` under ``base`` (default
    ``default_data_root()/folder-cache``); ValueError if it would lie inside the image folder."""
    if base is None:
        from .base import default_data_root

        base = default_data_root() / "folder-cache"
    base = Path(base).expanduser().absolute()
    digest = hashlib.sha256(json.dumps({"format": FORMAT, **params}, sort_keys=True).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(params["root"]).name).strip("._")[:40] or "root"
    kind = "rgb" if params["channels"] == 3 else "gray"
    tag = f"{name}-{params['image_size']}px-{kind}-seed{params['split_seed']}"
    path = base / f"{tag}{'-binary' if params['binarize'] else ''}-{digest}"
    if _inside(path, Path(params["root"])):
        raise ValueError(f"the folder cache {path} would lie inside the image folder {params['root']}; set "
                         "data.cache_dir to a directory outside it (or data.cache=false to decode in memory)")
    return path


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------ open

def open_cache(root: Path, files, params: dict, order: np.ndarray, read: Read, *,
               base: Optional[Path] = None) -> FolderCache:
    """The valid cache of ``files`` (the sorted images of ``root``, an ImageFiles) for ``params`` (image_size,
    channels, split_seed, binarize), building it first when it is missing or stale; ``read`` decodes one file (it raises
    for an unreadable one under on_bad_image=error). CacheUnavailable when the directory cannot be used."""
    path = cache_path(root, params, base)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheUnavailable(f"cannot create the cache directory {path}: {e.strerror or e}") from None
    entries = listing(files)
    what = f"the cache of {root}"
    with _locked(path, exclusive=False, what=what):
        manifest, reason = check(path, params, entries, order)
        if reason is None and manifest is not None:
            return _map(path, manifest, order)
    with _locked(path, exclusive=True, what=what):
        manifest, reason = check(path, params, entries, order)   # another process may have built it meanwhile
        if reason is None and manifest is not None:
            return _map(path, manifest, order)
        if reason is not None:
            _say(f"rebuilding the cache of {root}: {reason}")
        manifest = build(path, root, files, entries, params, order, read, reuse=_reusable(path, params))
        return _map(path, manifest, order)


def _map(path: Path, m: dict, order: np.ndarray) -> FolderCache:
    shape = tuple(m["shape"])
    array = np.memmap(path / m["array"], dtype=np.uint8, mode="c", shape=shape) if shape[0] else None
    return FolderCache(path, array, m["rows"],
                       {int(i): str(msg) for i, msg in m["unreadable"]}, order, shape[1:])


# ------------------------------------------------------------------------------------------------ validity

def read_manifest(path: Path) -> tuple[Optional[dict], Optional[str]]:
    """(manifest, None); (None, None) when there is none; (None, reason) when it cannot be used."""
    f = path / MANIFEST
    try:
        text = f.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as e:
        return None, f"its manifest cannot be read ({e})"
    try:
        m = json.loads(text)
    except ValueError:
        return None, "its manifest is not valid JSON"
    if not isinstance(m, dict) or m.get("kind") != KIND:
        return None, "its manifest is not a genlab folder cache manifest"
    if m.get("format") != FORMAT:
        return None, f"it was written in cache format {m.get('format')!r} (this genlab writes {FORMAT})"
    return m, None


def check(path: Path, params: dict, entries: Listing, order: np.ndarray) -> tuple[Optional[dict], Optional[str]]:
    """(manifest, None) for a cache that holds exactly ``entries`` for ``params`` (the manifest gains ``rows``, the
    file index of each row, from the listing file); (None, None) for none yet; (None, reason) for a stale or
    damaged one."""
    m, reason = read_manifest(path)
    if m is None:
        return None, reason
    try:
        if m["params"] != params:
            return None, "it was built with other settings"
        old, stored, reason = read_listing(path / m["listing"])
        if reason:
            return None, reason
        if not old.same(entries):
            return None, listing_difference(old, entries)
        bad = np.array([int(i) for i, _ in m["unreadable"]], dtype=np.int64)
        rows = order[~np.isin(order, bad)] if len(bad) else order
        if not np.array_equal(stored, rows):
            return None, "its rows are not in this split order (default_rng(split_seed).permutation)"
        shape = [len(rows), params["channels"], params["image_size"], params["image_size"]]
        if [int(s) for s in m["shape"]] != shape:
            return None, "its array shape does not match its rows"
        reason = array_difference(path / m["array"], int(np.prod(shape)))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        return None, f"its manifest is damaged ({type(e).__name__}: {e})"
    if reason:
        return None, reason
    m["rows"] = stored
    return m, None


def listing_difference(old: Listing, new: Listing) -> Optional[str]:
    """None when the two listings are equal, else e.g. '3 files changed, 1 file added, 2 files removed'."""
    if old.same(new):
        return None
    before, after = old.as_dict(), new.as_dict()
    changed = sum(1 for k, v in after.items() if k in before and before[k] != v)
    added = sum(1 for k in after if k not in before)
    removed = sum(1 for k in before if k not in after)
    parts = [f"{n} file{'s' if n != 1 else ''} {what}" for n, what in
             ((changed, "changed"), (added, "added"), (removed, "removed")) if n]
    return ", ".join(parts) or "the files are listed in another order"


def array_difference(f: Path, expected: int) -> Optional[str]:
    """None when the array file has exactly ``expected`` bytes, else what is wrong with it."""
    try:
        size = f.stat().st_size
    except FileNotFoundError:
        return f"the cache file {f.name} is missing"
    except OSError as e:
        return f"the cache file {f.name} cannot be read ({e.strerror})"
    if size < expected:
        return f"the cache file was truncated ({size} of {expected} bytes)"
    if size > expected:
        return f"the cache file has {size} bytes, {size - expected} more than its shape needs"
    return None


def _reusable(path: Path, params: dict) -> dict:
    """Rows of the previous build that can be copied: ``{relative path: (size, mtime_ns, memmap, row)}`` from a
    manifest for the same settings whose array is intact; empty when there is none."""
    m, _ = read_manifest(path)
    try:
        if m is None or m["params"] != params or not m["shape"][0]:
            return {}
        if array_difference(path / m["array"], int(np.prod(m["shape"]))):
            return {}
        lst, rows, reason = read_listing(path / m["listing"])
        if reason or len(rows) != m["shape"][0]:
            return {}
        old = np.memmap(path / m["array"], dtype=np.uint8, mode="r", shape=tuple(m["shape"]))
        return {lst.relative(i): (int(lst.sizes[i]), int(lst.mtimes[i]), old, r) for r, i in enumerate(rows)}
    except (KeyError, TypeError, ValueError, IndexError, OSError):
        return {}


# ------------------------------------------------------------------------------------------------ build

def build(path: Path, root: Path, files, entries: Listing, params: dict, order: np.ndarray,
          read: Read, reuse: Optional[dict] = None) -> dict:
    """Decode the images of ``root`` in ``order`` into a new array file in ``path`` and make it the cache (see the
    module docstring); returns the new manifest. An exception from ``read`` (an unreadable image under
    on_bad_image=error) or an interrupt removes the partial file and leaves the previous cache as it was."""
    reuse = reuse or {}
    n, c, s = len(files), params["channels"], params["image_size"]
    row_bytes = c * s * s
    _check_space(path, root, n * row_bytes)
    token = f"{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
    tmp, final = path / f".images-{token}.tmp", path / f"images-{token}.u8"
    ltmp, lfinal = path / f".listing-{token}.tmp", path / f"listing-{token}.npz"
    _remove_leftovers(path)
    rows, bad, copied, t0 = [], [], 0, time.perf_counter()
    kind = "RGB" if c == 3 else "grayscale"
    _say(f"building the cache of {root} ({n} image{'s' if n != 1 else ''}, {s}x{s} {kind}) in {path}")
    try:
        with open(tmp, "wb", buffering=1 << 22) as f, _bar(n, root) as bar:
            for i in order:
                i = int(i)
                rel, size, mtime = entries.entry(i)
                old = reuse.get(rel)
                if old is not None and (old[0], old[1]) == (size, mtime) and size >= 0:
                    img, copied = old[2][old[3]], copied + 1
                else:
                    img = read(files[i])
                if isinstance(img, str):
                    bad.append([i, img])
                else:
                    _write(f, img, row_bytes)
                    rows.append(i)
                bar.update(1)
            f.flush()
            os.fsync(f.fileno())
        rows = np.asarray(rows, dtype=np.int64)
        _write_listing(ltmp, entries, rows)
        os.replace(tmp, final)
        os.replace(ltmp, lfinal)
    except BaseException as e:
        for p in (tmp, ltmp, final):
            with contextlib.suppress(OSError):
                p.unlink()
        if isinstance(e, OSError) and not isinstance(e, CacheUnavailable):   # (read() raises no OSError)
            raise CacheUnavailable(f"cannot write the cache file {tmp}: {e.strerror or e}") from None
        raise
    manifest = {
        "kind": KIND, "format": FORMAT, "params": params, "images": n, "unreadable": bad,
        "array": final.name, "listing": lfinal.name, "dtype": "uint8", "shape": [len(rows), c, s, s],
        "built": time.strftime("%Y-%m-%dT%H:%M:%S"), "build_seconds": round(time.perf_counter() - t0, 3),
        "rows_copied": copied,
    }
    try:
        write_text_atomic(path / MANIFEST, json.dumps(manifest, separators=(",", ":")))
    except OSError as e:
        for p in (final, lfinal):
            with contextlib.suppress(OSError):
                p.unlink()
        raise CacheUnavailable(f"cannot write {path / MANIFEST}: {e.strerror or e}") from None
    _remove_old_arrays(path, keep=(final.name, lfinal.name))
    manifest["rows"] = rows
    size = sum((path / f).stat().st_size for f in (final.name, lfinal.name, MANIFEST))
    _say(f"cached {root}: {path}, {format_bytes(size)} on disk ({len(rows)} image{'s' if len(rows) != 1 else ''}"
         f"{f', {len(bad)} unreadable' if bad else ''}, built in {time.perf_counter() - t0:.1f}s"
         f"{f', {copied} rows kept from the previous build' if copied else ''})")
    return manifest


def _write(f, img: np.ndarray, row_bytes: int) -> None:
    if img.dtype != np.uint8 or img.nbytes != row_bytes:
        raise ValueError(f"internal: an image of {img.dtype} {img.shape} does not fit a cache row of {row_bytes} bytes")
    f.write(np.ascontiguousarray(img).data)


def _check_space(path: Path, root: Path, need: int) -> None:
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return
    if free < need + (64 << 20):
        raise CacheUnavailable(f"the cache of {root} needs {format_bytes(need)} but {path} has only "
                               f"{format_bytes(free)} free")


def _remove_leftovers(path: Path) -> None:
    """Partial array files of builds that were killed (only called under the exclusive lock)."""
    for p in (*path.glob(".images-*.tmp"), *path.glob(".listing-*.tmp")):
        with contextlib.suppress(OSError):
            p.unlink()


def _remove_old_arrays(path: Path, keep: tuple[str, ...]) -> None:
    """Array and listing files of earlier builds (processes that still map an array keep reading it: POSIX unlink
    semantics)."""
    for p in (*path.glob("images-*.u8"), *path.glob("listing-*.npz")):
        if p.name not in keep:
            with contextlib.suppress(OSError):
                p.unlink()


# ------------------------------------------------------------------------------------------------ helpers

@contextlib.contextmanager
def _locked(path: Path, exclusive: bool, what: str):
    """Hold ``path/.lock`` shared or exclusive (flock; released by the kernel if the process dies). Says once
    that it waits when another process holds it; CacheUnavailable when the file system cannot lock."""
    try:
        import fcntl
    except ImportError:      # Windows: no flock; one process at a time is assumed
        yield
        return
    lock = path / LOCK
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if exclusive:
            raise CacheUnavailable(f"cannot write in the cache directory {path}: {e.strerror or e}") from None
        try:
            fd = os.open(lock, os.O_RDONLY)     # a read-only cache can still be checked and used
        except OSError:
            raise CacheUnavailable(f"cannot open {lock}: {e.strerror or e}") from None
    try:
        op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CacheUnavailable(f"cannot lock {lock}: {e.strerror} (this file system may not support "
                                       "locks; set data.cache_dir to a local disk)") from None
            if os.environ.get("LOCAL_RANK", "0") == "0":     # one message per node under torchrun
                _say(f"waiting for the lock of {what} ({path}): another process is building or checking it")
            fcntl.flock(fd, op)
        yield
    finally:
        os.close(fd)


def _bar(n: int, root: Path):
    """A progress bar of the build on a terminal (logs get the 'building' and 'cached' lines only)."""
    from tqdm import tqdm

    return tqdm(total=n, desc=f"caching {root.name or root}", unit="img", file=sys.stderr, dynamic_ncols=True,
                leave=False, disable=not sys.stderr.isatty())


def format_bytes(n: float) -> str:
    """``1234567`` -> ``1.2 MB`` (decimal units, as disks are sold)."""
    if n < 1000:
        return f"{int(n)} bytes"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
