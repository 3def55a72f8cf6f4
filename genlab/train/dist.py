"""Devices and processes: automatic device choice, torchrun/DDP set-up and teardown, rank-0 helpers."""
from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist


class PeerLost(RuntimeError):
    """A collective operation failed or timed out: another training process died or stopped answering."""


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: cuda if available, else mps, else cpu. Explicit names are checked and explained."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name} but CUDA is not available here (torch {torch.__version__}); "
                           "use train.device=auto or cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"train.device={name} but MPS is not available here; use train.device=auto or cpu")
    return dev


def init_distributed(device: str = "auto", timeout_s: float = 120.0) -> DistInfo:
    """Under torchrun (WORLD_SIZE > 1) join the process group: nccl on CUDA, gloo otherwise. A collective that
    waits longer than ``timeout_s`` for a peer fails (PeerLost), so a process whose peers died exits within
    it; the waits while process 0 alone saves or evaluates are not bounded by it (see :func:`barrier`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=pick_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not tdist.is_initialized():
        with collective("could not join the other training processes: "):
            tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                     timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev)


_PEER_ERROR = re.compile(r"gloo|[Nn][Cc][Cc][Ll]|Connection (reset|closed) by peer|DistBackendError")


def is_peer_error(e: BaseException) -> bool:
    """PeerLost, or a RuntimeError raised by torch.distributed (or by DDP's gradient all-reduce inside backward)
    because a peer died or stopped answering, as opposed to a bug or another genlab error."""
    if isinstance(e, PeerLost):
        return True
    if type(e).__module__.startswith("genlab"):
        return False
    dist_error = getattr(tdist, "DistError", ())
    return isinstance(e, dist_error) or (isinstance(e, RuntimeError) and bool(_PEER_ERROR.search(str(e))))


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


@contextlib.contextmanager
def collective(prefix: str = ""):
    """Inside: torch.distributed calls, whose RuntimeErrors (and ValueErrors of a bad rendezvous) mean a lost
    peer; they leave as PeerLost with their first line."""
    try:
        yield
    except PeerLost:
        raise
    except (RuntimeError, ValueError) as e:
        raise PeerLost(prefix + _first_line(e)) from None


def teardown(info: DistInfo) -> None:
    if info.enabled and tdist.is_initialized():
        try:
            tdist.destroy_process_group()
        except RuntimeError:
            pass


_sync = {"n": 0}


def barrier(info: DistInfo, poll_s: float = 0.05, final: bool = False, stopping=lambda: False,
            timeout_s: float = 120.0) -> None:
    """Wait until process 0 has finished its own work (checkpoints, grids, evaluations: as long as they take),
    through the rendezvous store: process 0 posts a key, the others poll for it. A store that cannot be
    reached (process 0 died and hosted it) is PeerLost; so is a wait that goes on ``timeout_s`` after
    ``stopping()`` turned true (torchrun sends SIGTERM to the others when one process dies, and its own store
    outlives process 0). ``final``: then a real barrier of every process (before the process group goes)."""
    if not info.enabled:
        return
    _sync["n"] += 1
    key = f"genlab/sync/{_sync['n']}"
    try:
        store = tdist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        store = None
    with collective():
        if store is None:
            tdist.barrier()
        elif info.is_main:
            store.set(key, "1")
        else:
            deadline, wait = None, 0.001
            while not store.check([key]):          # (check, unlike wait, neither times out nor warns)
                if deadline is None and stopping():
                    deadline = time.monotonic() + timeout_s
                if deadline is not None and time.monotonic() > deadline:
                    raise PeerLost(f"process 0 did not finish within train.dist_timeout={timeout_s:g}s after "
                                   "this process was told to stop")
                time.sleep(wait)
                wait = min(2 * wait, poll_s)
        if final and store is not None:
            tdist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        with collective():      # gloo / nccl errors (DistBackendError is a RuntimeError)
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    with collective():
        tdist.broadcast_object_list(box, src=0)
    return box[0]
