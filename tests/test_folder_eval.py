"""Evaluation of image-folder runs: the folder's own feature network (rotation prediction, or its classes with
data.labels=true), its accuracy gate on the val split, its cache keyed by the folder's listing, and
`genlab eval` of a folder run end to end. The step budget is cut to a few dozen steps here (the real budget is
measured in the module's docstring); the images are made so that rotation is learnable ("sky" at the top) or
impossible (flat colours)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import genlab.api as api
from genlab.cli import main
from genlab.eval import evaluate
from genlab.eval import folder_featnet as FF
from genlab.eval.features import FeatureError


def upright_images(n, size=16, seed=0):
    """A bright band along the top edge and a random block below it: which way is up is plain to see."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, size, size, 3), np.uint8)
    x[:, : size // 4] = 220
    for k in range(n):
        i, j = rng.integers(size // 3, size - 4, 2)
        x[k, i:i + 3, j:j + 3] = rng.integers(60, 200, 3)
    return x


def flat_images(n, size=16, seed=0):
    """Every image one flat colour: the same under every rotation, so no network can tell them apart."""
    rng = np.random.default_rng(seed)
    return np.broadcast_to(rng.integers(0, 256, (n, 1, 1, 3)).astype(np.uint8), (n, size, size, 3)).copy()


def write_folder(root, images, sub=lambda k: ""):
    root.mkdir(parents=True, exist_ok=True)
    for k, im in enumerate(images):
        d = root / sub(k)
        d.mkdir(exist_ok=True)
        Image.fromarray(im).save(d / f"im{k:03d}.png")
    return root


@pytest.fixture(autouse=True)
def quick(monkeypatch, tmp_path):
    """A fresh feature-network cache per test and a budget of a few dozen steps."""
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(FF, "STEPS", 60)
    monkeypatch.setattr(FF, "MIN_STEPS", 60)
    evaluate.reference.cache_clear()
    yield
    evaluate.reference.cache_clear()


def folder(root, size=16, **kw):
    return FF.FolderData(root=str(root), image_size=size, channels=3, cache_dir=str(root.parent / "dc"), **kw)


def test_rotation_network_trains_passes_its_gate_and_is_reused(tmp_path, monkeypatch):
    fd = folder(write_folder(tmp_path / "pics", upright_images(120)))
    logs = []
    fx = FF.load_folder_featnet(fd, log=logs.append)
    assert fx.task == "rotation" and fx.spec.classes == 4
    assert fx.val_accuracy >= FF.min_accuracy(4) == 0.5
    assert any("rotation prediction" in m for m in logs) and any("val accuracy" in m for m in logs)
    d = FF.featnet_dir(FF.identity(fd)[0])
    assert d.parent.parent == tmp_path / "cache" / "featnets" or d.parent.parent.name == "featnets"
    info = json.loads((d / "info.json").read_text())
    assert info["train_images"] + info["val_images"] == 120 and info["task"] == "rotation"
    feats, _ = fx(fd.load("val").x, 256)
    assert feats.shape == (info["val_images"], 128) and np.isfinite(feats).all()

    def no_training(*a, **k):
        raise AssertionError("retrained although the folder did not change")

    monkeypatch.setattr(FF, "train_folder_featnet", no_training)
    again = FF.load_folder_featnet(fd, log=logs.append)
    assert again.val_accuracy == fx.val_accuracy


def test_a_changed_folder_gets_a_new_network(tmp_path):
    root = write_folder(tmp_path / "pics", upright_images(40))
    fd = folder(root)
    before = FF.featnet_dir(FF.identity(fd)[0])
    Image.fromarray(upright_images(1, seed=5)[0]).save(root / "new.png")
    after = FF.featnet_dir(FF.identity(fd)[0])
    assert after != before
    st = (root / "im000.png").stat()
    os.utime(root / "im000.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert FF.featnet_dir(FF.identity(fd)[0]) not in (before, after)
    assert FF.featnet_dir(FF.identity(folder(root, size=8))[0]) != FF.featnet_dir(FF.identity(fd)[0])


def test_images_alike_under_rotation_are_refused_and_the_refusal_is_kept(tmp_path, monkeypatch):
    fd = folder(write_folder(tmp_path / "flat", flat_images(100)))
    with pytest.raises(FeatureError, match=r"4 rotations.*below the 0\.50 needed.*Fix: add more, varied images"):
        FF.load_folder_featnet(fd, log=lambda m: None)
    monkeypatch.setattr(FF, "train_folder_featnet", lambda *a, **k: pytest.fail("retrained"))
    with pytest.raises(FeatureError, match="check repeats without retraining"):
        FF.load_folder_featnet(fd, log=lambda m: None)


def test_class_subfolders_give_a_supervised_network(tmp_path):
    x = upright_images(120)
    x[60:, : 4] = 0            # class b: the band at the bottom instead
    x[60:, -4:] = 220
    root = write_folder(tmp_path / "cls", x, sub=lambda k: "a" if k < 60 else "b")
    fd = folder(root, labels=True)
    fx = FF.load_folder_featnet(fd, log=lambda m: None)
    assert fx.task == "classes" and fx.spec.classes == 2
    assert FF.min_accuracy(2) == 0.75 and fx.val_accuracy >= 0.75


def test_too_few_val_images_is_a_clear_error(tmp_path):
    fd = folder(write_folder(tmp_path / "few", upright_images(30)))     # 10% val: 3 images
    with pytest.raises(FeatureError, match=r"val split of 3 image\(s\).*at least 10.*data\.val_size"):
        FF.load_folder_featnet(fd, log=lambda m: None)


def test_missing_network_without_build_names_the_command(tmp_path):
    fd = folder(write_folder(tmp_path / "pics", upright_images(40)))
    with pytest.raises(FeatureError, match="genlab featnet train --data folder --root"):
        FF.load_folder_featnet(fd, build=False)


def test_genlab_eval_of_a_folder_run(tmp_path, capsys):
    root = write_folder(tmp_path / "pics", upright_images(120))
    res = api.train("folder_ddpm", [f"data.root={root}", "data.image_size=16", f"data.cache_dir={tmp_path / 'dc'}",
                                    "model.width=8", "model.channel_mults=[1,2]", "model.num_res_blocks=1",
                                    "model.attn_resolutions=[]", "model.num_heads=1", "train.max_steps=2",
                                    "train.time_budget=null", "train.batch_size=8", "train.val_every=0",
                                    "train.ckpt_every=0", "train.warmup_steps=1", "train.log_every=1",
                                    "train.num_threads=0", "sample.n=4"],
                    name="f", runs_root=tmp_path / "runs", progress=False)
    assert res.state.step == 2
    main(["eval", "--ckpt", str(tmp_path / "runs" / "f"), "--n", "20", "--steps", "2", "--bpd"])
    out = capsys.readouterr().out
    assert "feature network val accuracy (rotation prediction)" in out
    assert "val split bits/dim" in out and "FID vs train split" in out
    assert "class entropy" not in out and "feature network test accuracy" not in out
    # the same folder given by flags: genlab eval --samples DIR --data folder
    api.sample(tmp_path / "runs" / "f", n=20, out=tmp_path / "s.npy", steps=2, progress=False)
    main(["eval", "--samples", str(tmp_path / "s.npy"), "--data", "folder", "--root", str(root),
          "--image-size", "16"])
    assert "feature network val accuracy (rotation prediction)" in capsys.readouterr().out
