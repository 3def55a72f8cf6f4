"""Fault injection (issue 11): a chain of 20 SIGKILLs over one short run — 10 at seeded training steps, 10
inside checkpoint writes, through the GENLAB_FAULT hook — each followed by a resume, ends bit-identical to an
uninterrupted run; a checkpoint write that hits a full disk part-way leaves the previous checkpoint readable and
no temporary files; a resume replays no metrics twice; a finished run says so."""
import json
import random
import signal

import pytest
import torch
from safetensors.torch import load_file

import genlab.api as api
from genlab import faults
from genlab.cli import main
from genlab.train import checkpoint as ck

from conftest import record, run_child

STEPS = 48
ARGS = ["model.width=8", "model.channel_mults=[1]", "model.num_res_blocks=1", "model.attn_resolutions=[]",
        "model.num_heads=1", "diffusion.timesteps=50", "train.batch_size=16", "train.time_budget=null",
        "train.warmup_steps=3", "train.log_every=4", "sample.steps=2", "sample.n=4", f"train.max_steps={STEPS}",
        "train.ckpt_every=3", "train.val_every=12", "train.keep_last=2", "train.num_threads=1"]
CKPT_POINTS = ["ckpt.model", "ckpt.ema", "ckpt.optimizer", "ckpt.state", "ckpt.rename"]


@pytest.fixture(scope="module")
def ctx(forkserver):
    return forkserver


def _run(ctx, tmp_path, name, *extra, fault=None):
    argv = ["train", *ARGS, "--name", name, "--runs-dir", str(tmp_path / "runs"), "--no-progress", *extra]
    return run_child(ctx, argv, tmp_path / f"{name}.log", fault)


def _kill_plan(seed=0):
    """10 kills at seeded steps (increasing, so the chain moves on) interleaved with 10 inside checkpoint
    writes (the first write after each start, at a seeded point of the write)."""
    rng = random.Random(seed)
    steps = sorted(rng.sample(range(2, STEPS - 1), 10))
    plan = []
    for s in steps:
        plan.append(f"kill@step.{s}")
        plan.append(f"kill@{rng.choice(CKPT_POINTS)}#1")
    return plan


def _metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_twenty_kills_then_resumes_end_bit_identical(ctx, tmp_path):
    code, out = _run(ctx, tmp_path, "ref")
    assert code == 0, out
    plan = _kill_plan()
    kills = 0
    for rule in plan:
        saved = ck.step_dirs(tmp_path / "runs" / "chain" / "checkpoints")    # killed before the first: start over
        code, out = _run(ctx, tmp_path, "chain", "--resume" if saved else "--force", fault=rule)
        if code == 0:                      # the run got past the point before reaching it: nothing to kill
            break
        assert code == -signal.SIGKILL, f"{rule}: exit {code}\n{out}"
        assert "Traceback" not in out
        kills += 1
    code, out = _run(ctx, tmp_path, "chain", "--resume")
    assert code == 0 and "Traceback" not in out, out
    assert kills == 20, f"only {kills} of the 20 kills happened"
    record("kills survived", kills)

    a = ck.resolve_checkpoint(tmp_path / "runs" / "ref")
    b = ck.resolve_checkpoint(tmp_path / "runs" / "chain")
    assert a.name == b.name == f"step_{STEPS:07d}"
    for f in ("model", "ema", "optimizer"):
        ta, tb = load_file(str(a / f"{f}.safetensors")), load_file(str(b / f"{f}.safetensors"))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{f}.{k} differs after the kill chain"
    sa, sb = ck.read_state(a), ck.read_state(b)
    for k in ("step", "samples_seen", "best_val"):
        assert sa[k] == sb[k], k
    assert sa["rng"]["torch"] == sb["rng"]["torch"]    # (python's and numpy's are per process and unused)
    # the resumed run replayed steps but wrote each record once: same steps, same validation losses
    ma, mb = _metrics(tmp_path / "runs" / "ref"), _metrics(tmp_path / "runs" / "chain")
    assert [r["step"] for r in ma if "loss" in r] == [r["step"] for r in mb if "loss" in r]
    assert [(r["step"], r["val_loss"]) for r in ma if "val_loss" in r] == \
        [(r["step"], r["val_loss"]) for r in mb if "val_loss" in r]
    assert not list((tmp_path / "runs" / "chain" / "checkpoints").glob(".*")), "no temporary directory is left"


def test_full_disk_during_a_checkpoint_write(tmp_path, tiny, monkeypatch, capsys):
    """A write that raises ENOSPC part-way (after model.safetensors of the 2nd checkpoint) is one error that
    names the good checkpoint; the previous checkpoint stays readable and no temporary files remain. It used
    to be a raw SafetensorError traceback with the temporary directory left behind."""
    monkeypatch.setenv("GENLAB_FAULT", "enospc@ckpt.model#2")
    faults.reset()
    rc = main(["train", *tiny, "train.max_steps=10", "train.ckpt_every=3", "train.val_every=0", "--name", "full",
               "--runs-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "no space left" in err and "newest intact checkpoint is" in err and "step_0000003" in err
    assert "Traceback" not in err
    root = tmp_path / "full" / "checkpoints"
    assert [p.name for p in ck.step_dirs(root)] == ["step_0000003"]
    assert not list(root.glob(".*")), "the failed write removed its temporary directory"
    assert ck.load_checkpoint(root / "step_0000003")["state"]["step"] == 3
    monkeypatch.delenv("GENLAB_FAULT")
    faults.reset()
    rc = main(["train", *tiny, "train.max_steps=10", "train.ckpt_every=3", "train.val_every=0", "--name", "full",
               "--runs-dir", str(tmp_path), "--no-progress", "--resume"])
    assert rc == 0 and ck.read_state(ck.resolve_checkpoint(tmp_path / "full"))["step"] == 10


def test_permission_denied_during_a_write_is_one_error(tmp_path, tiny, monkeypatch, capsys):
    monkeypatch.setenv("GENLAB_FAULT", "eacces@ckpt.state#1")
    faults.reset()
    rc = main(["train", *tiny, "train.max_steps=4", "--name", "perm", "--runs-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "PermissionError" in err and "no intact checkpoint exists yet" in err
    assert "Traceback" not in err
    assert not list((tmp_path / "perm" / "checkpoints").glob(".*"))
    faults.reset()


def test_resume_does_not_duplicate_metrics_and_a_finished_run_says_so(tmp_path, tiny, capsys):
    """Replayed steps were appended to metrics.jsonl a second time; resuming a finished run did not say that
    it was already done."""
    over = tiny + ["train.max_steps=20", "train.ckpt_every=5", "train.log_every=1", "train.val_every=0"]
    api.train("digits_ddpm", over, name="m", runs_root=tmp_path, progress=False)
    run = tmp_path / "m"
    # as if killed at step 20 before its checkpoint: the latest is step 15 but the log reached step 20
    import shutil
    shutil.rmtree(run / "checkpoints" / "step_0000020")
    api.train("digits_ddpm", over, name="m", runs_root=tmp_path, resume=True, progress=False)
    steps = [r["step"] for r in _metrics(run) if "loss" in r]
    assert steps == list(range(1, 21)), steps
    capsys.readouterr()
    rc = main(["train", *over, "--name", "m", "--runs-dir", str(tmp_path), "--resume", "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0 and "already finished" in out.out + out.err and "nothing to do" in out.out
    assert [r["step"] for r in _metrics(run) if "loss" in r] == list(range(1, 21))


def test_kill_between_the_two_renames_of_best(ctx, tmp_path):
    """Replacing best/ renames the old one aside, then the new one in: a kill between the two leaves
    .best.old-*, which readers use and a resume puts back."""
    code, out = _run(ctx, tmp_path, "swap", "train.val_every=2", "train.max_steps=12", fault="kill@ckpt.swap#1")
    assert code == -signal.SIGKILL, out
    root = tmp_path / "runs" / "swap" / "checkpoints"
    assert not (root / "best").exists() and list(root.glob(".best.old-*"))
    assert ck.resolve_checkpoint(root.parent, "best").name.startswith(".best.old-")   # readers still find it
    code, out = _run(ctx, tmp_path, "swap", "train.val_every=2", "train.max_steps=12", "--resume")
    assert code == 0, out
    assert ck.problems(root / "best") == [] and not list(root.glob(".*"))
    record("kills survived")
