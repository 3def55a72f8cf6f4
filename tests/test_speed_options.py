"""Training options for speed and data: data.hflip, the GPU's lazy read-back (exercised on CPU), train.compile."""
import importlib
import json

import pytest
import torch
from safetensors.torch import load_file

import genlab.api as api
from genlab.train import checkpoint as ck
from genlab.train.loop import TrainingDiverged, flip_mask, hflip

from conftest import nan_loss_after

loop = importlib.import_module("genlab.train.loop")   # genlab.train is also the name of a function


def _losses(run):
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_flip_mask_is_a_function_of_seed_step_and_micro_batch():
    a = flip_mask(0, 5, 0, 64)
    assert torch.equal(a, flip_mask(0, 5, 0, 64))
    assert not torch.equal(a, flip_mask(0, 6, 0, 64)) and not torch.equal(a, flip_mask(1, 5, 0, 64))
    assert 16 < int(a.sum()) < 48
    # two processes taking rows 0:32 and 32:64 of the micro-batch see the one process's mask
    assert torch.equal(torch.cat([flip_mask(0, 5, 0, 64)[:32], flip_mask(0, 5, 0, 64)[32:]]), a)


def test_hflip_mirrors_exactly_the_masked_images():
    x = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4)
    out = hflip(x, torch.tensor([True, False]))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


def test_hflip_changes_training_and_stays_deterministic(tmp_path, tiny):
    args = tiny + ["train.max_steps=6", "train.log_every=1", "train.val_every=0"]
    plain = api.train("digits_ddpm", args, name="plain", runs_root=tmp_path, progress=False)
    f1 = api.train("digits_ddpm", args + ["data.hflip=true"], name="f1", runs_root=tmp_path, progress=False)
    f2 = api.train("digits_ddpm", args + ["data.hflip=true"], name="f2", runs_root=tmp_path, progress=False)
    assert _losses(f1.run_dir) == _losses(f2.run_dir) != _losses(plain.run_dir)


def test_lazy_read_back_gives_the_same_run(tmp_path, tiny, monkeypatch):
    """On a GPU the step reads nothing back (Trainer.lazy); forced on here, the run is the eager one."""
    args = tiny + ["train.max_steps=8", "train.log_every=3", "train.val_every=4", "train.ckpt_every=4"]
    eager = api.train("digits_ddpm", args, name="eager", runs_root=tmp_path, progress=False)
    monkeypatch.setattr(loop, "reads_back_lazily", lambda info: True)
    lazy = api.train("digits_ddpm", args, name="lazy", runs_root=tmp_path, progress=False)
    assert _losses(lazy.run_dir) == pytest.approx(_losses(eager.run_dir), rel=1e-6)
    a, b = (load_file(str(ck.resolve_checkpoint(r.run_dir) / "model.safetensors")) for r in (eager, lazy))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lazy_read_back_stops_a_diverged_run_before_saving_it(tmp_path, tiny, monkeypatch):
    nan_loss_after(monkeypatch, 7)
    monkeypatch.setattr(loop, "reads_back_lazily", lambda info: True)
    with pytest.raises(TrainingDiverged, match=r"at step 7 .*step_0000006"):
        api.train("digits_ddpm", tiny + ["train.max_steps=50", "train.ckpt_every=3", "train.val_every=0",
                                         "train.log_every=5"], name="nan", runs_root=tmp_path, progress=False)
    root = tmp_path / "nan" / "checkpoints"
    assert [p.name for p in ck.step_checkpoints(root)] == ["step_0000003", "step_0000006"]
    for v in load_file(str(root / "step_0000006" / "model.safetensors")).values():
        assert torch.isfinite(v).all()


def test_compiled_training_saves_plain_checkpoints_and_resumes(tmp_path, tiny):
    pytest.importorskip("torch._inductor")
    args = tiny + ["model.width=4", "model.channel_mults=[1]", "model.attn_resolutions=[]", "train.val_every=0"]
    res = api.train("digits_ddpm", args + ["train.max_steps=2", "train.compile=true"], name="c",
                    runs_root=tmp_path, progress=False)
    plain = api.train("digits_ddpm", args + ["train.max_steps=2"], name="p", runs_root=tmp_path, progress=False)
    a, b = (load_file(str(ck.resolve_checkpoint(r.run_dir) / "model.safetensors")) for r in (res, plain))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    more = api.train("digits_ddpm", args + ["train.max_steps=3"], name="c",
                     runs_root=tmp_path, progress=False, resume=True)
    assert more.state.step == 3
