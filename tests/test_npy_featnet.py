"""Sample .npy files that are not what `genlab sample --out` writes, and damaged feature-network caches that are
rebuilt instead of crashing."""
import json
import re
import shutil

import numpy as np
import pytest
import torch

from genlab.eval import attributes as A
from genlab.eval import evaluate
from genlab.eval import features as F


@pytest.fixture
def digits_ref(monkeypatch):
    """The digits reference without its feature network: shape (1, 8, 8), levels 0..16."""
    monkeypatch.setattr(evaluate, "reference", lambda data="digits", root=None: {"shape": (1, 8, 8), "levels": 17})


GOOD = np.full((4, 1, 8, 8), 4, np.uint8)


def test_a_file_that_is_not_npy(tmp_path, digits_ref):
    path = tmp_path / "s.npy"
    path.write_bytes(b"PK\x03\x04 a zip archive")
    with pytest.raises(ValueError, match=r"s\.npy is not a \.npy file \(it starts with b'PK\\x03\\x04 a zip"):
        evaluate.load_samples(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"is not a \.npy file \(it is empty\).*genlab sample --out samples\.npy"):
        evaluate.load_samples(path)


@pytest.mark.parametrize("array,kind", [
    (np.full((3, 1, 8, 8), "4"), "string"),
    (np.full((3, 1, 8, 8), b"4"), "bytes"),
    (np.full((3, 1, 8, 8), 4, object), "object"),
    (np.zeros((3, 1, 8, 8), [("a", np.uint8), ("b", np.uint8)]), "structured/void"),
    (np.full((3, 1, 8, 8), 4 + 0j), "complex"),
    (np.ones((3, 1, 8, 8), bool), "boolean"),
    (np.full((3, 1, 8, 8), np.datetime64("2024-01-01")), "datetime"),
])
def test_dtypes_that_cannot_hold_levels(tmp_path, digits_ref, array, kind):
    path = tmp_path / "s.npy"
    np.save(path, array, allow_pickle=True)
    pattern = (rf"dtype {re.escape(str(array.dtype))} \({re.escape(kind)}\).*integer levels 0\.\.16.*"
               r"genlab sample --out samples\.npy")
    with pytest.raises(ValueError, match=pattern):
        evaluate.load_samples(path)
    with pytest.raises(ValueError, match=pattern):
        evaluate.check_samples(array)                               # arrays passed in directly, too


def test_integral_floats_and_integers_are_accepted(tmp_path, digits_ref):
    for a in (GOOD, GOOD.astype(np.float32), GOOD.astype(np.int64)):
        np.save(tmp_path / "s.npy", a)
        out = evaluate.load_samples(tmp_path / "s.npy")
        assert out.dtype == np.uint8 and np.array_equal(out, GOOD)


def test_damaged_npy_header_and_data(tmp_path, digits_ref):
    np.save(tmp_path / "s.npy", GOOD)
    data = (tmp_path / "s.npy").read_bytes()
    for n, what in [(8, "header"), (40, "header"), (len(data) - 10, "damaged or truncated")]:
        (tmp_path / "t.npy").write_bytes(data[:n])
        with pytest.raises(ValueError, match=rf"t\.npy.*{what}.*genlab sample --out samples\.npy"):
            evaluate.load_samples(tmp_path / "t.npy")
    (tmp_path / "h.npy").write_bytes(data.replace(b"'descr'", b"'dexxx'"))      # a header dict without descr
    with pytest.raises(ValueError, match=r"h\.npy: its \.npy header is damaged"):
        evaluate.load_samples(tmp_path / "h.npy")


# feature-network caches

QUICK = {"epochs": 1, "batch_size": 512, "min_accuracy": 0.0}     # three steps: well under a second


@pytest.fixture
def quick_digits(monkeypatch):
    """A digits network of three training steps, accepted at any accuracy."""
    monkeypatch.setitem(F.SPECS, "digits", F.FeatNetSpec(**{**F.SPECS["digits"].__dict__, **QUICK}))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """An intact quick digits cache, built once for the module."""
    d = tmp_path_factory.mktemp("featnet") / "digits"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(F.SPECS, "digits", F.FeatNetSpec(**{**F.SPECS["digits"].__dict__, **QUICK}))
        F.train_featnet("digits", out_dir=d, log=lambda *_: None)
    return d


def _mismatched_tensors(d):
    from safetensors.torch import save_file

    small = F.FeatNet(F.FeatNetSpec(**{**F.SPECS["digits"].__dict__, "width": 4}))
    save_file(small.state_dict(), str(d / "model.safetensors"))


DAMAGE = {
    "truncated model": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:500]),
    "garbage model": lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage" * 20),
    "empty model": lambda d: (d / "model.safetensors").write_bytes(b""),
    "tensors of another net": _mismatched_tensors,
    "empty info": lambda d: (d / "info.json").write_text(""),
    "garbage info": lambda d: (d / "info.json").write_bytes(b"\xff\xfe{not json"),
    "info without keys": lambda d: (d / "info.json").write_text(json.dumps({"data": "digits"})),
    "info not a dict": lambda d: (d / "info.json").write_text("[1, 2]"),
    "accuracy not a number": lambda d: (d / "info.json").write_text('{"data": "digits", "test_accuracy": "high"}'),
    "info missing": lambda d: (d / "info.json").unlink(),
}


def check_rebuilt(d, logs, fx):
    """The rebuild was announced, the extractor works, and the cache now reads cleanly."""
    assert any(f"cached digits feature network in {d} cannot be read" in m and "rebuilding it" in m
               for m in logs), logs
    feats, probs = fx(np.zeros((2, 1, 8, 8), np.uint8), 17)
    assert feats.shape == (2, 128) and np.allclose(probs.sum(1), 1)
    logs.clear()
    again = F.load_featnet("digits", cache_dir=d, log=logs.append)
    assert not logs and again.test_accuracy == fx.test_accuracy


def test_damaged_digits_cache_is_retrained(tmp_path, quick_digits, pristine):
    d = tmp_path / "digits"
    shutil.copytree(pristine, d)
    DAMAGE["truncated model"](d)
    logs = []
    check_rebuilt(d, logs, F.load_featnet("digits", cache_dir=d, log=logs.append))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_damage_is_rebuilt(tmp_path, monkeypatch, quick_digits, pristine, damage):
    """Each kind of damage leads to a rebuild into the same directory (the training itself stood in for by a
    copy of the intact cache, to keep this fast)."""
    def retrain(data, *, root=None, out_dir=None, log=print):
        shutil.copytree(pristine, out_dir, dirs_exist_ok=True)
        return F.load_featnet(data, cache_dir=out_dir, log=log)

    d = tmp_path / "digits"
    shutil.copytree(pristine, d)
    DAMAGE[damage](d)
    monkeypatch.setattr(F, "train_featnet", retrain)
    logs = []
    check_rebuilt(d, logs, F.load_featnet("digits", cache_dir=d, log=logs.append))


def test_damaged_cache_of_another_dataset_is_rebuilt(tmp_path, monkeypatch):
    d = tmp_path / "mnist"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"junk")
    calls = []
    monkeypatch.setattr(F, "train_featnet", lambda data, **kw: calls.append((data, kw["out_dir"])) or "rebuilt")
    logs = []
    assert F.load_featnet("mnist", cache_dir=d, log=logs.append) == "rebuilt"
    assert calls == [("mnist", d)] and "rebuilding it" in logs[0]


def test_save_net_replaces_both_files_atomically(tmp_path, monkeypatch):
    import os

    replaced = []
    real = os.replace
    monkeypatch.setattr(F.os, "replace", lambda src, dst: (replaced.append(os.path.basename(dst)), real(src, dst)))
    F.save_net(torch.nn.Linear(2, 2), {"a": 1}, tmp_path / "net")
    assert replaced == ["model.safetensors", "info.json"]
    assert sorted(p.name for p in (tmp_path / "net").iterdir()) == ["info.json", "model.safetensors"]
    assert json.loads((tmp_path / "net" / "info.json").read_text()) == {"a": 1}


def test_damaged_attribute_classifier_cache_is_rebuilt(tmp_path, monkeypatch):
    d = tmp_path / "attrs"
    info = {"image_size": 16, "test_accuracy": {a: 1.0 for a in A.ATTRIBUTES}}
    F.save_net(A.AttributeNet(), info, d)
    monkeypatch.setattr(A, "train_attribute_net", lambda size, **kw: ("rebuilt", size, kw["out_dir"]))
    logs = []
    clf = A.load_attribute_classifier(16, cache_dir=d, log=logs.append)   # intact: loaded
    assert isinstance(clf, A.AttributeClassifier) and not logs
    for damage in (lambda: (d / "model.safetensors").write_bytes(b"junk"),
                   lambda: (d / "info.json").write_text("{}")):
        F.save_net(A.AttributeNet(), info, d)
        damage()
        assert A.load_attribute_classifier(16, cache_dir=d, log=logs.append) == ("rebuilt", 16, d)
        assert "cached shapes attribute classifier" in logs[-1] and "rebuilding it" in logs[-1]
