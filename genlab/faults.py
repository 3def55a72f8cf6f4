"""Test-only fault injection: named points in the code where a test can make this process die or fail.

``GENLAB_FAULT`` holds comma-separated rules ``ACTION@POINT[#N][:rR]``: at the N-th time (default 1) this
process (of rank R, default any) passes ``POINT``, do ACTION:

- ``kill``: SIGKILL this process (what a power cut, the OOM killer or ``kill -9`` does);
- ``enospc``: raise ``OSError(ENOSPC)`` (a full disk); ``eacces``: raise ``PermissionError``.

Points: ``step.N`` after training step N; ``ckpt.model``, ``ckpt.ema``, ``ckpt.optimizer`` after each file of a
checkpoint write, ``ckpt.state`` before its state.json, ``ckpt.rename`` before the rename into place,
``ckpt.swap`` between renaming an existing checkpoint (``best/``) aside and the new one into place. Without
the variable (every normal run) a point costs one dictionary lookup.
"""
from __future__ import annotations

import errno
import os
import signal

_seen: dict[str, int] = {}


def _rules():
    spec = os.environ.get("GENLAB_FAULT")
    if not spec:
        return ()
    out = []
    for item in spec.split(","):
        action, _, rest = item.strip().partition("@")
        rest, _, rank = rest.partition(":r")
        point, _, nth = rest.partition("#")
        out.append((action, point, int(nth or 1), None if rank == "" else int(rank)))
    return out


def point(name: str) -> None:
    """Pass the named point (see the module docstring)."""
    rules = _rules()
    if not rules:
        return
    _seen[name] = _seen.get(name, 0) + 1
    rank = int(os.environ.get("RANK", "0"))
    for action, where, nth, r in rules:
        if where == name and _seen[name] == nth and (r is None or r == rank):
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if action == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            if action == "eacces":
                raise PermissionError(errno.EACCES, "Permission denied (injected)")
            raise ValueError(f"GENLAB_FAULT: unknown action {action!r}")


def reset() -> None:
    """Forget how often each point was passed (for tests that inject faults in-process)."""
    _seen.clear()
