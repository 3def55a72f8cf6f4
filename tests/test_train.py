"""The training loop: budgets, exact resume after SIGKILL, SIGTERM, NaN, checkpoints, config checks."""
import hashlib
import json
import math
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import genlab.api as api
from genlab.config import load_config
from genlab.train import checkpoint as ck
from genlab.train.loop import TrainingDiverged, data_indices, lr_at

from conftest import genlab_cmd, nan_loss_after


def _final(run_dir: Path) -> Path:
    return ck.resolve_checkpoint(run_dir)


def _tensors_equal(a: Path, b: Path):
    for name in ("model", "ema", "optimizer"):
        ta, tb = load_file(str(a / f"{name}.safetensors")), load_file(str(b / f"{name}.safetensors"))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}.{k} differs"


def test_training_reduces_loss_and_writes_run(tmp_path, tiny):
    res = api.train("digits_ddpm", tiny + ["train.max_steps=60", "train.val_every=30", "train.ckpt_every=30"],
                    name="r", runs_root=tmp_path, progress=False)
    losses = [h["loss"] for h in res.history if "loss" in h]
    assert res.state.step == 60 and res.state.samples_seen == 60 * 32
    assert losses[-1] < losses[0]
    run = tmp_path / "r"
    assert (run / "config.yaml").exists() and (run / "samples.png").exists()
    assert [p.name for p in ck.step_checkpoints(run / "checkpoints")] == ["step_0000030", "step_0000060"]
    assert ck.is_checkpoint(run / "checkpoints" / "best")
    state = ck.read_state(run / "checkpoints" / "step_0000060")
    assert state["step"] == 60 and state["data"]["levels"] == 17 and state["config"]["model"]["width"] == 8
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in recs) and all(math.isfinite(r.get("loss", 0)) for r in recs)


def test_data_order_is_a_function_of_position():
    a = data_indices(10, seed=3, start=0, count=25)
    assert torch.equal(torch.cat([data_indices(10, 3, 0, 7), data_indices(10, 3, 7, 18)]), a)
    assert sorted(a[:10].tolist()) == list(range(10)) and sorted(a[10:20].tolist()) == list(range(10))
    assert not torch.equal(a[:10], a[10:20])


def test_lr_schedule_warmup_then_cosine(tiny):
    cfg = load_config("digits_ddpm", tiny + ["train.max_steps=100", "train.lr=1e-3", "train.min_lr_ratio=0.1"])
    assert lr_at(cfg, 0, 0.0) == pytest.approx(1e-3 / 5)
    assert lr_at(cfg, 4, 0.04) == pytest.approx(1e-3)
    assert lr_at(cfg, 50, 0.5) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(cfg, 100, 1.0) == pytest.approx(1e-4)


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, tiny, subprocess_env):
    """A run killed with SIGKILL mid-training and resumed ends with weights, EMA and optimizer state identical
    to an uninterrupted run (data order and noise are functions of (seed, step); RNG states are restored)."""
    args = ["train", *tiny, "train.max_steps=150", "train.ckpt_every=10", "train.val_every=50",
            "train.num_threads=1", "--runs-dir", str(tmp_path), "--no-progress"]
    subprocess.run(genlab_cmd(*args, "--name", "full"), env=subprocess_env, check=True, capture_output=True)

    proc = subprocess.Popen(genlab_cmd(*args, "--name", "killed"), env=subprocess_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not ck.is_checkpoint(ckpts / "step_0000030"):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    at_kill = ck.step_checkpoints(ckpts)
    assert at_kill and ck.read_state(at_kill[-1])["step"] < 150, "the run finished before it could be killed"

    done = subprocess.run(genlab_cmd(*args, "--name", "killed", "--resume"), env=subprocess_env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout + done.stderr
    a, b = _final(tmp_path / "full"), _final(tmp_path / "killed")
    assert a.name == b.name == "step_0000150"
    _tensors_equal(a, b)


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_a_checkpoint_and_exits_with_128_plus_signal(tmp_path, tiny, subprocess_env, sig, status):
    """SIGTERM (143) and Ctrl-C / SIGINT (130; it used to be 0) save a checkpoint, then exit with the status
    shells and schedulers expect of an interrupted program."""
    args = ["train", *tiny, "train.max_steps=100000", "train.ckpt_every=1000", "train.num_threads=1",
            "--runs-dir", str(tmp_path), "--name", "t", "--no-progress"]
    proc = subprocess.Popen(genlab_cmd(*args), env=subprocess_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "t" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.05)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == status, out
    assert "interrupted" in out and "saved" in out and "Traceback" not in out
    last = ck.step_checkpoints(tmp_path / "t" / "checkpoints")[-1]
    assert 0 < ck.read_state(last)["step"] < 100000


def test_nan_loss_stops_with_the_step_and_keeps_checkpoints(tmp_path, tiny, monkeypatch):
    nan_loss_after(monkeypatch, 7)
    with pytest.raises(TrainingDiverged, match=r"at step 7 .*step_0000006"):
        api.train("digits_ddpm", tiny + ["train.max_steps=50", "train.ckpt_every=3", "train.val_every=0"],
                  name="nan", runs_root=tmp_path, progress=False)
    root = tmp_path / "nan" / "checkpoints"
    assert [p.name for p in ck.step_checkpoints(root)] == ["step_0000003", "step_0000006"]
    for v in load_file(str(root / "step_0000006" / "model.safetensors")).values():
        assert torch.isfinite(v).all()


STATE = {"config": {}, "time_used": 0.0, "data": {}, "rng": {}}


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpts" / "step_0000001"
    ck.save_checkpoint(path, model={"w": torch.ones(3)}, ema={"w": torch.ones(3)}, state={**STATE, "step": 1})
    before = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()

    real = ck.save_file
    def failing(tensors, filename, *a, **k):  # the disk fills up after the first file
        if filename.endswith("ema.safetensors"):
            raise OSError("No space left on device")
        return real(tensors, filename, *a, **k)

    monkeypatch.setattr(ck, "save_file", failing)
    with pytest.raises(ck.CheckpointWriteError, match=r"no space left .*newest intact checkpoint is .*step_0000001"):
        ck.save_checkpoint(path, model={"w": torch.zeros(3)}, ema={"w": torch.zeros(3)}, state={**STATE, "step": 2})
    assert hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest() == before
    assert ck.load_checkpoint(path, weights=("model",))["state"]["step"] == 1
    assert ck.resolve_checkpoint(tmp_path / "ckpts", need=("model",)) == path
    assert not list((tmp_path / "ckpts").glob(".*")), "the failed write removed its temporary directory"


def test_loading_never_executes_pickled_code(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "step_0000001"
    bad.mkdir()
    (bad / "state.json").write_text(json.dumps({**STATE, "step": 1}))
    (bad / "model.safetensors").write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(ck.CheckpointError, match="model.safetensors cannot be read"):
        ck.load_checkpoint(bad, weights=("model",))
    assert not marker.exists()


def test_resume_refuses_a_changed_model(tmp_path, tiny):
    api.train("digits_ddpm", tiny + ["train.max_steps=3"], name="m", runs_root=tmp_path, progress=False)
    with pytest.raises(ck.CheckpointError, match=r"model\.width: checkpoint has 8, config has 16"):
        api.train("digits_ddpm", tiny + ["train.max_steps=6", "model.width=16"], name="m", resume=True,
                  runs_root=tmp_path, progress=False)


def test_time_budget_counts_and_resume_gets_the_remainder(tmp_path, tiny):
    over = tiny + ["train.time_budget=1s", "train.val_every=0"]
    r1 = api.train("digits_ddpm", over, name="tb", runs_root=tmp_path, progress=False)
    assert 1.0 <= r1.state.time_used < 3.0
    r2 = api.train("digits_ddpm", over, name="tb", runs_root=tmp_path, resume=True, progress=False)
    assert r2.state.step == r1.state.step, "budget already used: nothing more to do"
    r3 = api.train("digits_ddpm", tiny + ["train.time_budget=2s", "train.val_every=0"], name="tb",
                   runs_root=tmp_path, resume=True, progress=False)
    assert r3.state.step > r1.state.step and 2.0 <= r3.state.time_used < 4.0


def test_run_directory_is_not_overwritten(tmp_path, tiny):
    api.train("digits_ddpm", tiny + ["train.max_steps=2"], name="x", runs_root=tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="--resume.*--force"):
        api.train("digits_ddpm", tiny + ["train.max_steps=2"], name="x", runs_root=tmp_path, progress=False)
    api.train("digits_ddpm", tiny + ["train.max_steps=2"], name="x", runs_root=tmp_path, force=True,
              progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        api.train("digits_ddpm", tiny + ["train.max_steps=2"], name="nope", runs_root=tmp_path, resume=True,
                  progress=False)


def test_grad_accumulation_matches_full_batch_shapes(tmp_path, tiny):
    res = api.train("digits_ddpm", tiny + ["train.max_steps=4", "train.grad_accum=2"], name="acc",
                    runs_root=tmp_path, progress=False)
    assert res.state.samples_seen == 4 * 32
