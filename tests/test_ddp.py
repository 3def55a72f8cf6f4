"""Two processes under torchrun (gloo, CPU) follow one process with the same global batch."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genlab.train import checkpoint as ck

from conftest import genlab_cmd


def _losses(run: Path):
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_two_process_ddp_matches_one_process(tmp_path, tiny, subprocess_env):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    args = ["train", *tiny, "train.max_steps=12", "train.log_every=1", "train.ckpt_every=6", "train.val_every=6",
            "train.num_threads=1", "train.device=cpu", "--runs-dir", str(tmp_path), "--no-progress"]
    one = subprocess.run(genlab_cmd(*args, "--name", "one"), env=subprocess_env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "genlab.cli", *args,
                          "--name", "two"], env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]

    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(l1) == len(l2) == 12
    for a, b in zip(l1, l2):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    c1, c2 = ck.resolve_checkpoint(tmp_path / "one"), ck.resolve_checkpoint(tmp_path / "two")
    assert ck.read_state(c2)["world_size"] == 2 and ck.read_state(c2)["samples_seen"] == 12 * 32
    w1, w2 = load_file(str(c1 / "model.safetensors")), load_file(str(c2 / "model.safetensors"))
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5, rtol=1e-4), k

    # a checkpoint written by 2 processes resumes on 1 (and continues like the 1-process run)
    more = [a for a in args if not a.startswith("train.max_steps")] + ["train.max_steps=18"]
    r1 = subprocess.run(genlab_cmd(*more, "--name", "one", "--resume"), env=subprocess_env, capture_output=True,
                        text=True)
    r2 = subprocess.run(genlab_cmd(*more, "--name", "two", "--resume"), env=subprocess_env, capture_output=True,
                        text=True)
    assert r1.returncode == 0 and r2.returncode == 0, r2.stderr
    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(l1) == len(l2) == 18
    for a, b in zip(l1[12:], l2[12:]):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_process_that_loses_its_peer_exits_with_one_line(tmp_path, tiny, subprocess_env, victim=1):
    """When one of two processes dies (SIGKILL at step 5, through the fault hook), the survivor exits within
    train.dist_timeout with one line naming what happened and the last good checkpoint. It used to announce a
    checkpoint it then could not write and print a raw gloo traceback."""
    import time

    args = ["train", *tiny, "train.max_steps=100000", "train.log_every=1", "train.ckpt_every=3",
            "train.val_every=0", "train.num_threads=1", "train.device=cpu", "train.dist_timeout=20",
            "--runs-dir", str(tmp_path), "--name", "d", "--no-progress"]
    port = _free_port()
    procs = []
    t0 = time.time()
    for rank in range(2):
        env = dict(subprocess_env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), GENLAB_FAULT=f"kill@step.5:r{victim}")
        procs.append(subprocess.Popen(genlab_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=180) for p in procs]
    elapsed = time.time() - t0
    survivor = 1 - victim
    assert procs[victim].returncode == -9
    out, err = outs[survivor]
    assert procs[survivor].returncode == 2, err
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if "error:" in x]
    assert len(lines) == 1, err
    assert f"process {survivor} lost the other training processes" in lines[0]
    assert "Last good checkpoint:" in lines[0] and "step_0000003" in lines[0] and "--resume" in lines[0]
    assert "stopping after this step to save" not in err and "saved /" not in err   # no promise it cannot keep
    assert elapsed < 20 + 60, f"took {elapsed:.0f}s"


def test_under_torchrun_a_survivor_waiting_for_process_0_exits_with_one_line(tmp_path, tiny, subprocess_env):
    """Process 0 dies inside a checkpoint write while process 1 waits for it. torchrun's own store outlives
    process 0, so the wait cannot notice by itself: torchrun's SIGTERM starts the train.dist_timeout clock."""
    import time

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    logs = tmp_path / "logs"
    args = ["train", *tiny, "train.max_steps=100000", "train.ckpt_every=4", "train.val_every=0",
            "train.num_threads=1", "train.device=cpu", "train.dist_timeout=5", "--runs-dir", str(tmp_path),
            "--name", "t", "--no-progress"]
    env = dict(subprocess_env, GENLAB_FAULT="kill@ckpt.ema#2:r0")
    t0 = time.time()
    p = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "--log-dir", str(logs), "--redirects",
                        "3", "-m", "genlab.cli", *args], env=env, capture_output=True, text=True, timeout=240)
    elapsed = time.time() - t0
    assert p.returncode != 0
    (err1,) = [f.read_text() for f in logs.rglob("stderr.log") if f.parent.name == "1"]
    assert "Traceback" not in err1, err1
    lines = [x for x in err1.splitlines() if "error:" in x]
    assert len(lines) == 1 and "process 1 lost the other training processes" in lines[0], err1
    assert "step_0000004" in lines[0], lines[0]
    assert "waitForInput" not in err1, "no warning per poll while waiting"
    assert elapsed < 120, f"took {elapsed:.0f}s"


def test_two_nodes_rendezvousing_on_localhost_end_like_one_process(tmp_path, tiny, subprocess_env):
    """The README's many-machine command (torchrun --nnodes N --rdzv-backend c10d), as two single-process
    "nodes" on 127.0.0.1 sharing one file system: the run ends as the one-process run does."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    args = ["train", *tiny, "train.max_steps=8", "train.log_every=1", "train.ckpt_every=4", "train.val_every=4",
            "train.num_threads=1", "train.device=cpu", "--runs-dir", str(tmp_path), "--no-progress"]
    one = subprocess.run(genlab_cmd(*args, "--name", "one"), env=subprocess_env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    port = _free_port()
    node = [torchrun, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
            f"127.0.0.1:{port}", "--rdzv-id", "genlab-test", "-m", "genlab.cli", *args, "--name", "nodes"]
    procs = [subprocess.Popen(node, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(err[-2000:] for _, err in outs)
    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "nodes")
    assert len(l1) == len(l2) == 8
    assert l2 == pytest.approx(l1, rel=1e-5, abs=1e-6)
    c1, c2 = ck.resolve_checkpoint(tmp_path / "one"), ck.resolve_checkpoint(tmp_path / "nodes")
    assert ck.read_state(c2)["world_size"] == 2
    w1, w2 = load_file(str(c1 / "model.safetensors")), load_file(str(c2 / "model.safetensors"))
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5, rtol=1e-4) for k in w1)
