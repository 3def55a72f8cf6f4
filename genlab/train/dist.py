"""Devices and processes: automatic device choice, torchrun/DDP set-up and teardown, rank-0 helpers."""
from __future__ import annotations

import os
import re
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
        try:
            tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                     timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as e:
            raise PeerLost(f"could not join the other training processes: {_first_line(e)}") from None
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev)


_PEER_ERROR = re.compile(r"gloo|nccl|Connection (reset|closed|refused)|ProcessGroup|[Tt]imed out|[Tt]imeout|"
                         r"Broken pipe|socket")


def is_peer_error(e: BaseException) -> bool:
    """A RuntimeError raised by torch.distributed (or by DDP's gradient all-reduce inside backward) because a
    peer died or stopped answering, as opposed to a bug."""
    dist_error = getattr(tdist, "DistError", ())
    return isinstance(e, dist_error) or (isinstance(e, RuntimeError) and bool(_PEER_ERROR.search(str(e))))


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def teardown(info: DistInfo) -> None:
    if info.enabled and tdist.is_initialized():
        try:
            tdist.destroy_process_group()
        except RuntimeError:
            pass


_sync = {"n": 0}


def barrier(info: DistInfo, poll_s: float = 2.0, final: bool = False) -> None:
    """Wait until process 0 has finished its own work (checkpoints, grids, evaluations: as long as they take),
    through the rendezvous store: process 0 posts a key, the others poll for it. A store that cannot be
    reached (process 0 or the launcher died) is PeerLost. ``final``: then a real barrier of every process
    (before the process group is taken down)."""
    if not info.enabled:
        return
    _sync["n"] += 1
    key = f"genlab/sync/{_sync['n']}"
    try:
        store = tdist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        store = None
    try:
        if store is None:
            tdist.barrier()
        elif info.is_main:
            store.set(key, "1")
        else:
            while True:
                try:
                    store.wait([key], timedelta(seconds=poll_s))
                    break
                except RuntimeError as e:          # a timeout of this poll: process 0 is still working
                    if "timeout" not in str(e).lower() and "timed out" not in str(e).lower():
                        raise
        if final and store is not None:
            tdist.barrier()
    except RuntimeError as e:
        raise PeerLost(_first_line(e)) from None


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        try:
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        except RuntimeError as e:       # gloo / nccl errors (DistBackendError is a RuntimeError)
            raise PeerLost(_first_line(e)) from None
    return t


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    try:
        tdist.broadcast_object_list(box, src=0)
    except RuntimeError as e:
        raise PeerLost(_first_line(e)) from None
    return box[0]
