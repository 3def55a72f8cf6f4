"""Tests for genlab.data: digits split, quantizer, IDX reader, image folders, argument errors."""

from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.data import DATASETS, ImageDataset, default_data_root, from_model, load_dataset, to_model
from genlab.data.idx import read_idx


# ---------------------------------------------------------------- digits and quantizer


def test_digits_split_sizes_and_disjoint():
    sizes = {s: len(load_dataset("digits", s)) for s in ("train", "val", "train+val", "test")}
    assert sizes == {"train": 1293, "val": 144, "train+val": 1437, "test": 360}
    ds = load_dataset("digits", "train")
    assert ds.shape == (1, 8, 8) and ds.levels == 17 and ds.x.dtype == torch.uint8
    assert ds.num_classes == 10 and ds.y is not None  # labeled datasets carry labels by default
    unlabeled = load_dataset("digits", "train", labels=False)
    assert unlabeled.y is None and unlabeled.num_classes == 0


def test_digits_exact_permutation_and_labels():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    perm = np.random.default_rng(0).permutation(1797)
    expected = {
        "train": perm[:1437][:-144],
        "val": perm[:1437][-144:],
        "train+val": perm[:1437],
        "test": perm[1437:],
    }
    for split, idx in expected.items():
        ds = load_dataset("digits", split, labels=True, seed=123)  # seed must not change the split
        assert torch.equal(ds.x[:, 0], torch.from_numpy(bunch.images[idx].astype(np.uint8)))
        assert torch.equal(ds.y, torch.from_numpy(bunch.target[idx].astype(np.int64)))
        assert ds.num_classes == 10 and ds.class_names == [str(i) for i in range(10)]
    # disjoint train / val / test, union of train and val is train+val
    assert len(set(expected["train"]) | set(expected["val"]) | set(expected["test"])) == 1797


def test_digits_val_size_and_bad_args():
    assert len(load_dataset("digits", "val", val_size=10)) == 10
    assert len(load_dataset("digits", "train", val_size=0)) == 1437
    assert len(load_dataset("digits", "val", val_size=0)) == 0
    assert load_dataset("digits", "test", image_size=8, channels=1).shape == (1, 8, 8)
    with pytest.raises(ValueError, match="native 8x8 grayscale"):
        load_dataset("digits", "train", image_size=28)
    with pytest.raises(ValueError, match="native 8x8 grayscale"):
        load_dataset("digits", "train", channels=3)
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("digits", "train", val_size=1437)


def test_to_model_digits_is_x_over_8_minus_1():
    ds = load_dataset("digits", "train+val", labels=True)
    x = ds.x
    assert torch.equal(to_model(x, 17), x.float() / 8 - 1)
    b = ds.batch(torch.arange(5))
    assert b["x"].dtype == torch.float32 and b["x"].shape == (5, 1, 8, 8)
    assert b["x"].min() >= -1 and b["x"].max() <= 1
    assert torch.equal(b["y"], ds.y[:5])
    assert "y" not in load_dataset("digits", "test", labels=False).batch(torch.tensor([0, 1]))


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_from_model_round_trip(levels):
    v = torch.arange(levels, dtype=torch.uint8).view(1, 1, 1, -1)
    assert torch.equal(from_model(to_model(v, levels), levels), v)
    # small perturbations stay on the same level
    noisy = to_model(v, levels) + 0.4 * (2 / (levels - 1)) * torch.tensor([1.0, -1.0]).repeat(levels)[:levels]
    assert torch.equal(from_model(noisy, levels), v)


def test_from_model_clamps():
    x = torch.tensor([-5.0, -1.0, 0.0, 1.0, 7.0, float("nan"), float("inf")])
    assert from_model(x, 17).tolist() == [0, 0, 8, 16, 16, 0, 16]
    assert from_model(x, 256).dtype == torch.uint8


def test_binarize_digits():
    ds = load_dataset("digits", "test", binarize=True)
    raw = load_dataset("digits", "test")
    assert ds.levels == 2 and set(ds.x.unique().tolist()) <= {0, 1}
    assert torch.equal(ds.x, (raw.x >= 8).to(torch.uint8))
    assert set(ds.batch(torch.arange(len(ds)))["x"].unique().tolist()) <= {-1.0, 1.0}


def test_image_dataset_checks():
    with pytest.raises(ValueError):
        ImageDataset(torch.zeros(2, 1, 4, 4), None, 256, 0, [], "bad")  # float, not uint8
    with pytest.raises(ValueError):
        ImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), 256, 10, [], "bad")


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("GENLAB_DATA", str(tmp_path / "d"))
    assert default_data_root() == tmp_path / "d"
    monkeypatch.delenv("GENLAB_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_root() == tmp_path / "cache" / "genlab" / "data"


# ---------------------------------------------------------------- IDX files


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    """Encode a uint8 array in the IDX format."""
    magic = magic if magic is not None else 0x0800 + arr.ndim
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.astype(np.uint8).tobytes()


def write_mnist(directory: Path, n_train: int = 30, n_test: int = 12, gz: bool = True, seed: int = 0) -> dict:
    """Write the four MNIST files with random content; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for stem, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_mnist_splits(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    test = load_dataset("mnist", "test", root=tmp_path, labels=True)
    assert test.x.shape == (12, 1, 28, 28) and test.x.dtype == torch.uint8 and test.levels == 256
    assert torch.equal(test.x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert torch.equal(test.y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)))

    order = np.random.default_rng(3).permutation(30)
    train = load_dataset("mnist", "train", root=tmp_path, val_size=5, seed=3, labels=True)
    val = load_dataset("mnist", "val", root=tmp_path, val_size=5, seed=3, labels=True)
    full = load_dataset("mnist", "train+val", root=tmp_path, val_size=5, seed=3)
    assert (len(train), len(val), len(full)) == (25, 5, 30)
    images = arrays["train-images-idx3-ubyte"]
    assert torch.equal(val.x[:, 0], torch.from_numpy(images[order[-5:]]))
    assert torch.equal(train.x[:, 0], torch.from_numpy(images[order[:-5]]))
    assert full.y is not None and load_dataset("mnist", "train+val", root=tmp_path, val_size=5, labels=False).y is None


def test_idx_fashion_names_binarize_resize(tmp_path):
    write_mnist(tmp_path)
    ds = load_dataset("fashion-mnist", "test", root=tmp_path, labels=True, binarize=True, image_size=14)
    assert ds.name == "fashion-mnist" and ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert ds.levels == 2 and ds.shape == (1, 14, 14) and set(ds.x.unique().tolist()) <= {0, 1}
    raw = load_dataset("fashion-mnist", "test", root=tmp_path)
    assert torch.equal(load_dataset("fashion-mnist", "test", root=tmp_path, binarize=True).x, (raw.x >= 128).to(torch.uint8))


def test_idx_default_val_size_too_big(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("mnist", "train", root=tmp_path)  # default 5000 > 30 images


def test_idx_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("mnist", "test", root=tmp_path)
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte" in msg and str(tmp_path) in msg
    assert "genlab data mnist" in msg and "GENLAB_DATA" in msg


def test_idx_default_root(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLAB_DATA", str(tmp_path))
    write_mnist(tmp_path / "fashion-mnist")
    assert len(load_dataset("fashion-mnist", "test")) == 12


def test_idx_bad_magic(tmp_path):
    write_mnist(tmp_path, gz=False)
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(idx_bytes(np.zeros((2, 28, 28), np.uint8), magic=2049 + 0x10000))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*magic"):
        load_dataset("mnist", "test", root=tmp_path)
    # a labels file where images are expected
    bad.write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(ValueError, match="magic number 2049"):
        read_idx(bad, 2051)


def test_idx_truncated(tmp_path):
    write_mnist(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", "test", root=tmp_path)
    path.write_bytes(data[:10])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path, 2051)


def test_idx_truncated_gzip(tmp_path):
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", "test", root=tmp_path)


# ---------------------------------------------------------------- image folders


def save(path: Path, size: tuple[int, int], mode: str = "RGB", color=(200, 30, 30), fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode != "L" else 128).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path) -> Path:
    """12 images in two class folders (nested), mixed formats, sizes, modes and extension case."""
    root = tmp_path / "imgs"
    for i in range(6):
        save(root / "cats" / f"c{i}.png", (20 + i, 16))
    for i in range(4):
        save(root / "dogs" / "sub" / f"d{i}.JPG", (16, 24), fmt="JPEG")
    save(root / "dogs" / "gray.jpeg", (30, 30), mode="L")
    save(root / "dogs" / "x.Png", (10, 10), mode="RGBA", color=(0, 0, 255, 255))
    (root / "dogs" / "notes.txt").write_text("not an image")
    return root


def test_folder_rgb_gray_labels_and_split(folder):
    full = load_dataset("folder", "train+val", root=folder, image_size=8, labels=True)
    assert full.x.shape == (12, 3, 8, 8) and full.levels == 256 and full.name == "folder"
    assert full.class_names == ["cats", "dogs"] and full.num_classes == 2
    assert sorted(full.y.tolist()) == [0] * 6 + [1] * 6
    gray = load_dataset("folder", "train+val", root=folder, image_size=8, channels=1)
    assert gray.shape == (1, 8, 8) and gray.y is None

    # default val size: 10% of 12 images -> 1; split follows default_rng(seed).permutation(N)
    train = load_dataset("folder", "train", root=folder, image_size=8, seed=1)
    val = load_dataset("folder", "val", root=folder, image_size=8, seed=1)
    assert (len(train), len(val)) == (11, 1)
    assert len(load_dataset("folder", "val", root=folder, image_size=8, val_size=4)) == 4


def test_folder_split_is_permutation_of_sorted_files(tmp_path):
    root = tmp_path / "gradient"
    for i in range(10):  # each image a distinct flat gray level; sorted names = level order
        path = root / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (6, 6), 10 * i).save(path)
    order = np.random.default_rng(7).permutation(10)
    val = load_dataset("folder", "val", root=root, image_size=6, channels=1, val_size=3, seed=7)
    train = load_dataset("folder", "train", root=root, image_size=6, channels=1, val_size=3, seed=7)
    assert val.x[:, 0, 0, 0].tolist() == [10 * i for i in order[-3:]]
    assert train.x[:, 0, 0, 0].tolist() == [10 * i for i in order[:-3]]


def test_folder_resize_and_center_crop(tmp_path):
    # 40x20 image: left quarter red, middle half green, right quarter blue.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:30] = (0, 255, 0)
    arr[:, 30:] = (0, 0, 255)
    Image.fromarray(arr).save(tmp_path / "wide.png")
    ds = load_dataset("folder", "train+val", root=tmp_path, image_size=10)
    assert ds.shape == (3, 10, 10)
    # shorter side 20 -> 10, so 40x20 -> 20x10; the center 10 columns are all green
    img = ds.x[0].to(torch.int32)
    assert (img[1] > 200).all() and (img[0] < 50).all() and (img[2] < 50).all()


def test_folder_labels_need_subfolders(folder):
    save(folder / "loose.png", (8, 8))
    with pytest.raises(ValueError, match="loose.png"):
        load_dataset("folder", "train+val", root=folder, image_size=8, labels=True)
    assert len(load_dataset("folder", "train+val", root=folder, image_size=8)) == 13


def test_folder_corrupt_image(folder):
    bad = folder / "cats" / "broken.png"
    good = (folder / "cats" / "c0.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated PNG
    (folder / "cats" / "garbage.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(ValueError, match=r"broken\.png|garbage\.jpg") as err:
        load_dataset("folder", "train+val", root=folder, image_size=8)
    assert "on_bad_image=skip" in str(err.value)
    with pytest.warns(UserWarning, match="skipped 2 unreadable") as rec:
        ds = load_dataset("folder", "train+val", root=folder, image_size=8, on_bad_image="skip", labels=True)
    assert "broken.png" in str(rec[0].message)
    assert len(ds) == 12 and len(ds.y) == 12


def test_folder_errors(tmp_path, folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no images found.*\.png, \.jpg, \.jpeg"):
        load_dataset("folder", "train", root=tmp_path / "empty", image_size=8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("folder", "train", root=tmp_path / "nope", image_size=8)
    with pytest.raises(NotADirectoryError, match="is a file"):
        load_dataset("folder", "train", root=folder / "dogs" / "notes.txt", image_size=8)
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("folder", "train", root=folder)
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("folder", "train", root=folder, image_size=2)
    with pytest.raises(ValueError, match="channels"):
        load_dataset("folder", "train", root=folder, image_size=8, channels=4)
    with pytest.raises(ValueError, match="no test split"):
        load_dataset("folder", "test", root=folder, image_size=8)
    with pytest.raises(ValueError, match="data.root"):
        load_dataset("folder", "train", image_size=8)


def test_folder_small_has_no_val(tmp_path):
    for i in range(3):
        save(tmp_path / f"{i}.png", (8, 8))
    assert len(load_dataset("folder", "val", root=tmp_path, image_size=8)) == 0
    assert len(load_dataset("folder", "train", root=tmp_path, image_size=8)) == 3


# ---------------------------------------------------------------- argument errors


def test_unknown_name_split_and_option():
    with pytest.raises(ValueError) as err:
        load_dataset("cifar", "train")
    assert all(name in str(err.value) for name in DATASETS)
    with pytest.raises(ValueError) as err:
        load_dataset("digits", "validation")
    assert all(s in str(err.value) for s in ("train", "val", "train+val", "test"))
    with pytest.raises(ValueError, match="error, skip"):
        load_dataset("digits", "train", on_bad_image="ignore")


def test_no_warnings_for_clean_loads(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("digits", "train")
        load_dataset("folder", "train", root=folder, image_size=8)


def test_folder_captions_from_csv_and_txt(folder, tmp_path):
    rel = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix.lower() in
                 (".png", ".jpg", ".jpeg"))
    lines = ["file,caption"] + [f'{r},"{r.split("/")[0]}, number {i}"' for i, r in enumerate(rel)]
    (folder / "captions.csv").write_text("\n".join(lines) + "\n")
    full = load_dataset("folder", "train+val", root=folder, image_size=8, labels=True)
    assert sorted(full.captions) == sorted(f"{r.split('/')[0]}, number {i}" for i, r in enumerate(rel))
    assert [c.split(",")[0] for c in full.captions] == [full.class_names[int(y)] for y in full.y]  # follow images
    b = full.batch(torch.tensor([0, 3]))
    assert b["text"] == [full.captions[0], full.captions[3]]
    val = load_dataset("folder", "val", root=folder, image_size=8, val_size=3)
    assert len(val.captions) == 3 and set(val.captions) <= set(full.captions)
    (folder / "captions.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"1 image\(s\) have no caption in .*captions.csv"):
        load_dataset("folder", "train+val", root=folder, image_size=8, captions_required=True)
    with pytest.warns(UserWarning, match="ignoring the captions"):        # a model without text still trains
        assert load_dataset("folder", "train+val", root=folder, image_size=8).captions is None
    (folder / "captions.csv").write_text("file,caption\na,b,c\n")
    with pytest.raises(ValueError, match="line 2: expected 2 columns"):
        load_dataset("folder", "train+val", root=folder, image_size=8, captions_required=True)
    (folder / "captions.csv").unlink()

    root = tmp_path / "txt"
    for i in range(3):
        save(root / f"im{i}.png", (8, 8))
        (root / f"im{i}.txt").write_text(f"  caption {i}\n")
    assert sorted(load_dataset("folder", "train+val", root=root, image_size=8).captions) == [f"caption {i}" for i in range(3)]
    (root / "im1.txt").unlink()
    with pytest.raises(ValueError, match=r"im1.png has none \(expected .*im1.txt\)"):
        load_dataset("folder", "train+val", root=root, image_size=8, captions_required=True)
    (root / "im1.txt").write_text("x")
    (root / "captions.csv").write_text("im0.png,a\n")
    with pytest.raises(ValueError, match="both captions.csv and per-image .txt captions"):
        load_dataset("folder", "train+val", root=root, image_size=8, captions_required=True)
    assert load_dataset("folder", "train+val", root=folder, image_size=8).captions is None
