"""Path safety: run names are names, --force removes only a genlab run inside the runs root, two trainings of
one run are refused, compare --out writes only into its own directories (issue 11)."""
import json
import os

import pytest

import genlab.api as api
from genlab.cli import main
from genlab.report.compare import COMPARE_MARKER, prepare_out
from genlab.runs import RUN_MARKER, RunBusy, RunError, RunLock, check_run_name, prepare_run_dir

from conftest import record

BAD_NAMES = ["..", ".", "../../somewhere", "../x", "a/b", "/tmp/abs", "a\\b", "", " x", ".hidden", "x\x00y"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_run_names_are_names(name):
    with pytest.raises(RunError, match="run name"):
        check_run_name(name)


@pytest.fixture
def user_files(tmp_path):
    """A user's directory tree around the runs root: nothing in it may change."""
    home = tmp_path / "home"
    (home / "runs").mkdir(parents=True)
    (home / "precious.txt").write_text("keep me")
    (home / "somewhere").mkdir()
    (home / "somewhere" / "thesis.tex").write_text("keep me too")
    return home


def _snapshot(root):
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else b"")
                  for p in root.rglob("*") if RUN_MARKER not in p.parts)


@pytest.mark.parametrize("name", ["..", "../somewhere", "../..", ".", "/etc"])
def test_force_with_a_path_as_name_deletes_nothing(user_files, tiny, name, capsys, monkeypatch):
    """`genlab train --name ../../somewhere --force` used to rmtree a directory outside runs/, and `--name ..`
    emptied the current directory."""
    monkeypatch.chdir(user_files)
    before = _snapshot(user_files)
    rc = main(["train", *tiny, "train.max_steps=1", "--name", name, "--force", "--runs-dir", "runs",
               "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "run name" in err and "Traceback" not in err
    assert _snapshot(user_files) == before
    record("path cases", 1)


def test_force_replaces_only_genlab_runs(user_files, tiny, capsys):
    runs = user_files / "runs"
    (runs / "mine").mkdir()
    (runs / "mine" / "notes.txt").write_text("not a run")
    rc = main(["train", *tiny, "train.max_steps=1", "--name", "mine", "--force", "--runs-dir", str(runs),
               "--no-progress"])
    assert rc == 2 and "not a genlab run" in capsys.readouterr().err
    assert (runs / "mine" / "notes.txt").read_text() == "not a run"
    # a symbolic link named like a run is never followed
    (runs / "link").symlink_to(user_files / "somewhere", target_is_directory=True)
    rc = main(["train", *tiny, "train.max_steps=1", "--name", "link", "--force", "--runs-dir", str(runs),
               "--no-progress"])
    assert rc == 2 and "is not a run directory (a file or a link)" in capsys.readouterr().err
    assert (user_files / "somewhere" / "thesis.tex").exists()
    # a genlab run is replaced, and keeps its marker
    assert main(["train", *tiny, "train.max_steps=1", "--name", "r", "--runs-dir", str(runs), "--no-progress"]) == 0
    (runs / "r" / "extra.txt").write_text("x")
    assert main(["train", *tiny, "train.max_steps=1", "--name", "r", "--force", "--runs-dir", str(runs),
                 "--no-progress"]) == 0
    assert not (runs / "r" / "extra.txt").exists() and (runs / "r" / RUN_MARKER).is_file()
    record("path cases", 3)


def test_a_run_made_before_the_marker_is_still_a_run(tmp_path, tiny):
    api.train("digits_ddpm", tiny + ["train.max_steps=1"], name="old", runs_root=tmp_path, progress=False)
    (tmp_path / "old" / RUN_MARKER).unlink()        # as written by genlab before this marker existed
    api.train("digits_ddpm", tiny + ["train.max_steps=1"], name="old", runs_root=tmp_path, force=True,
              progress=False)
    assert (tmp_path / "old" / RUN_MARKER).is_file()


def test_two_trainings_of_one_run_are_refused(tmp_path, tiny):
    api.train("digits_ddpm", tiny + ["train.max_steps=2"], name="busy", runs_root=tmp_path, progress=False)
    with RunLock(tmp_path / "busy"):               # another process is training it
        for kw in ({"resume": True}, {"force": True}):
            with pytest.raises(RunBusy, match="is being trained by process"):
                api.train("digits_ddpm", tiny + ["train.max_steps=4"], name="busy", runs_root=tmp_path,
                          progress=False, **kw)
        assert (tmp_path / "busy" / "checkpoints").is_dir(), "--force on a busy run removed nothing"
    res = api.train("digits_ddpm", tiny + ["train.max_steps=4"], name="busy", runs_root=tmp_path, resume=True,
                    progress=False)
    assert res.state.step == 4
    record("path cases", 2)


def test_a_killed_process_leaves_no_stuck_lock(tmp_path):
    """The lock is an flock: the kernel drops it when its process dies, even by SIGKILL."""
    import signal
    import subprocess
    import sys

    (tmp_path / "r").mkdir()
    code = ("import sys, time; from genlab.runs import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "r")], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    with pytest.raises(RunBusy):
        RunLock(tmp_path / "r").acquire()
    p.send_signal(signal.SIGKILL)
    p.wait()
    RunLock(tmp_path / "r").acquire().release()


def test_prepare_run_dir_inside_the_root_only(tmp_path):
    run, lock = prepare_run_dir("ok", runs_root=tmp_path)
    lock.release()
    assert run == tmp_path / "ok" and (run / RUN_MARKER).is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="not a run directory"):
        prepare_run_dir("file", runs_root=tmp_path, force=True)
    assert (tmp_path / "file").read_text() == "x"


# ------------------------------------------------------------------------------------------- compare --out

def test_compare_out_refuses_a_users_directory(tmp_path, capsys):
    """`compare --fresh --out DIR` used to delete the contents of any directory, and `--out DIR` overwrote a
    README.md it did not write."""
    d = tmp_path / "mydocs"
    d.mkdir()
    (d / "README.md").write_text("my readme")
    (d / "data.csv").write_text("1,2")
    for extra in ([], ["--fresh"]):
        rc = main(["compare", "--quick", "--out", str(d), "--no-progress", *extra])
        assert rc == 2
        err = capsys.readouterr().err
        assert "did not write" in err and "Traceback" not in err
    assert (d / "README.md").read_text() == "my readme" and (d / "data.csv").read_text() == "1,2"
    with pytest.raises(ValueError, match="is a file"):
        prepare_out(d / "data.csv")
    record("path cases", 3)


def test_compare_fresh_removes_only_what_compare_wrote(tmp_path):
    d = prepare_out(tmp_path / "rep")                       # a new directory: marked
    assert (d / COMPARE_MARKER).is_file()
    (d / "results.json").write_text(json.dumps({"_mode": "quick"}))
    (d / "runs" / "a").mkdir(parents=True)
    (d / "my_notes.txt").write_text("mine")                 # the user's, added later
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    os.symlink(outside, d / "img" / "linked")
    prepare_out(d, fresh=True)
    assert (d / "my_notes.txt").read_text() == "mine"
    assert not (d / "results.json").exists() and not (d / "runs").exists()
    assert (outside / "keep.txt").read_text() == "keep", "a link inside is removed, never followed"
    # a report directory from before the marker (results.json of compare) is still accepted
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"_mode": "full"}))
    (old / "index.html").write_text("<html></html>")
    prepare_out(old)
    assert (old / COMPARE_MARKER).is_file()
    record("path cases", 2)


def test_compare_method_names_are_run_names(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("budget: 1s\nmethods:\n  - {name: ../../evil, config: digits_ddpm}\n")
    assert main(["compare", "--config", str(spec), "--out", str(tmp_path / "o"), "--quick"]) == 2
    assert "run name" in capsys.readouterr().err


def test_force_spares_a_foreign_directory_that_looks_like_an_old_run(tmp_path, tiny, capsys):
    """Another project's directory with a config.yaml and a checkpoints/ is not an old genlab run."""
    d = tmp_path / "other"
    (d / "checkpoints").mkdir(parents=True)
    (d / "config.yaml").write_text("lr: 0.1\nepochs: 3\n")
    assert main(["train", *tiny, "train.max_steps=1", "--name", "other", "--force", "--runs-dir", str(tmp_path),
                 "--no-progress"]) == 2
    assert "not a genlab run" in capsys.readouterr().err and (d / "config.yaml").exists()
    record("path cases")


def test_sample_out_directory_never_overwrites_a_users_files(cond_run, tmp_path, capsys):
    d = tmp_path / "photos"
    d.mkdir()
    (d / "000000.png").write_bytes(b"my holiday")
    rc = main(["sample", "--ckpt", str(cond_run), "--n", "2", "--steps", "1", "--out", str(d) + "/"])
    assert rc == 2 and "did not write" in capsys.readouterr().err
    assert (d / "000000.png").read_bytes() == b"my holiday"
    new = tmp_path / "new"
    for _ in range(2):            # a directory genlab filled may be filled again
        assert main(["sample", "--ckpt", str(cond_run), "--n", "2", "--steps", "1", "--out", str(new) + "/"]) == 0
    assert sorted(p.name for p in new.glob("*.png")) == ["000000.png", "000001.png"]
    # a bad --out is refused before any sampling
    assert main(["sample", "--ckpt", str(cond_run), "--n", "2", "--out", str(tmp_path / "x.gif")]) == 2
    record("path cases", 2)
