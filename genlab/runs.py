"""Runs on disk: run names are names (never paths), run directories carry a marker, ``--force`` removes only a
genlab run inside the runs root, and a lock keeps two trainings out of one run.

    runs/NAME/
      .genlab-run     marker: this directory was made by genlab (JSON: version, creation time)
      .lock           held (flock) by the process training the run; the kernel releases it when that process
                      ends, however it ends, so a killed run never leaves it stuck
      config.yaml, metrics.jsonl, checkpoints/, samples.png, ...

A run made before the marker existed is recognised by its ``config.yaml`` and ``checkpoints/``.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

RUN_MARKER = ".genlab-run"
LOCK_FILE = ".lock"
RUNS_ROOT = Path(os.environ.get("GENLAB_RUNS", "runs"))


class RunError(ValueError):
    """A run name or run directory that genlab must not use as asked; the message says why and what to do."""


class RunBusy(RunError):
    """Another process is training this run."""


def check_run_name(name) -> str:
    """``name`` if it is one plain path component (no separators, not ``.`` or ``..``, not absolute, no
    control characters), else RunError saying so."""
    if not isinstance(name, str) or not name.strip():
        raise RunError(f"run name {name!r} is empty; give a plain name such as --name quick")
    bad = None
    if name in (".", ".."):
        bad = "is a relative directory"
    elif "/" in name or "\\" in name:        # (every absolute path has one)
        bad = "contains a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        bad = "contains a control character"
    elif name != name.strip():
        bad = "starts or ends with white space"
    elif name.startswith("."):
        bad = "starts with a dot (hidden names are genlab's own)"
    elif len(name.encode()) > 200:
        bad = "is longer than 200 bytes"
    if bad:
        raise RunError(f"run name {name!r} {bad}: a run name is a name, not a path (runs go to "
                       f"RUNS_DIR/NAME; choose the parent with --runs-dir)")
    return name


def is_run_dir(path, follow_link: bool = False) -> bool:
    """A directory genlab made for a run: it holds the marker, or (older runs) a config.yaml that reads as a
    genlab config and a checkpoints/ directory. A symbolic link counts only with ``follow_link`` (resuming
    through a link deletes nothing)."""
    p = Path(path)
    if (p.is_symlink() and not follow_link) or not p.is_dir():
        return False
    if (p / RUN_MARKER).is_file():
        return True
    if not ((p / "config.yaml").is_file() and (p / "checkpoints").is_dir()):
        return False
    try:
        import yaml

        cfg = yaml.safe_load((p / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(cfg, dict) and {"method", "model", "train"} <= set(cfg)


def write_marker(run_dir: Path) -> None:
    marker = run_dir / RUN_MARKER
    if not marker.exists():
        from . import __version__

        marker.write_text(json.dumps({"genlab": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}))


class RunLock:
    """An exclusive lock on a run directory (``.lock``, flock); ``acquire`` raises RunBusy naming the holder."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise RunError(f"cannot lock {self.path}: {e.strerror} (this file system may not support "
                               "locks; put the runs on a local disk with --runs-dir)") from None
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunBusy(f"{self.path.parent} is being trained by {holder}; wait for it to finish or stop it "
                          "first (two trainings of one run would overwrite each other's checkpoints)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)     # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:        # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def check_removable(run_dir: Path, runs_root: Path) -> None:
    """RunError unless ``run_dir`` is a genlab run directly inside the runs root and not a symbolic link: the
    only kind of directory ``--force`` may empty."""
    if run_dir.is_symlink():
        raise RunError(f"{run_dir} is a symbolic link; genlab never deletes through a link (remove it yourself, "
                       "or choose another --name)")
    if run_dir.resolve().parent != runs_root.resolve():
        raise RunError(f"{run_dir} is not inside the runs directory {runs_root}; refusing to delete it")
    if not is_run_dir(run_dir):
        raise RunError(f"{run_dir} exists but is not a genlab run (no {RUN_MARKER}, config.yaml or checkpoints/); "
                       "--force only replaces runs genlab made. Move it away or choose another --name")


def clear_run(run_dir: Path, runs_root: Path) -> None:
    """Empty a genlab run directory for ``--force`` (its lock file stays, as the lock is held), after
    :func:`check_removable`; entries that are links are unlinked, never followed."""
    check_removable(run_dir, runs_root)
    for child in run_dir.iterdir():
        if child.name == LOCK_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def prepare_run_dir(name: str, *, runs_root=None, resume: bool = False, force: bool = False,
                    rank: int = 0) -> tuple[Path, Optional[RunLock]]:
    """(runs_root/NAME, its held lock): created for a new run; an existing run is continued with ``resume`` or
    replaced with ``force`` (only a genlab run, and only when no other process trains it); anything else is a
    RunError or FileExistsError saying what to do. Under torchrun only process 0 prepares and locks (rank > 0
    gets the path and no lock)."""
    check_run_name(name)
    root = Path(runs_root or RUNS_ROOT)
    run_dir = root / name
    if rank != 0:
        return run_dir, None
    exists = run_dir.exists() or run_dir.is_symlink()
    if resume:
        if not exists:
            raise FileNotFoundError(f"cannot resume: {run_dir} does not exist (start it without --resume)")
        if not is_run_dir(run_dir, follow_link=True):
            raise RunError(f"cannot resume: {run_dir} is not a genlab run (no config.yaml and checkpoints/)")
        return run_dir, RunLock(run_dir).acquire()
    if exists and (run_dir.is_symlink() or not run_dir.is_dir()):
        raise RunError(f"{run_dir} exists and is not a run directory (a file or a link); choose another --name")
    if exists and any(run_dir.iterdir()):
        if not force:
            raise FileExistsError(f"{run_dir} already exists; continue it with --resume, overwrite it with "
                                  f"--force, or choose another --name")
        check_removable(run_dir, root)      # before the lock file is created in a directory that is not ours
        lock = RunLock(run_dir).acquire()   # before anything is removed: a run in progress is not touched
        try:
            clear_run(run_dir, root)
        except BaseException:
            lock.release()
            raise
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir).acquire()
    write_marker(run_dir)
    return run_dir, lock
