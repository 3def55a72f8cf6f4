"""Damaged checkpoints (issue 11): every file of the latest checkpoint truncated, emptied, garbled or removed,
for sampling, evaluation and resume. A damaged checkpoint is named and skipped for the newest intact one;
with none intact, one error lists what is wrong with each; the raw weights are used only with --raw."""
import shutil

import pytest

import genlab.api as api
from genlab.cli import main
from genlab.train import checkpoint as ck

from conftest import TINY, record

FILES = ["model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"]
DAMAGE = ["truncated", "emptied", "garbled", "removed"]
USES = ["sample", "eval", "resume"]
NEEDED = {"sample": {"ema.safetensors", "state.json"},       # (sampling reads the EMA weights, --raw the raw)
          "eval": {"ema.safetensors", "state.json"},
          "resume": set(FILES)}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    api.train("digits_ddpm", TINY + ["train.max_steps=6", "train.ckpt_every=3", "train.val_every=0"], name="base",
              runs_root=root, progress=False)
    assert [p.name for p in ck.step_dirs(root / "base" / "checkpoints")] == ["step_0000003", "step_0000006"]
    return root / "base"


def damage(f, how: str) -> None:
    data = f.read_bytes()
    if how == "truncated":
        f.write_bytes(data[: len(data) // 2])
    elif how == "emptied":
        f.write_bytes(b"")
    elif how == "garbled":          # same length, 16 bytes in the middle flipped
        mid = len(data) // 2
        f.write_bytes(data[:mid] + bytes(b ^ 0x5A for b in data[mid:mid + 16]) + data[mid + 16:])
    elif how == "removed":
        f.unlink()


def use(what: str, run, tmp_path, *extra) -> int:
    if what == "sample":
        return main(["sample", "--ckpt", str(run), "--n", "2", "--steps", "1", "--out", str(tmp_path / "s.png"),
                     *extra])
    if what == "eval":
        return main(["eval", "--ckpt", str(run), "--n", "16", "--steps", "1", "--batch-size", "16", *extra])
    return main(["train", *TINY, "train.max_steps=7", "train.ckpt_every=3", "train.val_every=0", "--name",
                 run.name, "--runs-dir", str(run.parent), "--resume", "--no-progress", *extra])


@pytest.mark.parametrize("what", USES)
@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("name", FILES)
def test_damaged_latest_checkpoint_is_skipped(base, tmp_path, capsys, name, how, what):
    """It used to end in KeyError tracebacks or unclear errors and was never skipped for the intact one."""
    run = tmp_path / "run"
    shutil.copytree(base, run)
    damage(run / "checkpoints" / "step_0000006" / name, how)
    rc = use(what, run, tmp_path)
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "Traceback" not in err
    if name in NEEDED[what]:
        assert f"skipping damaged checkpoint {run / 'checkpoints' / 'step_0000006'}: {name}" in err, err
        assert "using" in err and "step_0000003" in err
    else:
        assert "skipping" not in err       # a file this use does not read (the optimizer, the raw weights)
    if what == "resume":
        assert ck.read_state(ck.resolve_checkpoint(run))["step"] == 7
    record("damaged files tried")


@pytest.mark.parametrize("what", USES)
def test_no_intact_checkpoint_is_one_error_listing_each(base, tmp_path, capsys, what):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    damage(run / "checkpoints" / "step_0000006" / "state.json", "emptied")
    damage(run / "checkpoints" / "step_0000003" / "ema.safetensors", "truncated")
    rc = use(what, run, tmp_path)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    line = [x for x in err.splitlines() if "error:" in x]
    assert len(line) == 1, err
    assert "no intact checkpoint" in line[0] and "step_0000006: state.json is empty" in line[0]
    assert "step_0000003: ema.safetensors is truncated" in line[0]
    record("damaged files tried", 2)


def test_missing_ema_never_silently_means_raw_weights(base, tmp_path, capsys):
    """Sampling used to fall back to the raw weights without a word when ema.safetensors was missing."""
    run = tmp_path / "run"
    shutil.copytree(base, run)
    damage(run / "checkpoints" / "step_0000006" / "ema.safetensors", "removed")
    x_ema, _, _ = api.sample(run, n=2, steps=1)
    assert "skipping damaged checkpoint" in capsys.readouterr().err
    x_raw, _, _ = api.sample(run, n=2, steps=1, use_ema=False)
    assert "skipping" not in capsys.readouterr().err       # --raw: the latest checkpoint's raw weights
    assert api.load_run(run, use_ema=False)[3]["step"] == 6 and api.load_run(run)[3]["step"] == 3
    # a damaged checkpoint named directly is an error, not a silent substitute
    rc = main(["sample", "--ckpt", str(run / "checkpoints" / "step_0000006"), "--n", "2", "--steps", "1",
               "--out", str(tmp_path / "x.png")])
    assert rc == 2 and "ema.safetensors is missing" in capsys.readouterr().err


def test_best_checkpoint_damaged_falls_back_with_a_message(base, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    damage(run / "checkpoints" / "best" / "ema.safetensors", "garbled")
    assert main(["sample", "--ckpt", str(run), "--which", "best", "--n", "2", "--steps", "1", "--out",
                 str(tmp_path / "b.png")]) == 0
    err = capsys.readouterr().err
    assert "skipping damaged checkpoint" in err and "SHA-256" in err and "not the best" in err


def _as_before_this_change(ckpt) -> None:
    """Drop the sizes, digests and state digest, as checkpoints written before they existed lack them."""
    import json

    st = json.loads((ckpt / "state.json").read_text())
    st.pop("files"), st.pop("check")
    (ckpt / "state.json").write_text(json.dumps(st))


@pytest.mark.parametrize("how", ["intact", "truncated", "garbled-header"])
def test_checkpoints_from_before_the_digests(base, tmp_path, capsys, how):
    """Older checkpoints (no sizes or digests in state.json) still load; their tensors must at least parse."""
    run = tmp_path / "run"
    shutil.copytree(base, run)
    for c in ck.step_dirs(run / "checkpoints"):
        _as_before_this_change(c)
    f = run / "checkpoints" / "step_0000006" / "ema.safetensors"
    if how == "truncated":
        damage(f, "truncated")
    elif how == "garbled-header":
        f.write_bytes(b"\xff" * 16 + f.read_bytes()[16:])
    assert use("sample", run, tmp_path) == 0
    err = capsys.readouterr().err
    assert ("skipping damaged checkpoint" in err) == (how != "intact"), err
    assert use("resume", run, tmp_path) == 0


def test_pruning_never_counts_a_damaged_checkpoint(base, tmp_path):
    """Resuming past a damaged checkpoint with train.keep_last=1 keeps an intact one at every moment."""
    run = tmp_path / "run"
    shutil.copytree(base, run)
    damage(run / "checkpoints" / "step_0000006" / "model.safetensors", "garbled")
    assert main(["train", *TINY, "train.max_steps=5", "train.ckpt_every=1", "train.keep_last=1",
                 "train.val_every=0", "--name", "run", "--runs-dir", str(tmp_path), "--resume",
                 "--no-progress"]) == 0
    names = [p.name for p in ck.step_dirs(run / "checkpoints")]
    assert names == ["step_0000005", "step_0000006"], names       # the damaged one is left, not counted
    assert ck.resolve_checkpoint(run).name == "step_0000005"
