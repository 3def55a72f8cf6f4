"""Property-based fuzzing through the CLI's main(argv), in-process (issue 11): the config parser and overrides,
the numeric options of sample, the .npy and PNG sample readers and the image-folder loader. Every example must
end in exit status 0 or 2 (argparse's own errors included) with no traceback, and touch no file outside the
paths it was given. Hypothesis runs derandomized (the same examples every time) with a stated max_examples."""
import dataclasses
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genlab.cli import main
from genlab.config import Config

from conftest import TINY, record

SETTINGS = dict(derandomize=True, deadline=None, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def cli(argv) -> int:
    """main(argv) -> exit status; any exception but SystemExit escapes (a traceback: a failure)."""
    try:
        rc = main([str(a) for a in argv])
        record("fuzz examples that ran through (exit 0)", rc == 0)
        return rc
    except SystemExit as e:     # argparse's one-line usage errors
        return e.code
    except BaseException:
        record("tracebacks seen")
        raise


def snapshot(root):
    """Every path under root with a digest of its bytes (directories: None)."""
    import hashlib

    return sorted((str(p.relative_to(root)), hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
                  for p in root.rglob("*"))


@pytest.fixture(autouse=True)
def _in_a_scratch_directory(tmp_path_factory, monkeypatch):
    """Each fuzz test runs in an empty working directory that must stay empty: nothing is written beside."""
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    yield
    assert not any(cwd.iterdir()), f"files written into the working directory: {list(cwd.iterdir())}"


# ------------------------------------------------------------------------------------------- strategies

def _keys():
    out = []
    for sec in dataclasses.fields(Config):
        if sec.name == "method":
            out.append("method")
            continue
        out += [f"{sec.name}.{f.name}" for f in dataclasses.fields(sec.default_factory())]
    return out


KEYS = _keys()
NUMBERS = st.one_of(st.integers(-3, 3), st.sampled_from(["nan", "-nan", "inf", "-inf", ".inf", "1e400", "-0.0",
                                                         "1e-320", str(2 ** 64), str(-2 ** 63), "0x10", "1_000",
                                                         "0.5", "1.5", "-1", "1e9"]),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr))
VALUES = st.one_of(NUMBERS, st.booleans().map(str), st.just(""), st.just("null"),
                   st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
                   st.lists(NUMBERS, max_size=4).map(lambda v: "[" + ",".join(map(str, v)) + "]"),
                   st.sampled_from(["[a,b]", "[1", "{a: 1}", "[[1]]", "!!python/object:os.system", "~", "[]",
                                    "abc", "[1.5,2]", "[true,2]", "diffusion", "folder", "cuda:9", "mps"]))


@given(st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), VALUES), min_size=1,
                max_size=3))
@settings(max_examples=150, **SETTINGS)
def test_config_overrides(tmp_path, capsys, overrides):
    before = snapshot(tmp_path)
    argv = ["train", "--dry-run", "--runs-dir", tmp_path / "runs", *TINY, "train.max_steps=1",
            *[f"{k}={v}" for k, v in overrides]]
    rc = cli(argv)
    assert rc in (0, 2), capsys.readouterr().err
    assert snapshot(tmp_path) == before, "a dry run writes nothing"
    record("fuzz examples run")


INTS = st.one_of(st.integers(-2, 4), st.sampled_from(["0", "-1", "nan", "1e3", str(2 ** 40), str(2 ** 70), "",
                                                      "0x4", "٣", "4.0"]))
SEEDS = st.one_of(st.integers(-2, 2 ** 33), st.sampled_from([str(2 ** 64), str(-2 ** 63), "nan"]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["nan", "inf", "-inf", "1e309", "-0.0", "0", "1", "3", "1e-300", "abc"]))
OPTIONS = {"--n": INTS, "--seed": SEEDS, "--batch-size": INTS, "--steps": INTS, "--eta": FLOATS,
           "--guidance": FLOATS, "--nrow": INTS, "--class": INTS, "--classifier-scale": FLOATS,
           "--temperature": FLOATS, "--k": INTS}


@given(st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.none(), min_size=1, max_size=5).flatmap(
    lambda d: st.fixed_dictionaries({k: OPTIONS[k] for k in d})))
@settings(max_examples=120, **SETTINGS)
def test_sample_numeric_options(cond_run, tmp_path, capsys, opts):
    out = tmp_path / "out"
    before = snapshot(cond_run)
    argv = ["sample", "--ckpt", cond_run, "--out", out / "x.png"]
    for k, v in opts.items():
        argv += [k, v]
    if "--n" not in opts:
        argv += ["--n", "2"]
    if "--steps" not in opts:
        argv += ["--steps", "2"]
    rc = cli(argv)
    assert rc in (0, 2), capsys.readouterr().err
    assert snapshot(cond_run) == before, "sampling changed the run directory"
    assert {p.name for p in tmp_path.iterdir()} <= {"out"}
    record("fuzz examples run")


DTYPES = ["uint8", "int8", "int16", "int64", "uint64", "float16", "float32", "float64", "bool", "complex64",
          "<U3", "S2", "O", "M8[s]", "m8[s]", [("a", "u1"), ("b", "f4")], "V3"]
SHAPES = st.sampled_from([(0,), (5,), (3, 8, 8), (4, 1, 8, 8), (2, 1, 8, 8), (1, 1, 8, 8), (6, 3, 8, 8),
                          (3, 1, 9, 8), (2, 2, 1, 8, 8), (3, 1, 8, 8)])


@st.composite
def npy_files(draw):
    kind = draw(st.sampled_from(["array", "bytes", "damaged", "text"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(st.text(max_size=50)).encode()
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(SHAPES)
    raw = draw(st.binary(min_size=int(np.prod(shape)) * dtype.itemsize, max_size=int(np.prod(shape)) * dtype.itemsize))
    if dtype.kind in "biuf":
        a = np.frombuffer(raw, dtype=dtype).reshape(shape).copy() if raw else np.zeros(shape, dtype)
        if draw(st.booleans()) and dtype.kind in "iuf":      # often in range, so the evaluation itself runs
            a = (np.abs(np.nan_to_num(a.astype(np.float64))) % 17).astype(dtype)
    elif dtype.kind == "O":
        a = np.empty(shape, dtype=object)
    else:
        a = np.zeros(shape, dtype=dtype)
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    data = buf.getvalue()
    if kind == "damaged":
        cut = draw(st.integers(0, len(data)))
        data = data[:cut]
    return data


@given(npy_files())
@settings(max_examples=100, **SETTINGS)
def test_npy_sample_reader(tmp_path, capsys, data):
    f = tmp_path / "s.npy"
    f.write_bytes(data)
    before = snapshot(tmp_path)
    rc = cli(["eval", "--data", "digits", "--samples", f])
    assert rc in (0, 2), capsys.readouterr().err
    assert snapshot(tmp_path) == before
    record("fuzz examples run")


MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F", "HSV", "LAB"]


@st.composite
def image_bytes(draw):
    from PIL import Image

    mode = draw(st.sampled_from(MODES))
    w, h = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    if draw(st.integers(0, 2)) == 0:
        w = h = 8
    fmt = draw(st.sampled_from(["PNG", "TIFF", "JPEG", "BMP", "GIF"]))
    try:
        im = Image.frombytes(mode, (w, h), draw(st.binary(min_size=w * h * 8, max_size=w * h * 8)))
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        data = buf.getvalue()
    except (ValueError, OSError, KeyError):         # a mode this format cannot store: write raw bytes instead
        data = draw(st.binary(max_size=300))
    how = draw(st.sampled_from(["intact", "intact", "truncated", "flipped", "random"]))
    if how == "truncated":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "flipped" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
    elif how == "random":
        data = draw(st.binary(max_size=300))
    return data, draw(st.sampled_from([".png", ".jpg", ".jpeg", ".PNG"]))


@given(st.lists(image_bytes(), min_size=1, max_size=4))
@settings(max_examples=60, **SETTINGS)
def test_png_sample_reader(tmp_path, capsys, images):
    d = tmp_path / "pngs"
    d.mkdir(exist_ok=True)
    for p in d.iterdir():
        p.unlink()
    for i, (data, ext) in enumerate(images):
        (d / f"{i}{ext}").write_bytes(data)
    before = snapshot(tmp_path)
    rc = cli(["eval", "--data", "digits", "--samples", d])
    assert rc in (0, 2), capsys.readouterr().err
    assert snapshot(tmp_path) == before
    record("fuzz examples run")


@given(st.lists(image_bytes(), min_size=1, max_size=5), st.sampled_from(["1", "3"]), st.booleans(),
       st.sampled_from(["error", "skip"]), st.sampled_from(["4", "8", "3", "nan", "0"]))
@settings(max_examples=60, **SETTINGS)
def test_image_folder_loader(tmp_path, capsys, images, channels, labels, on_bad, size):
    d = tmp_path / "imgs"
    if d.exists():
        import shutil
        shutil.rmtree(d)
    for i, (data, ext) in enumerate(images):
        sub = d / (f"c{i % 2}" if labels else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i}{ext}").write_bytes(data)
    before = snapshot(tmp_path)
    rc = cli(["train", "--dry-run", "--runs-dir", tmp_path / "runs", *TINY, "train.max_steps=1", "data.name=folder",
              f"data.root={d}", f"data.image_size={size}", f"data.channels={channels}",
              f"data.labels={str(labels).lower()}", f"data.on_bad_image={on_bad}", "data.val_size=0"])
    assert rc in (0, 2), capsys.readouterr().err
    assert snapshot(tmp_path) == before
    record("fuzz examples run")
