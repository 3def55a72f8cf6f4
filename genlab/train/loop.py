"""The one training loop, for every method, on CPU, one GPU or many under torchrun (DDP).

Read top to bottom like nanoGPT's train.py: set up processes and device, data, model, EMA and optimizer; resume
if asked; then steps until the step or wall-clock budget is used, with logging, validation, checkpoints and
callbacks (sample grids, evaluation) handed in from above. The loop knows a method only through
``method.build_model()`` and ``method.loss(model, batch, rng)``, and, where a method has them, through
``method.configure_optimizers`` and ``method.train_step`` (see :func:`train`).

The pieces :func:`train` is a sequence of are public, so benchmarks and methods import them rather than copy
them: :func:`build_optimizer`, :func:`ema_decay_at` / :func:`ema_update`, :func:`resume`, :func:`train_step`
(built from :func:`micro_batch`, :func:`no_sync`, :func:`reduce_step`, :func:`clip_gradients`,
:func:`check_finite`, :func:`apply_gradients`), :func:`validate` and :func:`save_run_checkpoint`. What a step
shares (model, optimizers, data, clock) travels in one :class:`Trainer`.

Exactness: the data order and every random draw of a step are functions of (seed, step), not of the process
count or of the history (see :mod:`genlab.rng`), so a resumed run continues the same trajectory and N
processes with the same global batch follow one process.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Config, parse_duration, save_config
from ..data import ImageDataset
from ..rng import StepRNG, mix_seed
from .. import faults
from ..files import write_text_atomic
from . import checkpoint as ck
from .dist import (DistInfo, PeerLost, _first_line, all_reduce_sum, barrier, broadcast_object, init_distributed,
                   is_peer_error, teardown)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the weights of that step were not applied."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM after saving; raised by commands that train and then do more (demo,
    compare), so they stop too. ``signal``: the signal number (exit status 128 + signal)."""

    def __init__(self, signum: Optional[int] = None):
        super().__init__(f"interrupted by signal {signum}")
        self.signal = signum


@dataclass
class LoopState:
    step: int = 0
    time_used: float = 0.0          # seconds spent in training steps (not evaluation, grids or checkpoints)
    best_val: float = math.inf
    samples_seen: int = 0


@dataclass
class Context:
    """What callbacks see."""
    cfg: Config
    method: object
    model: torch.nn.Module           # raw (unwrapped) model
    ema: torch.nn.Module
    state: LoopState
    run_dir: Path
    dist: DistInfo
    data: ImageDataset
    write_metrics: Callable[[dict], None] = lambda rec: None  # noqa: E731  (appends to metrics.jsonl)
    final: bool = False


@dataclass
class Callback:
    """Called every ``every`` steps (if > 0) and once at the end of training, on rank 0 only."""
    fn: Callable[[Context], None]
    every: int = 0


@dataclass
class TrainResult:
    state: LoopState
    run_dir: Path
    checkpoint: Optional[Path]
    interrupted: bool = False
    history: list = field(default_factory=list)
    signal: Optional[int] = None     # the signal that interrupted the run (SIGINT, SIGTERM)
    already_done: bool = False       # resumed a run whose budget was used up: nothing was trained


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the records after ``step`` from metrics.jsonl (a resumed run replays those steps), atomically; a
    damaged line (a write cut short by a kill) is dropped too."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            keep.append(line + "\n")
    write_text_atomic(path, "".join(keep))


# ------------------------------------------------------------------------------------------------ pieces

@functools.lru_cache(maxsize=2)
def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, 1, epoch)))


def data_indices(n: int, seed: int, start: int, count: int) -> torch.Tensor:
    """Indices of positions [start, start + count) of the endless stream that concatenates random
    permutations of range(n), one per epoch, seeded by (seed, epoch)."""
    out, pos = [], start
    while pos < start + count:
        epoch, off = divmod(pos, n)
        perm = _epoch_permutation(n, seed, epoch)  # drawn once per epoch, not once per micro-batch
        take = min(n - off, start + count - pos)
        out.append(perm[off:off + take])
        pos += take
    return torch.cat(out)


def lr_at(cfg: Config, step: int, progress: float) -> float:
    """Linear warmup over warmup_steps, then cosine from lr to lr * min_lr_ratio following the fraction of
    the budget used (Loshchilov & Hutter 2017, SGDR eq. 5 without restarts)."""
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return t.lr
    p = min(max(progress, 0.0), 1.0)
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def _to(v, dev):
    """A batch entry on the device: tensors, dicts of tensors (attributes); lists (captions) stay as they are."""
    if torch.is_tensor(v):
        return v.to(dev, non_blocking=True)
    if isinstance(v, dict):
        return {k: _to(u, dev) for k, u in v.items()}
    return v


def build_optimizer(model: torch.nn.Module, train_cfg) -> torch.optim.Optimizer:
    """AdamW with ``train_cfg.lr`` and ``adam_betas``; weight decay ``train_cfg.weight_decay`` on the parameters
    with more than one dimension (weights of convolutions, linear layers, embeddings), none on the others
    (biases, norm scales). ``train_cfg`` is ``cfg.train``."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() > 1 else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": train_cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=train_cfg.lr, betas=tuple(train_cfg.adam_betas))


def configure_optimizers(method, model: torch.nn.Module, train_cfg) -> list[torch.optim.Optimizer]:
    """The method's own optimizers (``method.configure_optimizers(model, train_cfg)``, where it has one and it
    returns any), else the one of :func:`build_optimizer`."""
    own = getattr(method, "configure_optimizers", None)
    opts = own(model, train_cfg) if own is not None else None
    if opts is None:
        return [build_optimizer(model, train_cfg)]
    opts = [opts] if isinstance(opts, torch.optim.Optimizer) else list(opts)
    if not opts or not all(isinstance(o, torch.optim.Optimizer) for o in opts):
        raise TypeError(f"{type(method).__name__}.configure_optimizers must return a non-empty list of "
                        f"torch.optim.Optimizer, got {opts!r}")
    return opts


def ema_decay_at(train_cfg, step: int) -> float:
    """The EMA decay of step ``step``: ``ema_decay``, or with ``ema_warmup`` min(ema_decay, (1 + step) / (10 +
    step)), so early averages do not hold on to the random initialization."""
    if train_cfg.ema_warmup:
        return min(train_cfg.ema_decay, (1 + step) / (10 + step))
    return train_cfg.ema_decay


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model (Polyak averaging, as in DDPM's released code). Batch-norm running
    statistics are averaged the same way (as timm's ModelEma does), so that an averaged network with batch norm
    (a GAN's generator) normalizes with statistics of about the same window of weights; every other buffer (step
    counters, spectral norm's power-iteration vectors) is copied."""
    ep = [p for p in ema.parameters()]
    mp = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ep, mp, 1.0 - decay)
    for (name, eb), mb in zip(ema.named_buffers(), model.buffers()):
        if eb.is_floating_point() and name.rsplit(".", 1)[-1] in ("running_mean", "running_var"):
            eb.lerp_(mb, 1.0 - decay)
        else:
            eb.copy_(mb)


def autocast_for(device: torch.device, precision: str):
    """(autocast context factory, GradScaler or None). fp32 on CPU; bf16 (or fp16 + scaling) on GPUs."""
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        else:
            precision = "fp32"
    if precision == "fp32":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return (lambda: torch.autocast(device_type=device.type, dtype=dtype)), scaler


NOT_SHAPING = ("train", "sample")   # config sections that shape neither the model nor the data
NOT_SHAPING_KEYS = ("data.cache", "data.cache_dir")   # how the pixels are read, not which


def _section_defaults(cfg: Config, name: str) -> dict:
    """The default values of section ``name`` of cfg (empty when they cannot be built)."""
    sec = getattr(cfg, name, None)
    if dataclasses.is_dataclass(sec) and not isinstance(sec, type):
        try:
            return dataclasses.asdict(type(sec)())
        except TypeError:   # a section with required fields
            pass
    return {}


def config_mismatch(saved: dict, cfg: Config, *, ignore: tuple[str, ...] = NOT_SHAPING) -> list[str]:
    """Keys whose value in ``saved`` (the config a checkpoint was written with) differs from ``cfg``, in every
    top-level entry of ``cfg.to_dict()`` except ``ignore`` (train, sample: they shape neither the model nor the
    data), so sections added later are compared too. A key (or a whole section) that ``saved`` lacks is no
    difference while its current value is the default (the checkpoint predates it); keys that only ``saved``
    has are ignored (the config no longer has them)."""
    now = cfg.to_dict()
    diffs = []
    for sec, b in now.items():
        if sec in ignore:
            continue
        a = saved.get(sec)
        if isinstance(b, dict):
            a = a if isinstance(a, dict) else {}
            defaults = _section_defaults(cfg, sec) if any(k not in a for k in b) else {}
            for k, v in b.items():
                if f"{sec}.{k}" in NOT_SHAPING_KEYS or (k not in a and k in defaults and defaults[k] == v):
                    continue
                if a.get(k) != v:
                    diffs.append(f"{sec}.{k}: checkpoint has {a.get(k)!r}, config has {v!r}")
        elif a != b:
            diffs.append(f"{sec}: checkpoint has {a!r}, config has {b!r}")
    return diffs


# ------------------------------------------------------------------------------------------------ optimizer state

def optimizers_state_dict(optimizers: list) -> dict:
    """One state dict for checkpoints: the optimizer's own for one (the format written since the start), else
    every optimizer's groups and states in one, parameter indices shifted past the previous optimizers' and each
    group tagged with ``optimizer`` (its index) and ``param_offset`` (the shift)."""
    if len(optimizers) == 1:
        return optimizers[0].state_dict()
    groups, states, off = [], {}, 0
    for j, opt in enumerate(optimizers):
        sd = opt.state_dict()
        ids = [i for g in sd["param_groups"] for i in g["params"]]
        groups += [{**g, "params": [off + i for i in g["params"]], "optimizer": j, "param_offset": off}
                   for g in sd["param_groups"]]
        states.update({off + i: s for i, s in sd["state"].items()})
        off += 1 + max(ids, default=-1)
    return {"state": states, "param_groups": groups}


def split_optimizers_state_dict(sd: dict, n: int, where: str = "the checkpoint") -> list[dict]:
    """The per-optimizer state dicts of :func:`optimizers_state_dict`'s ``sd``, for ``n`` optimizers."""
    groups = sd["param_groups"]
    tagged = bool(groups) and all("optimizer" in g for g in groups)
    have = 1 + max(int(g["optimizer"]) for g in groups) if tagged else 1
    if have != n:
        raise ck.CheckpointError(f"cannot resume from {where}: it holds the state of {have} optimizer(s), the "
                                 f"method trains with {n}")
    if not tagged:
        return [sd]
    out = []
    for j in range(n):
        mine = [g for g in groups if int(g["optimizer"]) == j]
        off = int(mine[0]["param_offset"]) if mine else 0
        ids = {i for g in mine for i in g["params"]}
        out.append({"state": {int(i) - off: s for i, s in sd["state"].items() if int(i) in ids},
                    "param_groups": [{**{k: v for k, v in g.items() if k not in ("optimizer", "param_offset")},
                                      "params": [i - off for i in g["params"]]} for g in mine]})
    return out


# the hyperparameters the config (through the freshly built optimizers), not the checkpoint, decides on resume
CONFIG_DECIDES = ("weight_decay", "betas")


def load_optimizers_state_dict(optimizers: list, sd: dict, where: str = "the checkpoint") -> None:
    """Restore ``optimizers`` from :func:`optimizers_state_dict`'s ``sd``, keeping their own CONFIG_DECIDES
    values (the learning rate is set at every step)."""
    fresh = [[{k: g[k] for k in CONFIG_DECIDES if k in g} for g in opt.param_groups] for opt in optimizers]
    for opt, part, groups in zip(optimizers, split_optimizers_state_dict(sd, len(optimizers), where), fresh):
        opt.load_state_dict(part)
        for g, keep in zip(opt.param_groups, groups):
            g.update(keep)


# ------------------------------------------------------------------------------------------------ the trainer

@dataclass
class StepResult:
    """What one step tells the loop; every process has the same values (:func:`reduce_step`)."""
    loss: float | torch.Tensor       # the step's training loss, mean over processes (a device tensor when
                                     # Trainer.lazy: read back at log intervals only)
    step_time: float                 # seconds of the step, mean over processes
    stop: bool = False               # some process received SIGINT / SIGTERM: save and stop after this step
    extras: dict = field(default_factory=dict)   # more numbers of the step to log (a GAN's generator loss ...):
                                     # process 0's values, averaged over the log window like the loss


class StopSignal:
    """SIGINT / SIGTERM set ``flag`` (the loop saves and stops after the step); a second one aborts at once. A
    context manager: installs its handler on entry (where it can: in the main thread), restores on exit."""

    def __init__(self, log: Optional[Callable[[str], None]] = None):
        self.flag, self.signal, self.log, self._old = False, None, log, {}

    def _handle(self, signum, frame):
        if self.flag:
            raise KeyboardInterrupt
        self.flag, self.signal = True, signum
        if self.log is not None:
            self.log(f"\nreceived {signal.Signals(signum).name}: stopping after this step to save a checkpoint "
                     "(press Ctrl-C again to abort without saving)")

    def __enter__(self) -> "StopSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._old = {}


@dataclass
class Trainer:
    """What the pieces of a step share: the run's config and method, the raw and the (DDP-)wrapped model, its
    EMA, the optimizers, mixed precision, the processes, the data and this process's rows of a micro-batch, the
    loop state and the step clock."""
    cfg: Config
    method: object
    model: torch.nn.Module                   # raw (unwrapped): parameters, state dicts, EMA updates
    ddp_model: torch.nn.Module               # what the loss runs: the DDP wrapper, or the model itself
    ema: torch.nn.Module
    optimizers: list                         # [build_optimizer(...)] or method.configure_optimizers(...)
    dist: DistInfo
    data: ImageDataset
    val_data: Optional[ImageDataset] = None
    run_dir: Path = Path(".")
    state: LoopState = field(default_factory=LoopState)
    scaler: Optional[torch.amp.GradScaler] = None
    autocast: Callable = contextlib.nullcontext
    data_info: dict = field(default_factory=dict)   # the data's shape, levels, classes (saved in checkpoints)
    stop: StopSignal = field(default_factory=StopSignal)
    t0: float = 0.0                          # when this step started (perf_counter)
    tail: float = 0.0                        # seconds of the previous step after its collective
    t_coll: Optional[float] = None           # when this step's collective ended
    lazy: bool = False                       # read the loss back at log intervals only (see reads_back_lazily)
    diverged: Optional[torch.Tensor] = None  # lazy: first step whose loss or gradient norm was not finite, or -1

    @property
    def opt(self) -> torch.optim.Optimizer:
        """The (first) optimizer."""
        return self.optimizers[0]

    @property
    def kit(self):
        """The loop's pieces for a method's own ``train_step`` (methods sit below the training layer and do not
        import it): ``tr.kit.micro_batch``, ``reduce_step``, ``clip_gradients``, ``check_finite``,
        ``apply_gradients``, ``average_gradients``, ``mean_over_processes``, ``ema_update``, ``ema_decay_at``,
        ``set_lr``, ``StepResult``."""
        return STEP_KIT

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @functools.cached_property
    def micro(self) -> int:
        """Images of one micro-batch, over all processes."""
        return self.cfg.train.batch_size // self.cfg.train.grad_accum

    @functools.cached_property
    def rows(self) -> slice:
        """This process's rows of a micro-batch."""
        d = self.dist
        return slice(d.rank * self.micro // d.world, (d.rank + 1) * self.micro // d.world)

    @property
    def ckpt_root(self) -> Path:
        return self.run_dir / "checkpoints"


def describe_data(data: ImageDataset, model: torch.nn.Module) -> dict:
    """What a checkpoint records of the data (shape, classes, levels; a text model's vocabulary)."""
    info = {"shape": list(data.shape), "num_classes": data.num_classes, "levels": data.levels,
            "class_names": list(data.class_names), "name": data.name}
    tokenizer = getattr(getattr(model, "text", None), "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "to_dict"):     # a text model's vocabulary goes with it
        info["vocab"] = tokenizer.to_dict()
    return info


def compile_model(model: torch.nn.Module) -> None:
    """``train.compile``: compile the network's forward (and so its backward) with ``torch.compile``, in place
    (``nn.Module.compile``: parameter names, state dicts and checkpoints stay those of the plain model; the
    EMA copy used for validation and sampling stays eager). The first steps are slow while it compiles; on CPU
    TorchInductor needs a C++ compiler (g++) and fails with its own message without one."""
    model.compile()


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DDP(model) under several processes, else the model. (DDP broadcasts the weights: a lost peer fails
    here, but so may a bug, hence is_peer_error.)"""
    try:
        return DDP(model) if info.enabled else model
    except RuntimeError as e:
        if not is_peer_error(e):
            raise
        raise PeerLost(f"process {info.rank} could not start with the other training processes "
                       f"({_first_line(e)})") from None


# ------------------------------------------------------------------------------------------------ resume

def resume(run_dir, cfg: Config, *, model: torch.nn.Module, ema: torch.nn.Module, optimizers: list,
           scaler=None, info: DistInfo = DistInfo()) -> tuple[LoopState, Path]:
    """Restore model, EMA, ``optimizers``, the GradScaler and (on process 0) the global RNG states from the
    newest intact checkpoint of ``run_dir``, and drop the metrics written after it; returns its LoopState and
    path. Process 0 repairs what an interrupted save left and chooses the checkpoint; every process loads that
    one. CheckpointError when the checkpoint's config differs from ``cfg`` (:func:`config_mismatch`) or its
    weights do not fit the model."""
    t = cfg.train
    run_dir = Path(run_dir)
    path = None
    if info.is_main:
        ck.recover(run_dir / "checkpoints")  # only the writer repairs what an interrupted save left
        path = ck.resolve_checkpoint(run_dir)   # the newest intact one; damaged ones are named on stderr
    barrier(info, timeout_s=t.dist_timeout)         # unbounded: verifying big checkpoints takes time
    path = Path(broadcast_object(str(path), info))  # every process resumes from the same checkpoint
    loaded = ck.load_checkpoint(path)
    diffs = config_mismatch(loaded["state"]["config"], cfg)
    if diffs:
        raise ck.CheckpointError(f"cannot resume from {path}: the config differs in " + "; ".join(diffs))
    ck.load_weights(model, loaded["model"], f"{path}/model.safetensors")
    ck.load_weights(ema, loaded["ema"], f"{path}/ema.safetensors")
    load_optimizers_state_dict(optimizers, loaded["optimizer"], str(path))
    s = loaded["state"]
    if scaler is not None and s.get("grad_scaler"):
        scaler.load_state_dict(s["grad_scaler"])
    state = LoopState(step=s["step"], time_used=s["time_used"], samples_seen=s.get("samples_seen", 0),
                      best_val=math.inf if s.get("best_val") is None else s["best_val"])
    if info.is_main:
        ck.set_rng_state(s["rng"])
        truncate_metrics(run_dir / "metrics.jsonl", state.step)
    return state, path


_resume = resume    # train's argument ``resume`` (a flag) hides the name inside train


# ------------------------------------------------------------------------------------------------ one step

def set_lr(optimizers: list, lr: float) -> None:
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = lr


def micro_batch(tr: Trainer, m: int) -> tuple[dict, StepRNG]:
    """Micro-batch ``m`` of the current step on the device (this process's rows) and the StepRNG of its draws,
    both functions of (seed, step, m) alone."""
    t = tr.cfg.train
    idx = data_indices(len(tr.data), t.seed, tr.state.samples_seen + m * tr.micro, tr.micro)[tr.rows]
    batch = tr.data.batch(idx)
    if tr.cfg.data.hflip:
        batch["x"] = hflip(batch["x"], flip_mask(t.seed, tr.state.step, m, tr.micro)[tr.rows])
    batch = {k: _to(v, tr.device) for k, v in batch.items()}
    rng = StepRNG(mix_seed(t.seed, 0, tr.state.step, m), tr.micro, tr.rows, tr.device)
    return batch, rng


def flip_mask(seed: int, step: int, m: int, n: int) -> torch.Tensor:
    """Which of the ``n`` images of micro-batch ``m`` of ``step`` are mirrored (probability 1/2 each): drawn for
    the whole micro-batch from (seed, step, m), so the process count and resuming do not change it."""
    g = torch.Generator().manual_seed(mix_seed(seed, 4, step, m))
    return torch.rand(n, generator=g) < 0.5


def hflip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W) with the images where ``mask`` is true mirrored left-right (data.hflip)."""
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def no_sync(tr: Trainer, m: int):
    """DDP's no_sync for every micro-batch but the last: gradients are all-reduced once per step."""
    if tr.dist.enabled and m < tr.cfg.train.grad_accum - 1:
        return tr.ddp_model.no_sync()
    return contextlib.nullcontext()


def reads_back_lazily(info: DistInfo) -> bool:
    """Whether the loop leaves the step's numbers on the device until the next log step: on a single GPU a
    read-back (``.item()``, a CUDA synchronize) stalls the host until the queued kernels are done, so the step
    does none. On CPU a read costs nothing, and several processes agree on the step time and the stop flag
    through the step's collective, so both read every step."""
    return info.device.type != "cpu" and not info.enabled


def reduce_step(tr: Trainer, step_loss) -> StepResult:
    """The one collective of a step: mean loss, mean step time, stop flag (all processes agree on all three).
    ``step_loss``: this process's loss of the step (a number or a 0-d tensor). The step time sent is this
    step's so far plus the tail of the previous one after its collective. With ``tr.lazy`` (one process on a
    GPU) there is no collective: the loss stays on the device and the step time is the host's."""
    dev = tr.device
    if tr.lazy:
        tr.t_coll = time.perf_counter()
        loss = step_loss.detach().float() if torch.is_tensor(step_loss) else torch.tensor(float(step_loss))
        return StepResult(loss=loss, step_time=tr.t_coll - tr.t0 + tr.tail, stop=tr.stop.flag)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    loss = step_loss.item() if torch.is_tensor(step_loss) else float(step_loss)
    packed = torch.tensor([loss, time.perf_counter() - tr.t0 + tr.tail, float(tr.stop.flag)],
                          dtype=torch.float64, device=dev if tr.dist.enabled else "cpu")
    all_reduce_sum(packed, tr.dist)
    tr.t_coll = time.perf_counter()
    w = tr.dist.world
    return StepResult(loss=packed[0].item() / w, step_time=packed[1].item() / w, stop=packed[2].item() > 0)


def clip_gradients(tr: Trainer, parameters=None) -> torch.Tensor:
    """Unscale (fp16) and clip the gradients to ``train.grad_clip`` (0: no clipping); their global norm."""
    if tr.scaler:
        for opt in tr.optimizers:
            tr.scaler.unscale_(opt)
    clip = tr.cfg.train.grad_clip
    params = tr.model.parameters() if parameters is None else parameters
    return torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)


def check_finite(tr: Trainer, loss, grad_norm: Optional[torch.Tensor], lr: float) -> None:
    """TrainingDiverged, before any update is applied, when the loss or the gradient norm is not finite (with
    fp16, GradScaler handles its own overflows by skipping the step). With ``tr.lazy`` the check is noted on the
    device and :func:`read_back` raises at the next log step, checkpoint or validation, so a diverged model is
    never saved."""
    if tr.lazy:
        loss = torch.as_tensor(loss, device=tr.device)
        bad = ~torch.isfinite(loss)
        if tr.scaler is None and grad_norm is not None:
            bad = bad | ~torch.isfinite(grad_norm.to(tr.device))
        if tr.diverged is None:
            tr.diverged = torch.full((), -1, dtype=torch.long, device=tr.device)
        tr.diverged = torch.where(bad & (tr.diverged < 0), tr.state.step, tr.diverged)
        return
    loss = float(loss)
    bad = None if math.isfinite(loss) else f"the loss became {loss}"
    if bad is None and tr.scaler is None and grad_norm is not None and not torch.isfinite(grad_norm):
        bad = f"the gradient norm became {grad_norm.item()} (loss {loss:.4g})"
    if bad:
        good = ck.newest_intact(tr.ckpt_root)
        raise TrainingDiverged(
            f"{bad} at step {tr.state.step} (lr {lr:.3g}); this step's update was not applied and nothing "
            f"saved was changed. Last good checkpoint: {good or 'none yet'}. Try a lower "
            f"train.lr, a smaller train.grad_clip, or train.precision=fp32.")


def read_back(tr: Trainer, lr: float) -> None:
    """With ``tr.lazy``: raise the TrainingDiverged that :func:`check_finite` noted on the device, if any."""
    if tr.diverged is None:
        return
    step = int(tr.diverged.item())
    if step >= 0:
        good = ck.newest_intact(tr.ckpt_root)
        raise TrainingDiverged(
            f"the loss or the gradient norm became non-finite at step {step} (lr {lr:.3g}; on a GPU this is read "
            f"back every train.log_every steps, so the model was updated until step {tr.state.step}); nothing "
            f"was saved after it. Last good checkpoint: {good or 'none yet'}. Try a lower train.lr, a smaller "
            "train.grad_clip, or train.precision=fp32.")


def apply_gradients(tr: Trainer, optimizers: Optional[list] = None) -> None:
    """Step ``optimizers`` (default: all; through the GradScaler with fp16) and clear their gradients."""
    optimizers = tr.optimizers if optimizers is None else optimizers
    for opt in optimizers:
        if tr.scaler:
            tr.scaler.step(opt)
        else:
            opt.step()
    if tr.scaler:
        tr.scaler.update()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)


def mean_over_processes(tr: Trainer, value: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor averaged over the processes (itself with one): what a method's own step hands to
    :func:`check_finite` before an update, so that a non-finite loss on one process stops every process."""
    if not tr.dist.enabled:
        return value
    t = value.detach().float().reshape(1).clone()
    all_reduce_sum(t, tr.dist)
    return t[0] / tr.dist.world


def average_gradients(tr: Trainer, params: list) -> None:
    """Average the gradients of ``params`` over the processes, as DDP would (for a method's own step that does
    not run its networks through the DDP wrapper, e.g. a GAN's R1 penalty, a double backward DDP cannot take)."""
    info = tr.dist
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    all_reduce_sum(flat, info)
    flat /= info.world
    off = 0
    for g in grads:
        g.copy_(flat[off:off + g.numel()].view_as(g))
        off += g.numel()


def train_step(tr: Trainer, lr: float) -> StepResult:
    """One optimisation step at ``tr.state.step``: set ``lr``; forward and backward ``train.grad_accum``
    micro-batches of ``method.loss`` (gradients accumulated, all-reduced by DDP after the last); the step's
    collective; clip; stop if it diverged; the optimizer step; the EMA update."""
    t = tr.cfg.train
    set_lr(tr.optimizers, lr)
    step_loss = torch.zeros((), device=tr.device)
    for m in range(t.grad_accum):
        batch, rng = micro_batch(tr, m)
        with no_sync(tr, m):
            with tr.autocast():
                loss = tr.method.loss(tr.ddp_model, batch, rng) / t.grad_accum
            (tr.scaler.scale(loss) if tr.scaler else loss).backward()
        step_loss += loss.detach().float()
    out = reduce_step(tr, step_loss)
    grad_norm = clip_gradients(tr)
    check_finite(tr, out.loss, grad_norm, lr)
    apply_gradients(tr)
    ema_update(tr.ema, tr.model, ema_decay_at(t, tr.state.step))
    return out


# ------------------------------------------------------------------------------------------------ validation, saving

@torch.no_grad()
def validate(tr: Trainer, net: Optional[torch.nn.Module] = None) -> Optional[float]:
    """Mean ``method.loss`` of ``net`` (default: the EMA) over the validation split, in eval mode, with draws
    seeded by (seed, batch) so every validation sees the same noise; None without a validation split."""
    val = tr.val_data
    if val is None or len(val) == 0 or not getattr(tr.method, "has_validation_loss", True):
        return None
    net = tr.ema if net is None else net
    t = tr.cfg.train
    was_training = net.training
    net.eval()
    total, count = 0.0, 0
    for k, start in enumerate(range(0, len(val), tr.micro)):
        idx = torch.arange(start, min(start + tr.micro, len(val)))
        batch = {key: _to(v, tr.device) for key, v in val.batch(idx).items()}
        rng = StepRNG(mix_seed(t.seed, 2, k), len(idx), slice(None), tr.device)
        with tr.autocast():
            total += tr.method.loss(net, batch, rng).item() * len(idx)
        count += len(idx)
    net.train(was_training)
    return total / count


def checkpoint_state(tr: Trainer) -> dict:
    """The state.json of a checkpoint: config, loop state, data description, RNG states, GradScaler."""
    s = tr.state
    return {"config": tr.cfg.to_dict(), "step": s.step, "time_used": s.time_used,
            "best_val": s.best_val if math.isfinite(s.best_val) else None,
            "samples_seen": s.samples_seen, "data": tr.data_info, "rng": ck.rng_state(tr.device),
            "world_size": tr.dist.world, "torch": torch.__version__,
            "grad_scaler": tr.scaler.state_dict() if tr.scaler is not None else None}


def save_run_checkpoint(tr: Trainer, kind: str = "step") -> Path:
    """Write checkpoints/step_N (``kind="step"``, then keep the newest ``train.keep_last``) or checkpoints/KIND
    (``best``): weights, EMA, every optimizer (:func:`optimizers_state_dict`) and :func:`checkpoint_state`."""
    st = checkpoint_state(tr)
    name = f"step_{tr.state.step:07d}" if kind == "step" else kind
    p = ck.save_checkpoint(tr.ckpt_root / name, model=tr.model.state_dict(), ema=tr.ema.state_dict(),
                           optimizer=optimizers_state_dict(tr.optimizers), state=st)
    if kind == "step":
        ck.prune(tr.ckpt_root, tr.cfg.train.keep_last)
    return p


# ------------------------------------------------------------------------------------------------ logging

@dataclass
class _Window:
    """Mean loss and speed since the last log record."""
    loss: float = 0.0
    n: int = 0
    time: float = 0.0
    images: int = 0
    extras: dict = field(default_factory=dict)

    def add(self, out: StepResult, images: int) -> None:
        self.loss += out.loss
        self.n += 1
        self.time += out.step_time
        self.images += images
        for k, v in out.extras.items():
            self.extras[k] = self.extras.get(k, 0.0) + v
            self.extras[k + "/n"] = self.extras.get(k + "/n", 0) + 1

    def record(self, state: LoopState, lr: float) -> dict:
        """The metrics record of the window; starts a new one."""
        rec = {"step": state.step, "loss": float(self.loss) / self.n, "lr": lr,
               "images_per_s": self.images / max(self.time, 1e-9), "time_used": state.time_used}
        rec.update({k: float(v) / self.extras[k + "/n"] for k, v in self.extras.items() if not k.endswith("/n")})
        self.loss, self.n, self.time, self.images, self.extras = 0.0, 0, 0.0, 0, {}
        return rec


def _progress_bar(t, state: LoopState, budget_s: Optional[float]):
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    kw = dict(dynamic_ncols=True, file=sys.stderr, mininterval=0.1 if tty else 10.0)
    if t.max_steps:
        return tqdm(total=t.max_steps, initial=state.step, unit="step", **kw)
    return tqdm(total=round(budget_s), initial=round(state.time_used), unit="s", **kw,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}{postfix}]")


def _advance_bar(bar, t, state: LoopState) -> None:
    if bar is None:
        return
    if t.max_steps:
        bar.update(1)
    elif round(state.time_used) > bar.n:
        bar.update(min(round(state.time_used), bar.total) - bar.n)


STATUS_FILE = "status.json"


def write_status(run_dir: Path, state: "LoopState", status: str, last: Optional[dict] = None, **extra) -> None:
    """``run_dir/status.json``, atomically: what a dashboard (genlab serve) reads to tell a live run from a dead
    one: the writer's pid and host, a heartbeat (Unix time), the step, the training time used, ``status``
    (running, done, interrupted, diverged) and the last metrics record. A failure to write it never stops
    training."""
    import os
    import socket

    rec = {"status": status, "pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time(),
           "step": state.step, "time_used": state.time_used, "last": last or {}, **extra}
    try:
        write_text_atomic(Path(run_dir) / STATUS_FILE, json.dumps(rec))
    except OSError:
        pass


def _append_jsonl(path: Path, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def _collective_end(tr: Trainer) -> float:
    if tr.t_coll is None:
        raise RuntimeError(f"{type(tr.method).__name__}.train_step must call genlab.train.loop.reduce_step once "
                           "per step (the step's one collective: loss, step time, stop flag)")
    return tr.t_coll


def _clock(dev: torch.device, lazy: bool = False) -> float:
    """perf_counter once the device's queued work is done (at once with ``lazy``)."""
    if dev.type == "cuda" and not lazy:
        torch.cuda.synchronize(dev)
    return time.perf_counter()


# ------------------------------------------------------------------------------------------------ the loop

def train(cfg: Config, run_dir, *, method, model: torch.nn.Module, train_data: ImageDataset,
          val_data: Optional[ImageDataset] = None, resume: bool = False, callbacks: tuple[Callback, ...] = (),
          progress: bool = True, log: Callable[[str], None] = print) -> TrainResult:
    """Train ``model`` with ``method.loss`` into ``run_dir`` (which must exist); ``resume`` continues from the
    run's latest checkpoint. The method, the freshly built model and the data are handed in from above.

    A method may take over the optimizers and the step (a GAN has two optimizers and alternates them):

    - ``method.configure_optimizers(model, train_cfg) -> list[torch.optim.Optimizer]``: called once with the raw
      model on its device (before DDP wraps it) and ``cfg.train``; its optimizers replace
      :func:`build_optimizer`'s (None: keep it). Checkpoints save every one of them and resume restores them, in
      the same order and number; the ``weight_decay`` and ``betas`` of their groups stay as built (the config,
      not the checkpoint, decides). Without ``train_step``, the default step sets the lr of and steps them all.
    - ``method.train_step(tr: Trainer, lr: float) -> StepResult``: called instead of :func:`train_step` for the
      step ``tr.state.step`` (the loop then advances the step, the data position and the clock). It sets the
      lr it wants (``lr`` is the schedule's), draws its data with :func:`micro_batch` (so resume and process
      count do not change it), runs backward passes under :func:`no_sync` and ``tr.autocast()`` as the default
      does, and calls :func:`reduce_step` exactly once with its loss of the step, returning its StepResult;
      :func:`clip_gradients`, :func:`check_finite`, :func:`apply_gradients` (GradScaler included) and
      :func:`ema_update` with :func:`ema_decay_at` are there to use, as ``tr.kit.NAME`` (methods do not import
      this layer), with :func:`average_gradients` for networks it runs outside the DDP wrapper. Its random draws must come from the
      StepRNG of :func:`micro_batch` for a resumed run to continue exactly.
    """
    cfg.validate()
    t = cfg.train
    run_dir = Path(run_dir)
    info = init_distributed(t.device, timeout_s=t.dist_timeout)
    dev = info.device
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    micro = t.batch_size // t.grad_accum
    if micro % info.world:
        raise ValueError(f"train.batch_size / train.grad_accum = {micro} must be divisible by the number of "
                         f"processes ({info.world})")
    budget_s = parse_duration(t.time_budget) if t.time_budget is not None else None

    # model, EMA, optimizer(s); from here on the global RNG differs per process (dropout masks)
    model = model.to(dev)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    torch.manual_seed(mix_seed(t.seed, 3, info.rank))
    optimizers = configure_optimizers(method, model, t)
    if t.compile:
        compile_model(model)
    autocast, scaler = autocast_for(dev, t.precision)
    state = LoopState()

    if resume:
        state, path = _resume(run_dir, cfg, model=model, ema=ema, optimizers=optimizers, scaler=scaler, info=info)
        finished = _budget_used(t, state, budget_s)
        if info.is_main:
            if finished:
                log(f"{run_dir} is already finished: step {state.step}, {state.time_used:.1f}s of training "
                    f"(train.max_steps={t.max_steps}, train.time_budget={t.time_budget}); raise one of them "
                    "to train further")
            else:
                log(f"resumed from {path} at step {state.step} ({state.time_used:.1f}s of training used)")
        if finished:
            teardown(info)
            return TrainResult(state=state, run_dir=run_dir, checkpoint=path, already_done=True)
    if info.is_main:
        save_config(cfg, run_dir / "config.yaml")  # after the resume check, so a rejected config is not kept

    stop = StopSignal(log if info.is_main else None)   # Ctrl-C / SIGTERM: finish the step, save, exit
    tr = Trainer(cfg=cfg, method=method, model=model, ddp_model=wrap_ddp(model, info), ema=ema,
                 optimizers=optimizers, dist=info, data=train_data, val_data=val_data, run_dir=run_dir,
                 state=state, scaler=scaler, autocast=autocast, data_info=describe_data(train_data, model),
                 stop=stop, lazy=reads_back_lazily(info))
    step = getattr(method, "train_step", None) or train_step
    metrics_path = run_dir / "metrics.jsonl"
    write_metrics = functools.partial(_append_jsonl, metrics_path) if info.is_main else (lambda rec: None)
    ctx = Context(cfg, method, model, ema, state, run_dir, info, train_data, write_metrics)
    last_ckpt: Optional[Path] = None
    history: list = []
    window = _Window()
    interrupted = False
    tr.ddp_model.train()
    status = functools.partial(write_status, run_dir) if info.is_main else (lambda *a, **k: None)
    status(state, "running")

    with stop:
        bar = _progress_bar(t, state, budget_s) if progress and info.is_main else None
        try:
            while not _budget_used(t, state, budget_s):
                tr.t0, tr.t_coll = _clock(dev, tr.lazy), None
                lr = lr_at(cfg, state.step, _progress(t, state, budget_s))
                out = step(tr, lr)
                tr.tail = _clock(dev, tr.lazy) - _collective_end(tr)
                state.step += 1
                faults.point(f"step.{state.step}")
                state.samples_seen += t.batch_size
                state.time_used += out.step_time
                window.add(out, t.batch_size)
                finishing = _budget_used(t, state, budget_s)

                _advance_bar(bar, t, state)
                if state.step % t.log_every == 0 or finishing:
                    rec = window.record(state, lr)
                    read_back(tr, lr)
                    write_metrics(rec)
                    status(state, "running", rec)
                    history.append(rec)
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['images_per_s']:.0f}",
                                        step=state.step, refresh=False)

                if out.stop:  # Ctrl-C / SIGTERM: save at once (torchrun kills workers 30 s later), then leave
                    read_back(tr, lr)
                    if info.is_main:
                        last_ckpt = save_run_checkpoint(tr)
                        log(f"saved {last_ckpt}; continue with --resume")
                    barrier(info, stopping=lambda: True, timeout_s=t.dist_timeout)
                    interrupted = True
                    break
                if (t.val_every and state.step % t.val_every == 0) or finishing:
                    read_back(tr, lr)
                    v = validate(tr, ema)
                    if v is not None:
                        write_metrics({"step": state.step, "val_loss": v, "time_used": state.time_used})
                        history.append({"step": state.step, "val_loss": v})
                        if v < state.best_val:
                            state.best_val = v
                            if info.is_main:
                                save_run_checkpoint(tr, "best")
                if info.is_main and ((t.ckpt_every and state.step % t.ckpt_every == 0) or finishing):
                    read_back(tr, lr)
                    last_ckpt = save_run_checkpoint(tr)
                if info.is_main:
                    for cb in callbacks:
                        if cb.every and state.step % cb.every == 0 and not finishing:
                            cb.fn(ctx)
                barrier(info, stopping=lambda: stop.flag, timeout_s=t.dist_timeout)
        except RuntimeError as e:       # a collective's PeerLost, or a gloo / nccl error inside DDP's backward
            status(state, "diverged" if isinstance(e, TrainingDiverged) else "interrupted", error=str(e)[:500])
            if not (info.enabled and is_peer_error(e)):
                raise
            cause = e if isinstance(e, PeerLost) else _first_line(e)
            good = ck.newest_intact(tr.ckpt_root)
            raise PeerLost(f"process {info.rank} lost the other training processes at step {state.step} "
                           f"({cause}); this step was not saved. Last good checkpoint: {good or 'none yet'}; "
                           "resume with --resume once every process can run") from None
        except BaseException as e:      # anything else ends the run too: its status must not stay "running"
            status(state, "interrupted", error=f"{type(e).__name__}: {e}"[:500])
            raise
        finally:
            if bar is not None:
                bar.close()

    if info.is_main and not interrupted:
        ctx.final = True
        for cb in callbacks:
            cb.fn(ctx)
    try:
        barrier(info, final=True, stopping=lambda: stop.flag, timeout_s=t.dist_timeout)
    except PeerLost as e:
        raise PeerLost(f"process {info.rank} lost the other training processes after the last step ({e}); the "
                       f"final checkpoint is {ck.newest_intact(tr.ckpt_root) or 'missing'}") from None
    status(state, "interrupted" if interrupted else "done", next((h for h in reversed(history) if "loss" in h), None))
    teardown(info)
    return TrainResult(state=state, run_dir=run_dir, checkpoint=last_ckpt, interrupted=interrupted, history=history,
                       signal=stop.signal if interrupted else None)


STEP_KIT = type("StepKit", (), {})()       # filled below: Trainer.kit
for _f in (micro_batch, reduce_step, clip_gradients, check_finite, apply_gradients, average_gradients,
           mean_over_processes, ema_update, ema_decay_at, set_lr, StepResult):
    setattr(STEP_KIT, _f.__name__, _f)


def _budget_used(t, state: LoopState, budget_s: Optional[float]) -> bool:
    return ((t.max_steps is not None and state.step >= t.max_steps)
            or (budget_s is not None and state.time_used >= budget_s))


def _progress(t, state: LoopState, budget_s: Optional[float]) -> float:
    """The fraction of the budget used: the larger of the steps' and the time's."""
    fr = []
    if t.max_steps:
        fr.append(state.step / t.max_steps)
    if budget_s:
        fr.append(state.time_used / budget_s)
    return max(fr)
