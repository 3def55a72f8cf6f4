"""The command line and its Python equivalents: train, sample (grid, npy, directory, process), errors."""
import numpy as np
import pytest
import torch
from PIL import Image

import genlab.api as api
from genlab.train import checkpoint as ck
from genlab.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import TINY

    root = tmp_path_factory.mktemp("runs")
    assert main(["train", *TINY, "train.max_steps=20", "--name", "cli", "--runs-dir", str(root),
                 "--no-progress"]) == 0
    return root / "cli"


def test_train_writes_a_run(run):
    assert (run / "config.yaml").exists() and (run / "samples.png").exists()
    assert (run / "checkpoints" / "step_0000020" / "ema.safetensors").exists()


def test_sample_grid_npy_dir_and_process(run, tmp_path, capsys):
    assert main(["sample", "--ckpt", str(run), "--n", "6", "--steps", "4", "--out", str(tmp_path / "g.png")]) == 0
    assert "4 network evaluations per sample" in capsys.readouterr().out
    assert Image.open(tmp_path / "g.png").size[0] > 8
    assert main(["sample", "--ckpt", str(run), "--n", "5", "--steps", "3", "--sampler", "ddpm",
                 "--out", str(tmp_path / "s.npy")]) == 0
    arr = np.load(tmp_path / "s.npy")
    assert arr.shape == (5, 1, 8, 8) and arr.dtype == np.uint8 and arr.max() <= 16
    assert main(["sample", "--ckpt", str(run / "checkpoints" / "step_0000020"), "--n", "3", "--steps", "2",
                 "--seed", "10", "--out", str(tmp_path / "each") + "/"]) == 0
    assert sorted(p.name for p in (tmp_path / "each").glob("*.png")) == ["000010.png", "000011.png", "000012.png"]
    assert Image.open(tmp_path / "each" / "000010.png").size == (8, 8)
    assert main(["sample", "--ckpt", str(run), "--n", "3", "--steps", "5", "--process",
                 "--out", str(tmp_path / "p.png")]) == 0
    assert Image.open(tmp_path / "p.png").size[1] > Image.open(tmp_path / "p.png").size[0] / 5


def test_per_sample_seeds_reproduce_one_sample_alone(run):
    x, _, _ = api.sample(run, n=5, steps=4, seed=100, batch_size=2, progress=False)
    one, _, _ = api.sample(run, n=1, steps=4, seed=103, progress=False)
    assert torch.equal(x[3:4], one)
    x_ddpm, _, _ = api.sample(run, n=4, sampler="ddpm", steps=4, seed=7, batch_size=4, progress=False)
    one, _, _ = api.sample(run, n=1, sampler="ddpm", steps=4, seed=9, progress=False)
    assert torch.equal(x_ddpm[2:3], one)


def test_sample_uses_ema_or_raw_weights(run):
    a, _, _ = api.sample(run, n=2, steps=3, progress=False)
    b, _, _ = api.sample(run, n=2, steps=3, use_ema=False, progress=False)
    assert not torch.equal(a, b)


def test_errors_are_clear(run, tmp_path, capsys):
    assert main(["train", "train.lrr=1", "--name", "x", "--runs-dir", str(tmp_path)]) == 2
    assert "did you mean 'train.lr'" in capsys.readouterr().err
    assert main(["train", "train.batch_size=-3", "--runs-dir", str(tmp_path)]) == 2
    assert "train.batch_size=-3 must be an integer in 1..1048576" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(run), "--n", "2", "--out", str(tmp_path / "x.gif")]) == 2
    assert ".png" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(run), "--labels", "1", "2", "--n", "2", "--out",
                 str(tmp_path / "y.png")]) == 2
    assert "unconditional" in capsys.readouterr().err


def test_dry_run_prints_resolved_config(capsys, tmp_path):
    assert main(["train", "--dry-run", "model.width=16", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "width: 16" in out and "parameters" in out and "1293 train images" in out
    assert not any(tmp_path.iterdir()), "a dry run writes nothing"


def test_checkpoint_config_mismatch_is_named(run, tmp_path):
    import json
    import shutil

    bad = tmp_path / "ck"
    shutil.copytree(run / "checkpoints" / "step_0000020", bad)
    st = json.loads((bad / "state.json").read_text())
    st["config"]["model"]["width"] = 16
    st["check"] = ck._state_digest(st)        # a consistent state.json that describes another model
    (bad / "state.json").write_text(json.dumps(st))
    with pytest.raises(Exception, match="does not match the model built from the config"):
        api.sample(bad, n=1, steps=2)


def test_configs_lists_recipes(capsys):
    assert main(["configs"]) == 0
    assert "digits_ddpm" in capsys.readouterr().out


def test_fast_samplers_from_the_cli(run, tmp_path, capsys):
    for sampler, steps, nfe in (("dpmpp-2m", 6, 6), ("heun", 4, 7), ("euler", 5, 5)):
        assert main(["sample", "--ckpt", str(run), "--n", "2", "--sampler", sampler, "--steps", str(steps),
                     "--out", str(tmp_path / f"{sampler}.png")]) == 0
        assert f"({nfe} network evaluations per sample)" in capsys.readouterr().out


def test_resume_needs_a_name_and_process_default_output(run, tmp_path, capsys, monkeypatch):
    assert main(["train", "--resume", "--runs-dir", str(tmp_path)]) == 2
    assert "--name" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--ckpt", str(run), "--n", "2", "--steps", "3", "--process"]) == 0
    assert (tmp_path / "process.png").exists() and not (tmp_path / "samples.png").exists()


def test_class_conditional_training_and_sampling(tmp_path):
    from conftest import TINY

    res = api.train("digits_ddpm", TINY + ["train.max_steps=10", "model.class_cond=true",
                                           "diffusion.cond_drop=0.2"], name="cc", runs_root=tmp_path,
                    progress=False)
    assert res.state.step == 10
    x, _, _ = api.sample(tmp_path / "cc", n=3, steps=3, labels=[0, 5, 9], progress=False)
    one, _, _ = api.sample(tmp_path / "cc", n=1, steps=3, labels=[5], seed=1, progress=False)
    assert torch.equal(x[1:2], one)
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.9"):
        api.sample(tmp_path / "cc", n=1, steps=2, labels=[10])
    default, _, _ = api.sample(tmp_path / "cc", n=4, steps=2, seed=16, progress=False)
    seven, _, _ = api.sample(tmp_path / "cc", n=1, steps=2, seed=17, labels=[7], progress=False)
    assert torch.equal(default[1:2], seven), "default label of sample i is (seed + i) mod K"


def test_class_cond_without_labels_is_refused(tmp_path):
    from PIL import Image as PILImage

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        PILImage.new("L", (10, 10), color=i * 20).save(folder / f"{i}.png")
    with pytest.raises(ValueError, match="needs labels"):
        api.train("digits_ddpm", ["data.name=folder", f"data.root={folder}", "data.image_size=8",
                                  "data.channels=1", "model.class_cond=true", "train.max_steps=1"],
                  name="f", runs_root=tmp_path, progress=False)


def test_bugs_keep_their_traceback_and_genlab_debug_shows_all(tmp_path, monkeypatch, capsys):
    """A user's mistake is one line; an internal bug (here: a RuntimeError, or a ValueError raised inside a
    library that genlab did not turn into its own message) keeps its traceback; GENLAB_DEBUG=1 shows every
    traceback."""
    import numpy as np

    assert main(["sample", "--ckpt", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err

    def bug(*a, **k):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(api, "sample", bug)
    with pytest.raises(RuntimeError, match="an internal bug"):
        main(["sample", "--ckpt", str(tmp_path)])
    monkeypatch.setattr(api, "sample", lambda *a, **k: np.reshape(np.zeros(3), (2, 2)))
    with pytest.raises(ValueError, match="cannot reshape"):
        main(["sample", "--ckpt", str(tmp_path)])
    monkeypatch.undo()
    monkeypatch.setenv("GENLAB_DEBUG", "1")
    with pytest.raises(Exception, match="does not exist"):
        main(["sample", "--ckpt", str(tmp_path / "missing")])
