"""Tests for the memory-mapped cache of image folders (genlab.data.cache): built once, reused, never stale, the
same pixels as decoding in memory, unreadable images, labels and captions, memory, and processes that start
together. Generated PNGs only; folders and caches in tmp_path."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.config import load_config
from genlab.data import load_dataset
from genlab.data.cache import read_listing
from genlab.data.images import ImageReadError

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "train+val")


def write_images(root: Path, n: int, size=(10, 12), classes: int = 0, seed: int = 0, start: int = 0) -> list[Path]:
    """``n`` random RGB PNGs (in ``classes`` sub-folders when > 0); returns their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(start, start + n):
        d = root / f"class{i % classes}" if classes else root
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"im{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def load(root, split="train+val", **kw):
    kw.setdefault("image_size", 8)
    return load_dataset("folder", split, root=root, **kw)


def cache_dirs(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.exists() else []


def the_cache(base: Path) -> Path:
    (d,) = cache_dirs(base)
    return d


def array_file(base: Path) -> Path:
    d = the_cache(base)
    return d / json.loads((d / "manifest.json").read_text())["array"]


def same_as_in_memory(root, cache_dir, **kw) -> None:
    for split in SPLITS:
        a = load(root, split, cache_dir=cache_dir, **kw)
        b = load(root, split, cache=False, **kw)
        assert torch.equal(a.x, b.x), split
        assert (a.y is None and b.y is None) or torch.equal(a.y, b.y)
        assert a.captions == b.captions and a.class_names == b.class_names and a.levels == b.levels


@pytest.fixture
def folder(tmp_path) -> Path:
    write_images(tmp_path / "imgs", 20)
    return tmp_path / "imgs"


# ---------------------------------------------------------------- build, reuse, identical pixels


def test_first_load_builds_second_reuses(folder, tmp_path, capsys):
    base = tmp_path / "cache"
    before = sorted(p.name for p in folder.rglob("*"))
    ds = load(folder, "train", cache_dir=base)
    err = capsys.readouterr().err
    d = the_cache(base)
    assert f"building the cache of {folder}" in err and f"cached {folder}: {d}" in err and " KB on disk" in err
    assert d.name.startswith("imgs-8px-rgb-seed0-")
    m = json.loads((d / "manifest.json").read_text())
    assert m["shape"] == [20, 3, 8, 8] and m["images"] == 20 and m["unreadable"] == []
    assert m["params"]["image_size"] == 8 and m["params"]["channels"] == 3 and m["format"] == 2
    lst, rows, reason = read_listing(d / m["listing"])
    assert reason is None and len(lst) == 20 and sorted(rows.tolist()) == list(range(20))
    assert [lst.relative(i) for i in range(20)] == sorted(p.name for p in folder.iterdir())
    assert array_file(base).stat().st_size == 20 * 3 * 8 * 8
    assert len(ds) == 18 and ds.x.dtype == torch.uint8

    stamp = array_file(base).stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # no warning from torch.from_numpy on the map either
        for split in SPLITS:
            load(folder, split, cache_dir=base)
    assert capsys.readouterr().err == ""      # reused, silently
    assert array_file(base).stat().st_mtime_ns == stamp
    same_as_in_memory(folder, base)
    assert sorted(p.name for p in folder.rglob("*")) == before      # nothing written into the user's folder


def test_x_is_a_view_of_the_file_that_writes_never_reach(folder, tmp_path):
    base = tmp_path / "cache"
    ds = load(folder, "train+val", cache_dir=base)
    raw = np.fromfile(array_file(base), dtype=np.uint8).reshape(20, 3, 8, 8)
    assert np.array_equal(ds.x.numpy(), raw) and not ds.x.numpy().flags.owndata
    b = ds.batch(torch.tensor([3, 0, 7]))
    assert torch.equal(b["x"], torch.from_numpy(raw[[3, 0, 7]]).float() / 255 * 2 - 1)
    ds.x[0] = 0                                # copy-on-write: private memory, never the file
    assert np.array_equal(np.fromfile(array_file(base), dtype=np.uint8).reshape(20, 3, 8, 8), raw)


def test_options_each_have_their_cache(folder, tmp_path):
    base = tmp_path / "cache"
    same_as_in_memory(folder, base, channels=1, image_size=6, seed=3, val_size=5)
    same_as_in_memory(folder, base, binarize=True)
    names = [d.name for d in cache_dirs(base)]
    assert any(n.startswith("imgs-6px-gray-seed3-") for n in names)
    assert any(n.startswith("imgs-8px-rgb-seed0-binary-") for n in names)
    assert set(load(folder, cache_dir=base, binarize=True).x.unique().tolist()) <= {0, 1}


def test_find_images_lists_what_rglob_lists(tmp_path):
    from genlab.data.folder import EXTENSIONS, find_images

    root, outside = tmp_path / "r", tmp_path / "outside"
    write_images(root / "sub" / "deeper", 2)
    write_images(root, 2, start=10)
    write_images(outside, 2, start=20)
    (root / "UPPER.PNG").write_bytes((root / "im010.png").read_bytes())
    (root / ".hidden.jpg").write_bytes(b"x")
    (root / "notes.txt").write_text("not an image")
    (root / "dir.png").mkdir()                                   # a directory named like an image
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "one.png").symlink_to(outside / "im020.png")
    want = sorted((p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()),
                  key=lambda p: p.relative_to(root).as_posix())
    files = find_images(root)
    assert list(files) == want and len(files) == len(want) == 7
    assert [files.relative(i) for i in range(len(files))] == [p.relative_to(root).as_posix() for p in want]
    assert files[-1] == want[-1] and files[1:3] == want[1:3]
    with pytest.raises(IndexError):
        files[len(want)]


def test_labels_from_sub_folders_sorted_by_name_and_loose_images_refused(tmp_path):
    root = tmp_path / "r"
    write_images(root / "a", 2)
    write_images(root / "a-b", 3, start=10)            # listed first ('-' sorts before '/'), named second
    ds = load(root, labels=True, cache=False)
    assert ds.class_names == ["a", "a-b"] and sorted(ds.y.tolist()) == [0, 0, 1, 1, 1]
    write_images(root, 1, start=20)
    with pytest.raises(ValueError, match=r"1 image\(s\) lie directly in .*im020\.png"):
        load(root, labels=True, cache=False)


# ---------------------------------------------------------------- never stale


def test_changed_added_removed_images_rebuild(folder, tmp_path, capsys):
    base = tmp_path / "cache"
    load(folder, cache_dir=base)
    old = array_file(base)
    capsys.readouterr()
    changed = folder / "im003.png"
    Image.new("RGB", (10, 12), (1, 2, 3)).save(changed)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))   # a coarse clock cannot hide it
    (folder / "im007.png").unlink()
    write_images(folder, 2, seed=5, start=50)
    ds = load(folder, cache_dir=base)
    err = capsys.readouterr().err
    assert f"rebuilding the cache of {folder}: 1 file changed, 2 files added, 1 file removed" in err
    assert "18 rows kept from the previous build" in err          # unchanged files are not decoded again
    assert len(ds) == 21 and not old.exists()                     # the stale array is gone once replaced
    solid = (ds.x == torch.tensor([1, 2, 3], dtype=torch.uint8).view(3, 1, 1)).flatten(1).all(1)
    assert solid.sum() == 1                                       # the new content of the changed image
    same_as_in_memory(folder, base)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("damage, reason", [
    ("truncate", "the cache file was truncated (600 of 3840 bytes)"),
    ("extend", "the cache file has 3841 bytes, 1 more than its shape needs"),
    ("delete", "the cache file images-"),
    ("manifest", "its manifest is not valid JSON"),
    ("foreign", "its manifest is not a genlab folder cache manifest"),
    ("listing", "its listing file listing-"),
    ("old-format", "it was written in cache format 1 (this genlab writes 2)"),
])
def test_damaged_cache_rebuilds(folder, tmp_path, capsys, damage, reason):
    base = tmp_path / "cache"
    load(folder, cache_dir=base)
    capsys.readouterr()
    arr, manifest = array_file(base), the_cache(base) / "manifest.json"
    if damage == "truncate":
        os.truncate(arr, 600)
    elif damage == "extend":
        with open(arr, "ab") as f:
            f.write(b"\0")
    elif damage == "delete":
        arr.unlink()
    elif damage == "manifest":
        manifest.write_text(manifest.read_text()[:-40])
    elif damage == "listing":
        lst = the_cache(base) / json.loads(manifest.read_text())["listing"]
        os.truncate(lst, lst.stat().st_size // 2)
    elif damage == "old-format":
        manifest.write_text(manifest.read_text().replace('"format":2', '"format":1'))
    else:
        manifest.write_text("[1, 2, 3]")
    ds = load(folder, cache_dir=base)
    err = capsys.readouterr().err
    assert f"rebuilding the cache of {folder}: {reason}" in err and "rows kept" not in err
    assert torch.equal(ds.x, load(folder, cache=False).x)
    assert array_file(base).stat().st_size == 3840
    load(folder, cache_dir=base)
    assert capsys.readouterr().err == ""


def test_interrupted_rebuild_keeps_the_old_cache_and_no_partial_file(folder, tmp_path, monkeypatch, capsys):
    import genlab.data.folder as folder_module

    base = tmp_path / "cache"
    load(folder, cache_dir=base)
    before = {p.name: p.read_bytes() for p in the_cache(base).iterdir()}
    write_images(folder, 1, seed=9, start=90)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(folder_module, "load_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(folder, cache_dir=base)
    assert {p.name: p.read_bytes() for p in the_cache(base).iterdir()} == before   # old pair, nothing else
    monkeypatch.undo()
    assert "rebuilding the cache" in capsys.readouterr().err
    assert len(load(folder, cache_dir=base)) == 21 and "1 file added" in capsys.readouterr().err


def test_a_full_disk_is_a_message_and_in_memory_decoding(folder, tmp_path, monkeypatch, capsys):
    import errno

    import genlab.data.cache as cache_module

    def full(*a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module, "_write", full)
    ds = load(folder, cache_dir=tmp_path / "cache")
    err = capsys.readouterr().err
    assert "cannot write the cache file" in err and "No space left on device" in err
    assert "decoding the images in memory instead" in err
    assert torch.equal(ds.x, load(folder, cache=False).x)
    assert [p.name for p in the_cache(tmp_path / "cache").iterdir()] == [".lock"]


# ---------------------------------------------------------------- unreadable images, labels, captions


def test_bad_images_error_leaves_no_cache_and_skip_warns_every_load(tmp_path, capsys):
    root, base = tmp_path / "imgs", tmp_path / "cache"
    write_images(root, 12, classes=2)
    good = (root / "class0" / "im000.png").read_bytes()
    (root / "class0" / "broken.png").write_bytes(good[: len(good) // 2])
    (root / "class1" / "garbage.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match=r"(broken|garbage)\.png.*on_bad_image=skip"):
        load(root, cache_dir=base)
    assert [p.name for p in the_cache(base).iterdir()] == [".lock"]     # no manifest, no (partial) array
    for _ in range(2):                                                  # built, then reused: the same warning
        with pytest.warns(UserWarning, match="skipped 2 unreadable image") as rec:
            ds = load(root, cache_dir=base, on_bad_image="skip", labels=True)
        assert "broken.png" in str(rec[0].message) and "garbage.png" in str(rec[0].message)
        assert len(ds) == 12 and len(ds.y) == 12 and ds.class_names == ["class0", "class1"]
    m = json.loads((the_cache(base) / "manifest.json").read_text())
    lst, _, _ = read_listing(the_cache(base) / m["listing"])
    assert sorted(Path(lst.relative(i)).name for i, _ in m["unreadable"]) == ["broken.png", "garbage.png"]
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        assert torch.equal(ds.x, load(root, cache=False, on_bad_image="skip").x)
    with pytest.raises(ImageReadError, match=r"(broken|garbage)\.png.*on_bad_image=skip"):
        load(root, cache_dir=base)                                      # strict again, from the skip-built cache
    assert "rebuilding" not in capsys.readouterr().err


def test_labels_and_captions(tmp_path):
    root, base = tmp_path / "imgs", tmp_path / "cache"
    paths = write_images(root, 15, classes=3)
    rows = ["file,caption"] + [f"{p.relative_to(root).as_posix()},a picture of {p.parent.name} {i}"
                               for i, p in enumerate(paths)]
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    same_as_in_memory(root, base, labels=True, val_size=4)
    ds = load(root, "val", cache_dir=base, labels=True, val_size=4)
    assert len(ds.captions) == 4 and ds.num_classes == 3
    assert [c.split()[3] for c in ds.captions] == [ds.class_names[int(y)] for y in ds.y]
    b = ds.batch(torch.tensor([1, 2]))
    assert b["text"] == ds.captions[1:3] and torch.equal(b["y"], ds.y[1:3])


def test_small_folder_empty_val(tmp_path):
    write_images(tmp_path / "imgs", 3)
    assert len(load(tmp_path / "imgs", "val", cache_dir=tmp_path / "cache")) == 0
    assert len(load(tmp_path / "imgs", "train", cache_dir=tmp_path / "cache")) == 3


# ---------------------------------------------------------------- where the cache may go


def test_unusable_cache_dir_falls_back_to_memory(folder, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    ds = load(folder, cache_dir=blocker / "cache")
    err = capsys.readouterr().err
    assert "cannot create the cache directory" in err and "decoding the images in memory instead" in err
    assert torch.equal(ds.x, load(folder, cache=False).x) and blocker.read_text() == "not a directory"


def test_cache_inside_the_image_folder_is_refused(folder):
    before = sorted(folder.rglob("*"))
    with pytest.raises(ValueError, match="would lie inside the image folder.*data.cache_dir"):
        load(folder, cache_dir=folder / "cache")
    assert sorted(folder.rglob("*")) == before


def test_default_place_and_config_fields(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("GENLAB_DATA", str(tmp_path / "data"))
    load(folder)
    assert the_cache(tmp_path / "data" / "folder-cache").name.startswith("imgs-8px-rgb-seed0-")
    cfg = load_config("digits_ddpm", ["data.cache=false", f"data.cache_dir={tmp_path / 'c'}"])
    assert cfg.data.cache is False and cfg.data.cache_dir == str(tmp_path / "c")
    assert load_config("digits_ddpm").data.cache is True


# ---------------------------------------------------------------- memory and processes


MEASURE = """
import json, sys
import numpy as np
from genlab.data import load_dataset

def anon_kb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

root, warm, base = sys.argv[1:4]
for c in (True, False):                     # imports and first-call allocations out of the way
    load_dataset("folder", "train+val", root=warm, image_size=128, cache=c, cache_dir=base)
a0 = anon_kb()
ds = load_dataset("folder", "train+val", root=root, image_size=128, cache_dir=base, val_size=0)
ds.x.numpy().max()                          # every page of the map read
a1 = anon_kb()
mem = load_dataset("folder", "train+val", root=root, image_size=128, cache=False, val_size=0)
a2 = anon_kb()
print(json.dumps({"cached_kb": a1 - a0, "in_memory_kb": a2 - a1, "array_kb": ds.x.numel() // 1024}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_anonymous_memory_stays_flat_with_the_cache(tmp_path):
    root, warm, base = tmp_path / "big", tmp_path / "warm", tmp_path / "cache"
    write_images(root, 80, size=(128, 128))                   # 80 x 3 x 128 x 128 = 3.9 MB of pixels
    write_images(warm, 1, size=(128, 128))
    load(root, cache_dir=base, image_size=128, val_size=0)    # built here; the child only maps it
    out = subprocess.run([sys.executable, "-c", MEASURE, str(root), str(warm), str(base)], capture_output=True,
                         text=True, timeout=120, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["in_memory_kb"] >= 0.9 * r["array_kb"], r        # decoding in memory holds the pixels ...
    assert r["cached_kb"] <= 0.25 * r["array_kb"], r          # ... the map does not


CHILD = """
import json, sys
from pathlib import Path
from genlab.data import load_dataset
root, base = sys.argv[1:3]
print("ready", flush=True)
ds = load_dataset("folder", "train+val", root=root, image_size=8, cache_dir=base)
d = next(p for p in Path(base).iterdir() if p.is_dir())
array = d / json.loads((d / "manifest.json").read_text())["array"]
print(json.dumps({"sum": int(ds.x.sum()), "n": len(ds), "inode": array.stat().st_ino}), flush=True)
"""


def _blocked_on(lock: Path) -> int:
    """Processes waiting for a flock on ``lock`` (from /proc/locks); -1 where that cannot be read."""
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return -1
    ino = lock.stat().st_ino
    return sum(1 for ln in text.splitlines() if "->" in ln and ln.split()[6].endswith(f":{ino}"))


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_two_processes_one_builds_the_other_waits(tmp_path):
    import fcntl

    root, base = tmp_path / "imgs", tmp_path / "cache"
    write_images(root, 60)
    expected = load(root, cache=False)
    # hold the cache's lock so that both processes arrive while it is taken, as torchrun's start together
    from genlab.data.cache import cache_path

    params = {"root": str(root.resolve()), "image_size": 8, "channels": 3, "split_seed": 0, "binarize": False}
    d = cache_path(root, params, base)
    d.mkdir(parents=True)
    fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(base)], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "LOCAL_RANK": str(rank),
                                   "RANK": str(rank), "WORLD_SIZE": "2"})
             for rank in (0, 1)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while _blocked_on(d / ".lock") not in (-1, 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _blocked_on(d / ".lock") == -1:
            time.sleep(1.0)
    finally:
        os.close(fd)                                            # let them go
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    errs = [e for _, e in outs]
    assert sum(bool(re.search("^building the cache of", e, re.M)) for e in errs) == 1, errs   # one builds ...
    assert f"waiting for the lock of the cache of {root}" in errs[0]     # ... rank 0 said it waited
    assert "waiting" not in errs[1]                                     # (only LOCAL_RANK 0 says so)
    got = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert got[0] == got[1] == {"sum": int(expected.x.sum()), "n": 60, "inode": array_file(base).stat().st_ino}
