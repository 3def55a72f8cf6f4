"""Feature network, the B1 sanity ranking, `genlab eval` on checkpoints and on sample files, bad inputs."""
import json

import numpy as np
import pytest
from PIL import Image

from genlab.cli import main
from genlab.eval import features as F
from genlab.eval.evaluate import evaluate_samples, sanity_samples


def test_feature_network_accuracy_and_determinism(tmp_path, monkeypatch):
    fx = F.load_featnet("digits")  # built on first use into the session cache
    assert fx.test_accuracy >= 0.985
    quick = F.FeatNetSpec(**{**F.SPECS["digits"].__dict__, "epochs": 2, "min_accuracy": 0.0})
    monkeypatch.setitem(F.SPECS, "digits", quick)
    a = F.train_featnet("digits", out_dir=tmp_path / "a", log=lambda *_: None)
    b = F.train_featnet("digits", out_dir=tmp_path / "b", log=lambda *_: None)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert a.test_accuracy == b.test_accuracy
    strict = F.FeatNetSpec(**{**quick.__dict__, "epochs": 1, "min_accuracy": 0.999})
    monkeypatch.setitem(F.SPECS, "digits", strict)
    with pytest.raises(F.FeatureError, match="below the 0.999 needed"):
        F.train_featnet("digits", out_dir=tmp_path / "c", log=lambda *_: None)
    with pytest.raises(F.FeatureError, match="genlab featnet train --data mnist"):
        F.load_featnet("mnist", cache_dir=tmp_path / "none")


def test_sanity_rows_rank_as_expected():
    res = {k: evaluate_samples(v)["fid_train"] for k, v in sanity_samples().items()}
    assert res["real test"] * 4 < res["per-class means"], res   # blurry means: far worse than real
    assert res["per-class means"] * 3 < min(res["Gaussian noise"], res["uniform noise"]), res  # noise worst
    assert res["per-class means"] < res["one mean image"], res   # a single repeated image collapses
    x = sanity_samples()["real test"]
    same = evaluate_samples(np.concatenate([x, x]))
    assert same["matched"]["floor"] == pytest.approx(res["real test"])


def test_eval_samples_npy_and_png_directory(tmp_path, capsys):
    x = sanity_samples()["real test"]
    np.save(tmp_path / "s.npy", x)
    assert main(["eval", "--samples", str(tmp_path / "s.npy"), "--data", "digits", "--json",
                 str(tmp_path / "r.json"), "--pairs", str(tmp_path / "pairs.png")]) == 0
    out = capsys.readouterr().out
    assert "FID vs train split (headline)" in out
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["n"] == 360 and r["dup_fraction"] == 0 and (tmp_path / "pairs.png").exists()
    d = tmp_path / "pngs"
    d.mkdir()
    for i in range(20):  # levels 0..16 written as 0..255 and read back
        Image.fromarray(np.round(x[i, 0].astype(float) / 16 * 255).astype(np.uint8)).save(d / f"{i:03d}.png")
    assert main(["eval", "--samples", str(d)]) == 0


@pytest.mark.parametrize("content,message", [
    (b"not a numpy file", "cannot read"),
    (np.zeros((5, 1, 7, 7), np.uint8), r"expected images of shape \(N, 1, 8, 8\)"),
    (np.full((5, 1, 8, 8), 40, np.uint8), r"levels 0\.\.16"),
    (np.full((5, 1, 8, 8), 0.5), "integer levels"),
])
def test_eval_rejects_bad_samples(tmp_path, capsys, content, message):
    import re

    path = tmp_path / "bad.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    assert main(["eval", "--samples", str(path)]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_eval_checkpoint_with_seeds(tmp_path, capsys):
    from conftest import TINY

    assert main(["train", *TINY, "train.max_steps=10", "--name", "e", "--runs-dir", str(tmp_path),
                 "--no-progress"]) == 0
    assert main(["eval", "--ckpt", str(tmp_path / "e"), "--n", "60", "--sampler", "dpmpp-2m", "--steps", "4",
                 "--seeds", "2", "--json", str(tmp_path / "e.json")]) == 0
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["nfe"] == 4 and r["seeds"] == 2 and len(r["per_seed"]) == 2 and "fid_train_std" in r
    assert r["seconds_per_1000"] > 0 and r["peak_memory_mb"] > 0
    assert main(["eval", "--ckpt", str(tmp_path / "e"), "--samples", "x.npy"]) == 2


def test_periodic_evaluation_during_training(tmp_path):
    import genlab.api as api
    from conftest import TINY

    api.train("digits_ddpm", TINY + ["train.max_steps=8", "train.eval_every=4", "train.eval_n=40",
                                     "sample.sampler=dpmpp-2m", "sample.steps=3"], name="pe", runs_root=tmp_path,
              progress=False)
    recs = [json.loads(x) for x in (tmp_path / "pe" / "metrics.jsonl").read_text().splitlines()]
    fids = [r for r in recs if "fid_train" in r]
    assert [r["step"] for r in fids] == [4, 8] and all(r["eval_nfe"] == 3 for r in fids)
