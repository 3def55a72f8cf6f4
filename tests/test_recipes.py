"""Every shipped recipe for real data sizes trains a few steps, samples and evaluates on generated data in its
format: MNIST-style IDX files, a CIFAR-10 binary archive, a folder of PNGs. The networks are the recipes' own
sizes (only the batch, the steps and the number of samples are small); the feature networks behind FID are
trained here on the generated data for one epoch with their accuracy gate off (that gate is tested elsewhere)."""
import gzip
import io
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import genlab.api as api
from genlab.config import load_config
from genlab.data import load_dataset
from genlab.eval import features as F
from genlab.eval.likelihood import bits_per_dim
from genlab.report.compare import load_spec
from genlab.data import from_model
from genlab.eval.evaluate import evaluate_samples
from genlab.runs import load_data, load_run

MNIST_RECIPES = ["mnist_ddpm", "mnist_cfg", "mnist_pixelcnn", "mnist_transformer", "mnist_any_order",
                 "mnist_oneshot", "mnist_flow", "mnist_masked", "mnist_gan", "mnist_vae", "mnist_nflow"]
FAST = ["train.max_steps=2", "train.time_budget=null", "train.batch_size=4", "train.val_every=0",
        "train.ckpt_every=0", "train.warmup_steps=1", "train.log_every=1", "train.num_threads=0", "sample.n=4"]
# sampling options that keep a few samples cheap, per method
SAMPLE = {"diffusion": {"steps": 2}, "flow_matching": {"steps": 2}, "masked_diffusion": {"steps": 2},
          "any_order": {"k": 196}, "autoregressive": {}, "oneshot": {}, "gan": {}, "vae": {},
          "normalizing_flow": {}}


def shapes_images(n: int, size: int, channels: int, seed: int) -> np.ndarray:
    """n uint8 images (n, size, size, channels): a bright rectangle on a dark background, class = its quadrant."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size, channels), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    for k in range(n):
        q = labels[k] % 4
        i0, j0 = (q // 2) * size // 2, (q % 2) * size // 2
        h, w = rng.integers(size // 6, size // 2, 2)
        out[k, i0:i0 + h, j0:j0 + w] = rng.integers(120, 256, channels)
    return out, labels.astype(np.uint8)


def idx(arr: np.ndarray) -> bytes:
    import struct

    return gzip.compress(struct.pack(">I", 0x0800 + arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
                         + arr.tobytes())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """MNIST-style IDX files (also used as Fashion-MNIST), a CIFAR-10 archive and a PNG folder."""
    root = tmp_path_factory.mktemp("recipe-data")
    for part, n, seed in (("train", 160, 0), ("t10k", 40, 1)):
        x, y = shapes_images(n, 28, 1, seed)
        for name in ("mnist", "fashion-mnist"):
            (root / name).mkdir(exist_ok=True)
            (root / name / f"{part}-images-idx3-ubyte.gz").write_bytes(idx(x[..., 0]))
            (root / name / f"{part}-labels-idx1-ubyte.gz").write_bytes(idx(y))
    members = {}
    for k, name in enumerate([f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]):
        x, y = shapes_images(30, 32, 3, 10 + k)
        members[name] = b"".join(bytes([int(y[r])]) + x[r].transpose(2, 0, 1).tobytes() for r in range(len(x)))
    from genlab.data.cifar import CLASS_NAMES

    members["batches.meta.txt"] = "\n".join(CLASS_NAMES).encode() + b"\n"
    (root / "cifar10").mkdir()
    with tarfile.open(root / "cifar10" / "cifar-10-binary.tar.gz", "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    folder = root / "pictures"
    folder.mkdir()
    x, _ = shapes_images(40, 48, 3, 20)
    for k, im in enumerate(x):
        Image.fromarray(im).save(folder / f"p{k:03d}.png")
    return root


@pytest.fixture(scope="module")
def featnets(data_dir, tmp_path_factory):
    """One-epoch feature networks for the generated MNIST, Fashion-MNIST and CIFAR-10, gate off."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GENLAB_CACHE", str(tmp_path_factory.mktemp("featnet-cache")))
    mp.setenv("GENLAB_DATA", str(data_dir))
    for name in ("mnist", "fashion-mnist", "cifar10"):
        mp.setitem(F.SPECS, name, replace(F.SPECS[name], epochs=1, min_accuracy=0.0, batch_size=32))
        F.train_featnet(name, log=lambda *a: None)
    from genlab.eval import evaluate

    evaluate.reference.cache_clear()
    yield
    evaluate.reference.cache_clear()
    mp.undo()


def train_sample_evaluate(recipe: str, overrides: list, tmp_path: Path, evaluate_fid: bool = True):
    res = api.train(recipe, overrides + FAST, name="r", runs_root=tmp_path, progress=False)
    assert res.state.step == 2
    run = load_run(tmp_path / "r")
    opts = SAMPLE[run.config.method]
    x, nfe, _ = api.sample(tmp_path / "r", n=4, batch_size=4, progress=False, **opts)
    assert x.shape[0] == 4 and tuple(x.shape[1:]) == tuple(run.state["data"]["shape"]) and nfe >= 1
    held_out = "val" if run.config.data.name == "folder" else "test"
    held = load_data(run.config, held_out).head(8)
    if run.method.likelihood != "none":
        b = bits_per_dim(run.method, run.model, held, batch_size=8, draws=1)
        assert np.isfinite(b["bpd"]) and b["bpd"] > 0
    if evaluate_fid:                 # the evaluation of `genlab eval`, on the samples drawn above
        ev = evaluate_samples(from_model(x, run.state["data"]["levels"]).numpy(), run.state["data"]["name"])
        assert np.isfinite(ev["fid_train"]) and ev["n"] == 4
    return run


@pytest.mark.parametrize("recipe", MNIST_RECIPES)
def test_mnist_recipes_train_sample_and_evaluate(recipe, data_dir, featnets, tmp_path):
    cheap = ["flow.likelihood_steps=2"] if recipe == "mnist_flow" else []   # its ODE likelihood: 2 steps here
    run = train_sample_evaluate(recipe, [f"data.root={data_dir / 'mnist'}", "data.val_size=20", *cheap], tmp_path)
    assert tuple(run.state["data"]["shape"]) == (1, 28, 28) and run.state["data"]["levels"] == 256


def test_fashion_recipe(data_dir, featnets, tmp_path):
    train_sample_evaluate("fashion_ddpm", [f"data.root={data_dir / 'fashion-mnist'}", "data.val_size=20"], tmp_path)


def test_cifar10_recipe_with_flips(data_dir, featnets, tmp_path):
    cfg = load_config("cifar10_ddpm")
    assert cfg.data.hflip
    run = train_sample_evaluate("cifar10_ddpm", [f"data.root={data_dir / 'cifar10'}", "data.val_size=20"], tmp_path)
    assert tuple(run.state["data"]["shape"]) == (3, 32, 32)


@pytest.mark.parametrize("size", [32, 64])
def test_folder_recipe_at_32_and_64_px(size, data_dir, tmp_path):
    over = [f"data.root={data_dir / 'pictures'}", f"data.image_size={size}", f"data.cache_dir={tmp_path / 'c'}"]
    if size == 64:
        over.append("model.channel_mults=[1,2,2,2,2]")
    run = train_sample_evaluate("folder_ddpm", over, tmp_path, evaluate_fid=False)
    assert tuple(run.state["data"]["shape"]) == (3, size, size)


def test_compare_mnist_spec_resolves_every_method(data_dir):
    spec = load_spec("compare_mnist")
    from genlab.report.compare import method_overrides

    names = set()
    for m in spec.methods:
        cfg = load_config(m.config, method_overrides(spec, m) + [f"data.root={data_dir / 'mnist'}"])
        names.add(cfg.method)
        assert cfg.data.name == "mnist"
    assert names == {"oneshot", "autoregressive", "any_order", "diffusion", "flow_matching", "masked_diffusion",
                     "gan", "vae", "normalizing_flow"}
    assert next(m for m in spec.methods if m.name == "oneshot").budget == "5m"
