"""The one training loop, for every method, on CPU, one GPU or many under torchrun (DDP).

Read top to bottom like nanoGPT's train.py: set up processes and device, data, model, EMA and optimizer; resume
if asked; then steps until the step or wall-clock budget is used, with logging, validation, checkpoints and
callbacks (sample grids, evaluation) handed in from above. The loop knows a method only through
``method.build_model()`` and ``method.loss(model, batch, rng)``.

Exactness: the data order and every random draw of a step are functions of (seed, step), not of the process
count or of the history (see :mod:`genlab.rng`), so a resumed run continues the same trajectory and N
processes with the same global batch follow one process.
"""
from __future__ import annotations

import contextlib
import copy
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


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model (Polyak averaging, as in DDPM's released code)."""
    ep = [p for p in ema.parameters()]
    mp = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ep, mp, 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers()):
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


def config_mismatch(saved: dict, cfg: Config, sections=("method", "data", "model", "diffusion", "ar")) -> list[str]:
    """Keys (in sections that shape the model or the data) whose saved value differs from cfg."""
    now = cfg.to_dict()
    diffs = []
    for sec in sections:
        a, b = saved.get(sec), now.get(sec)
        if isinstance(b, dict):
            for k in b:
                if (a or {}).get(k) != b[k]:
                    diffs.append(f"{sec}.{k}: checkpoint has {(a or {}).get(k)!r}, config has {b[k]!r}")
        elif a != b:
            diffs.append(f"{sec}: checkpoint has {a!r}, config has {b!r}")
    return diffs


# ------------------------------------------------------------------------------------------------ the loop

def train(cfg: Config, run_dir, *, method, model: torch.nn.Module, train_data: ImageDataset,
          val_data: Optional[ImageDataset] = None, resume: bool = False, callbacks: tuple[Callback, ...] = (),
          progress: bool = True, log: Callable[[str], None] = print) -> TrainResult:
    """Train ``model`` with ``method.loss`` into ``run_dir`` (which must exist); ``resume`` continues from the
    run's latest checkpoint. The method, the freshly built model and the data are handed in from above."""
    cfg.validate()
    t = cfg.train
    run_dir = Path(run_dir)
    ckpt_root = run_dir / "checkpoints"
    info = init_distributed(t.device, timeout_s=t.dist_timeout)
    dev = info.device
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    micro = t.batch_size // t.grad_accum
    if micro % info.world:
        raise ValueError(f"train.batch_size / train.grad_accum = {micro} must be divisible by the number of "
                         f"processes ({info.world})")
    rows = slice(info.rank * micro // info.world, (info.rank + 1) * micro // info.world)
    budget_s = parse_duration(t.time_budget) if t.time_budget is not None else None
    train_ds, val_ds = train_data, (val_data if val_data is not None and len(val_data) > 0 else None)

    # model, EMA, optimizer; from here on the global RNG differs per process (dropout masks)
    model = model.to(dev)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    torch.manual_seed(mix_seed(t.seed, 3, info.rank))
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() > 1 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=t.lr, betas=tuple(t.adam_betas))
    autocast, scaler = autocast_for(dev, t.precision)
    state = LoopState()

    if resume:
        path = None
        if info.is_main:
            ck.recover(ckpt_root)  # only the writer repairs what an interrupted save left
            path = ck.resolve_checkpoint(run_dir)   # the newest intact one; damaged ones are named on stderr
        barrier(info, timeout_s=t.dist_timeout)         # unbounded: verifying big checkpoints takes time
        path = Path(broadcast_object(str(path), info))  # every process resumes from the same checkpoint
        loaded = ck.load_checkpoint(path)
        diffs = config_mismatch(loaded["state"]["config"], cfg)
        if diffs:
            raise ck.CheckpointError(f"cannot resume from {path}: the config differs in " + "; ".join(diffs))
        ck.load_weights(model, loaded["model"], f"{path}/model.safetensors")
        ck.load_weights(ema, loaded["ema"], f"{path}/ema.safetensors")
        opt.load_state_dict(loaded["optimizer"])
        for g, wd in zip(opt.param_groups, (t.weight_decay, 0.0)):  # the config, not the checkpoint, decides
            g["weight_decay"], g["betas"] = wd, tuple(t.adam_betas)
        s = loaded["state"]
        if scaler is not None and s.get("grad_scaler"):
            scaler.load_state_dict(s["grad_scaler"])
        state = LoopState(step=s["step"], time_used=s["time_used"], samples_seen=s.get("samples_seen", 0),
                          best_val=math.inf if s.get("best_val") is None else s["best_val"])
        if info.is_main:
            ck.set_rng_state(s["rng"])
            truncate_metrics(run_dir / "metrics.jsonl", state.step)
            if _budget_used(t, state, budget_s):
                log(f"{run_dir} is already finished: step {state.step}, {state.time_used:.1f}s of training "
                    f"(train.max_steps={t.max_steps}, train.time_budget={t.time_budget}); raise one of them "
                    "to train further")
            else:
                log(f"resumed from {path} at step {state.step} ({state.time_used:.1f}s of training used)")
        if _budget_used(t, state, budget_s):
            teardown(info)
            return TrainResult(state=state, run_dir=run_dir, checkpoint=path, already_done=True)
    if info.is_main:
        save_config(cfg, run_dir / "config.yaml")  # after the resume check, so a rejected config is not kept

    try:        # (DDP broadcasts the weights: a lost peer fails here, but so may a bug, hence is_peer_error)
        ddp_model = DDP(model) if info.enabled else model
    except RuntimeError as e:
        if not is_peer_error(e):
            raise
        raise PeerLost(f"process {info.rank} could not start with the other training processes "
                       f"({_first_line(e)})") from None
    data_info = {"shape": list(train_ds.shape), "num_classes": train_ds.num_classes, "levels": train_ds.levels,
                 "class_names": list(train_ds.class_names), "name": train_ds.name}
    tokenizer = getattr(getattr(model, "text", None), "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "to_dict"):     # a text model's vocabulary goes with it
        data_info["vocab"] = tokenizer.to_dict()
    metrics_path = run_dir / "metrics.jsonl"

    def done() -> bool:
        return _budget_used(t, state, budget_s)

    def progress_frac() -> float:
        fr = []
        if t.max_steps:
            fr.append(state.step / t.max_steps)
        if budget_s:
            fr.append(state.time_used / budget_s)
        return max(fr)

    def write_metrics(rec: dict) -> None:
        if info.is_main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    @torch.no_grad()
    def validate(net) -> Optional[float]:
        if val_ds is None:
            return None
        was_training = net.training
        net.eval()
        total, count = 0.0, 0
        for k, start in enumerate(range(0, len(val_ds), micro)):
            idx = torch.arange(start, min(start + micro, len(val_ds)))
            batch = {key: _to(v, dev) for key, v in val_ds.batch(idx).items()}
            rng = StepRNG(mix_seed(t.seed, 2, k), len(idx), slice(None), dev)
            with autocast():
                total += method.loss(net, batch, rng).item() * len(idx)
            count += len(idx)
        net.train(was_training)
        return total / count

    def save(kind: str = "step") -> Path:
        st = {"config": cfg.to_dict(), "step": state.step, "time_used": state.time_used,
              "best_val": state.best_val if math.isfinite(state.best_val) else None,
              "samples_seen": state.samples_seen, "data": data_info, "rng": ck.rng_state(dev),
              "world_size": info.world, "torch": torch.__version__,
              "grad_scaler": scaler.state_dict() if scaler is not None else None}
        name = f"step_{state.step:07d}" if kind == "step" else kind
        p = ck.save_checkpoint(ckpt_root / name, model=model.state_dict(), ema=ema.state_dict(),
                               optimizer=opt.state_dict(), state=st)
        if kind == "step":
            ck.prune(ckpt_root, t.keep_last)
        return p

    # stop cleanly on Ctrl-C / SIGTERM: finish the step, save, exit
    stop = {"flag": False}

    def on_signal(signum, frame):
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"], stop["signal"] = True, signum
        if info.is_main:
            log(f"\nreceived {signal.Signals(signum).name}: stopping after this step to save a checkpoint "
                "(press Ctrl-C again to abort without saving)")

    old_handlers = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old_handlers[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not in the main thread
            pass

    bar = None
    if progress and info.is_main:
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        kw = dict(dynamic_ncols=True, file=sys.stderr, mininterval=0.1 if tty else 10.0)
        if t.max_steps:
            bar = tqdm(total=t.max_steps, initial=state.step, unit="step", **kw)
        else:
            bar = tqdm(total=round(budget_s), initial=round(state.time_used), unit="s", **kw,
                       bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}{postfix}]")
    ctx = Context(cfg, method, model, ema, state, run_dir, info, train_ds, write_metrics)
    last_ckpt: Optional[Path] = None
    history: list = []
    window_loss, window_n, window_time, window_imgs = 0.0, 0, 0.0, 0
    interrupted = False
    tail = 0.0
    ddp_model.train()

    try:
        while not done():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            lr = lr_at(cfg, state.step, progress_frac())
            for g in opt.param_groups:
                g["lr"] = lr
            step_loss = torch.zeros((), device=dev)
            for m in range(t.grad_accum):
                idx = data_indices(len(train_ds), t.seed, state.samples_seen + m * micro, micro)[rows]
                batch = {k: _to(v, dev) for k, v in train_ds.batch(idx).items()}
                rng = StepRNG(mix_seed(t.seed, 0, state.step, m), micro, rows, dev)
                sync = ddp_model.no_sync() if (info.enabled and m < t.grad_accum - 1) else contextlib.nullcontext()
                with sync:
                    with autocast():
                        loss = method.loss(ddp_model, batch, rng) / t.grad_accum
                    (scaler.scale(loss) if scaler else loss).backward()
                step_loss += loss.detach().float()
            # one collective per step: mean loss, mean step time, stop flag (all processes agree on all three)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            # (the step time sent is this step's so far plus the tail of the previous one after its collective)
            packed = torch.tensor([step_loss.item(), time.perf_counter() - t0 + tail, float(stop["flag"])],
                                  dtype=torch.float64, device=dev if info.enabled else "cpu")
            all_reduce_sum(packed, info)
            t_coll = time.perf_counter()
            loss_val, step_time, stop_votes = (packed[0].item() / info.world, packed[1].item() / info.world,
                                               packed[2].item())
            if scaler:
                scaler.unscale_(opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
            bad = None if math.isfinite(loss_val) else f"the loss became {loss_val}"
            if bad is None and scaler is None and not torch.isfinite(grad_norm):
                bad = f"the gradient norm became {grad_norm.item()} (loss {loss_val:.4g})"
            if bad:  # (fp16's GradScaler handles its own overflows by skipping the step)
                good = ck.newest_intact(ckpt_root)
                raise TrainingDiverged(
                    f"{bad} at step {state.step} (lr {lr:.3g}); this step's update was not applied and nothing "
                    f"saved was changed. Last good checkpoint: {good or 'none yet'}. Try a lower "
                    f"train.lr, a smaller train.grad_clip, or train.precision=fp32.")
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            ema_decay = min(t.ema_decay, (1 + state.step) / (10 + state.step)) if t.ema_warmup else t.ema_decay
            ema_update(ema, model, ema_decay)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            tail = time.perf_counter() - t_coll
            state.step += 1
            faults.point(f"step.{state.step}")
            state.samples_seen += t.batch_size
            state.time_used += step_time
            window_loss += loss_val
            window_n += 1
            window_time += step_time
            window_imgs += t.batch_size

            if bar is not None:
                if t.max_steps:
                    bar.update(1)
                elif round(state.time_used) > bar.n:
                    bar.update(min(round(state.time_used), bar.total) - bar.n)
            if state.step % t.log_every == 0 or done():
                rec = {"step": state.step, "loss": window_loss / window_n, "lr": lr,
                       "images_per_s": window_imgs / max(window_time, 1e-9), "time_used": state.time_used}
                write_metrics(rec)
                history.append(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['images_per_s']:.0f}", step=state.step,
                                    refresh=False)
                window_loss, window_n, window_time, window_imgs = 0.0, 0, 0.0, 0

            if stop_votes > 0:  # Ctrl-C / SIGTERM: save at once (torchrun kills workers 30 s later), then leave
                if info.is_main:
                    last_ckpt = save()
                    log(f"saved {last_ckpt}; continue with --resume")
                barrier(info, stopping=lambda: True, timeout_s=t.dist_timeout)
                interrupted = True
                break
            finishing = done()
            if (t.val_every and state.step % t.val_every == 0) or finishing:
                v = validate(ema)
                if v is not None:
                    write_metrics({"step": state.step, "val_loss": v, "time_used": state.time_used})
                    history.append({"step": state.step, "val_loss": v})
                    if v < state.best_val:
                        state.best_val = v
                        if info.is_main:
                            save("best")
            if info.is_main and ((t.ckpt_every and state.step % t.ckpt_every == 0) or finishing):
                last_ckpt = save()
            if info.is_main:
                for cb in callbacks:
                    if cb.every and state.step % cb.every == 0 and not finishing:
                        cb.fn(ctx)
            barrier(info, stopping=lambda: stop["flag"], timeout_s=t.dist_timeout)
    except RuntimeError as e:           # a collective's PeerLost, or a gloo / nccl error inside DDP's backward
        if not (info.enabled and is_peer_error(e)):
            raise
        cause = e if isinstance(e, PeerLost) else _first_line(e)
        good = ck.newest_intact(ckpt_root)
        raise PeerLost(f"process {info.rank} lost the other training processes at step {state.step} ({cause}); "
                       f"this step was not saved. Last good checkpoint: {good or 'none yet'}; resume with "
                       "--resume once every process can run") from None
    finally:
        if bar is not None:
            bar.close()
        for sig, h in old_handlers.items():
            signal.signal(sig, h)

    if info.is_main and not interrupted:
        ctx.final = True
        for cb in callbacks:
            cb.fn(ctx)
    try:
        barrier(info, final=True, stopping=lambda: stop["flag"], timeout_s=t.dist_timeout)
    except PeerLost as e:
        raise PeerLost(f"process {info.rank} lost the other training processes after the last step ({e}); the "
                       f"final checkpoint is {ck.newest_intact(ckpt_root) or 'missing'}") from None
    teardown(info)
    return TrainResult(state=state, run_dir=run_dir, checkpoint=last_ckpt, interrupted=interrupted, history=history,
                       signal=stop.get("signal") if interrupted else None)


def _budget_used(t, state: LoopState, budget_s: Optional[float]) -> bool:
    return ((t.max_steps is not None and state.step >= t.max_steps)
            or (budget_s is not None and state.time_used >= budget_s))
