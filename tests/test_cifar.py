"""CIFAR-10 from the binary archive: exact record layout, splits, the extracted folder, broken archives, the
download over a local HTTP server, the CLI, and the feature network's refusal. All on tiny generated archives
in the exact format of https://www.cs.toronto.edu/~kriz/cifar.html (binary version)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.cli import main
from genlab.data import DATASETS, load_dataset
from genlab.data.cifar import CLASS_NAMES
from genlab.data.download import SPECS, DownloadSpec, FileSpec, download

from test_download import Server

N = 30  # records per batch
TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST = "test_batch.bin"
META = b"\n".join(name.encode() for name in CLASS_NAMES) + b"\n\n"  # as the real file: a trailing blank line
# member order of the real archive is not sorted; the reader must not depend on it
ORDER = ["data_batch_1.bin", "batches.meta.txt", "data_batch_3.bin", "data_batch_4.bin", TEST, "readme.html",
         "data_batch_5.bin", "data_batch_2.bin"]


def value(r: int, c: int, i: int, j: int) -> int:
    """The pixel of record r (numbered across all batches), channel c, row i, column j."""
    return (5 * r + 80 * c + 7 * i + j) % 256


def label(r: int) -> int:
    return (3 * r + r // N) % 10


def record(r: int) -> bytes:
    """One record as the CIFAR-10 page describes it: label byte, then 1024 red, 1024 green, 1024 blue bytes,
    each plane row by row."""
    planes = [bytes(value(r, c, i, j) for i in range(32) for j in range(32)) for c in range(3)]
    return bytes([label(r)]) + b"".join(planes)


def batches(n: int = N) -> dict[str, bytes]:
    """The six batch files; train records are numbered 0..5n-1 in batch order, test records 5n..6n-1."""
    files = {name: b"".join(record(b * n + k) for k in range(n)) for b, name in enumerate(TRAIN)}
    files[TEST] = b"".join(record(5 * n + k) for k in range(n))
    return files


def expected(first: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    c, i, j = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    x = np.stack([(5 * r + 80 * c + 7 * i + j) % 256 for r in range(first, first + n)]).astype(np.uint8)
    return torch.from_numpy(x), torch.tensor([label(r) for r in range(first, first + n)], dtype=torch.int64)


def member_files(files: dict[str, bytes] | None = None, changes: dict[str, bytes | None] | None = None
                 ) -> dict[str, bytes]:
    """The members of ``cifar-10-batches-bin/``; ``changes`` replaces contents (None: leave the member out)."""
    out = {**(files or BATCHES), "batches.meta.txt": META, "readme.html": b"<html>CIFAR-10</html>"}
    for name, data in (changes or {}).items():
        if data is None:
            out.pop(name)
        else:
            out[name] = data
    return out


def write_archive(path: Path, members: dict[str, bytes], folder: str = "cifar-10-batches-bin") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        top = tarfile.TarInfo(folder)
        top.type = tarfile.DIRTYPE
        tar.addfile(top)
        for name in sorted(members, key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER)):
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    return path


def write_folder(directory: Path, members: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True)
    for name, data in members.items():
        (directory / name).write_bytes(data)
    return directory


BATCHES = batches()


@pytest.fixture
def root(tmp_path) -> Path:
    write_archive(tmp_path / "cifar10" / "cifar-10-binary.tar.gz", member_files())
    return tmp_path / "cifar10"


# ---------------------------------------------------------------- reading


def test_test_split_has_the_exact_layout_labels_and_names(root):
    assert "cifar10" in DATASETS
    ds = load_dataset("cifar10", "test", root=root)
    x, y = expected(5 * N, N)
    assert ds.x.dtype == torch.uint8 and ds.shape == (3, 32, 32) and ds.levels == 256 and ds.name == "cifar10"
    assert torch.equal(ds.x, x) and torch.equal(ds.y, y) and ds.y.dtype == torch.int64
    assert ds.x[2, 1, 4, 9].item() == value(5 * N + 2, 1, 4, 9)  # record 2: green plane, row 4, column 9
    assert ds.num_classes == 10 and ds.class_names == CLASS_NAMES
    assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"


def test_train_val_splits_follow_the_seeded_permutation(root):
    x, y = expected(0, 5 * N)  # the train batches 1..5 in order
    order = np.random.default_rng(3).permutation(5 * N)
    train = load_dataset("cifar10", "train", root=root, val_size=20, seed=3)
    val = load_dataset("cifar10", "val", root=root, val_size=20, seed=3)
    assert torch.equal(train.x, x[order[:-20]]) and torch.equal(train.y, y[order[:-20]])
    assert torch.equal(val.x, x[order[-20:]]) and torch.equal(val.y, y[order[-20:]])
    full = load_dataset("cifar10", "train+val", root=root, seed=3)  # no val_size needed for the whole part
    assert torch.equal(full.x, x[order])
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("cifar10", "train", root=root)  # default 5000 does not fit 150 images


def test_extracted_folder_and_other_roots(root, tmp_path, monkeypatch):
    reference = load_dataset("cifar10", "train+val", root=root)
    folder = write_folder(tmp_path / "extracted" / "cifar-10-batches-bin", member_files())
    for where in (folder.parent, folder, root / "cifar-10-binary.tar.gz"):
        ds = load_dataset("cifar10", "train+val", root=where)
        assert torch.equal(ds.x, reference.x) and torch.equal(ds.y, reference.y)
    monkeypatch.setenv("GENLAB_DATA", str(root.parent))  # the default root: $GENLAB_DATA/cifar10
    assert torch.equal(load_dataset("cifar10", "test").x, expected(5 * N, N)[0])


def test_resize_binarize_labels_and_channels(root):
    raw = load_dataset("cifar10", "test", root=root)
    small = load_dataset("cifar10", "test", root=root, image_size=16, channels=3)
    assert small.shape == (3, 16, 16)
    rgb = Image.fromarray(raw.x[0].permute(1, 2, 0).numpy(), mode="RGB").resize((16, 16), Image.Resampling.BOX)
    assert torch.equal(small.x[0], torch.from_numpy(np.array(rgb)).permute(2, 0, 1))
    assert load_dataset("cifar10", "test", root=root, image_size=40).shape == (3, 40, 40)
    binary = load_dataset("cifar10", "test", root=root, binarize=True)
    assert binary.levels == 2 and torch.equal(binary.x, (raw.x >= 128).to(torch.uint8))
    unlabeled = load_dataset("cifar10", "test", root=root, labels=False)
    assert unlabeled.y is None and unlabeled.num_classes == 0
    with pytest.raises(ValueError, match="RGB; channels must be 3"):
        load_dataset("cifar10", "test", root=root, channels=1)


# ---------------------------------------------------------------- bad inputs


def test_missing_archive_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", "test", root=tmp_path / "nothing")
    msg = str(err.value)
    assert "cifar-10-binary.tar.gz" in msg and str(tmp_path / "nothing") in msg
    assert "genlab data cifar10" in msg and "data.root" in msg


def damaged(path: Path, how: str) -> Path:
    data = path.read_bytes()
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "flipped":  # one byte in the middle: only the gzip CRC can tell, the pixels are incompressible
        data = data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0x5A]) + data[len(data) // 2 + 1:]
    else:
        data = b"<html><body>Not Found</body></html>"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("how", ["truncated", "flipped", "html"])
def test_broken_archive_is_one_clear_error(root, how):
    archive = damaged(root / "cifar-10-binary.tar.gz", how)
    for split in ("train", "test"):
        with pytest.raises(ValueError) as err:
            load_dataset("cifar10", split, root=root, val_size=10)
        msg = str(err.value)
        assert str(archive) in msg and "download it again with `genlab data cifar10`" in msg
        assert err.value.__cause__ is not None  # the tarfile / gzip error is kept as the cause, not shown alone


def test_batch_of_wrong_length_label_out_of_range_and_missing_member(root, tmp_path):
    archive = root / "cifar-10-binary.tar.gz"
    write_archive(archive, member_files(changes={"data_batch_2.bin": BATCHES["data_batch_2.bin"][:-5]}))
    with pytest.raises(ValueError, match=r"cifar-10-batches-bin/data_batch_2.bin: 92185 bytes is not a whole "
                                         r"number of 3073-byte CIFAR-10 records.*genlab data cifar10"):
        load_dataset("cifar10", "train+val", root=root)
    assert len(load_dataset("cifar10", "test", root=root)) == N  # the test part does not read that batch

    bad = bytearray(BATCHES[TEST])
    bad[7 * 3073] = 10
    write_archive(archive, member_files(changes={TEST: bytes(bad)}))
    with pytest.raises(ValueError, match=r"test_batch.bin: record 7 has label 10, outside 0..9"):
        load_dataset("cifar10", "test", root=root)

    write_archive(archive, member_files(changes={"data_batch_4.bin": None}))
    with pytest.raises(ValueError, match=r"lacks cifar-10-batches-bin/data_batch_4.bin.*genlab data cifar10"):
        load_dataset("cifar10", "train+val", root=root)

    write_archive(archive, member_files(changes={"batches.meta.txt": b"apple\nbanana\n"}))  # another dataset's names
    with pytest.raises(ValueError, match="batches.meta.txt: class names .* are not CIFAR-10's"):
        load_dataset("cifar10", "test", root=root)

    write_archive(archive, member_files(), folder="cifar-10-batches-py")  # the wrong (pickled) download
    with pytest.raises(ValueError, match="pickled Python version"):
        load_dataset("cifar10", "test", root=root)

    folder = write_folder(tmp_path / "x" / "cifar-10-batches-bin", member_files(changes={TEST: b"\0" * 3000}))
    with pytest.raises(ValueError, match=r"test_batch.bin: 3000 bytes is not a whole number"):
        load_dataset("cifar10", "test", root=folder)
    (folder / "batches.meta.txt").unlink()
    with pytest.raises(ValueError, match="lacks batches.meta.txt"):
        load_dataset("cifar10", "test", root=folder)


# ---------------------------------------------------------------- download and CLI


@pytest.fixture
def served(root, tmp_path, monkeypatch):
    """The tiny archive on a local HTTP server; SPECS["cifar10"] carries its md5 (the official URL stays)."""
    archive = root / "cifar-10-binary.tar.gz"
    server = Server(root)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(SPECS, "cifar10", DownloadSpec([FileSpec(archive.name, md5=md5)], SPECS["cifar10"].urls))
    try:
        yield server, archive
    finally:
        server.close()


def test_builtin_spec_is_the_official_binary_archive():
    spec = SPECS["cifar10"]
    assert [(f.name, f.md5) for f in spec.files] == [("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")]
    assert spec.urls == ["https://www.cs.toronto.edu/~kriz/"]


def test_download_verify_and_load(served, tmp_path, capsys):
    server, archive = served
    dest = download("cifar10", tmp_path / "dest", base_url=server.url, progress=False)
    assert [p.name for p in dest.iterdir()] == ["cifar-10-binary.tar.gz"]  # no temporary file left
    assert torch.equal(load_dataset("cifar10", "test", root=dest).x, expected(5 * N, N)[0])
    download("cifar10", dest, base_url=server.url, progress=False)
    assert len(server.requests) == 1  # verified, not fetched again
    assert "verified (md5)" in capsys.readouterr().err


def test_cli_data_cifar10_with_a_mirror(served, tmp_path, capsys):
    server, _ = served
    dest = tmp_path / "dest"
    assert main(["data", "cifar10", "--root", str(dest), "--mirror", server.url]) == 0
    assert f"cifar10: all files verified in {dest}" in capsys.readouterr().out
    assert server.requests == ["/cifar-10-binary.tar.gz"]
    assert len(load_dataset("cifar10", "val", root=dest, val_size=10)) == 10
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    assert "cifar10" in capsys.readouterr().out


def test_corrupted_download_leaves_nothing(served, tmp_path, capsys):
    server, archive = served
    damaged(archive, "truncated")
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match="checksum mismatch for cifar-10-binary.tar.gz.*expected md5"):
        download("cifar10", dest, base_url=server.url, progress=False)
    assert list(dest.iterdir()) == []  # neither the bad file nor a temporary one
    assert main(["data", "cifar10", "--root", str(dest), "--mirror", server.url]) == 2
    err = capsys.readouterr().err
    assert "genlab data: error: checksum mismatch" in err and "Traceback" not in err
    assert list(dest.iterdir()) == []


# ---------------------------------------------------------------- feature network


def test_featnet_spec_and_refusal_below_its_minimum(tmp_path, monkeypatch, capsys):
    import genlab.eval.features as F

    spec = F.SPECS["cifar10"]
    assert (spec.size, spec.channels, spec.classes, spec.min_accuracy, spec.flip) == (32, 3, 10, 0.80, True)
    feats, logits = F.FeatNet(spec)(torch.zeros(2, 3, 32, 32))
    assert feats.shape == (2, spec.feat_dim) and logits.shape == (2, 10)

    rng = np.random.default_rng(0)  # random pixels and labels: nothing to learn, accuracy near 1/10
    records = rng.integers(0, 256, (6, N, 3073), dtype=np.uint8)
    records[..., 0] = rng.integers(0, 10, (6, N))
    files = {name: records[b].tobytes() for b, name in enumerate(TRAIN + [TEST])}
    root = write_archive(tmp_path / "random" / "cifar-10-binary.tar.gz", member_files(files)).parent
    monkeypatch.setitem(F.SPECS, "cifar10", F.FeatNetSpec(**{**spec.__dict__, "epochs": 1, "width": 4}))
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))
    assert main(["featnet", "train", "--data", "cifar10", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "the cifar10 feature network has test accuracy" in err and "below the 0.8 needed" in err
    assert "genlab featnet train --data cifar10" in err


def test_flip_is_seeded_and_mirrors_whole_images():
    from genlab.eval.features import _flip

    x = torch.arange(2 * 16 * 3 * 4 * 4, dtype=torch.float32).reshape(32, 3, 4, 4)
    a = _flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, _flip(x, torch.Generator().manual_seed(1)))
    mirrored = [torch.equal(a[k], x[k].flip(2)) for k in range(32)]
    assert all(m or torch.equal(a[k], x[k]) for k, m in enumerate(mirrored)) and 0 < sum(mirrored) < 32
