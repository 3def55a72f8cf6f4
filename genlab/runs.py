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
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import yaml

from .config import Config, ConfigError, apply_overrides, from_dict, load_config
from .data import from_model, to_model
from .methods import Method, get_method
from .train.loop import Callback, Context, TrainResult
from .train.loop import train as train_loop

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
        cfg = yaml.safe_load((p / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(cfg, dict) and {"method", "model", "train"} <= set(cfg)


def write_marker(run_dir: Path) -> None:
    marker = run_dir / RUN_MARKER
    if not marker.exists():
        from .version import __version__

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


# ------------------------------------------------------------------------------------------------ loaded runs

@dataclass
class Run:
    """A loaded run: its config, method and network(s), the checkpoint's state and where it came from.

    ``model`` is the network that was asked for (the EMA weights unless ``use_ema=False``), in eval mode on its
    device; ``ema`` is the same module when it holds the EMA weights (None for the raw ones). ``state`` is the
    checkpoint's state.json (step, time used, data description, ...); ``path`` the checkpoint directory.

    Unpacking a Run as the old 4-tuple ``cfg, method, model, state = load_run(...)`` still works, with a
    DeprecationWarning."""
    config: Config
    method: Method
    model: torch.nn.Module
    state: dict
    path: Path
    ema: Optional[torch.nn.Module] = None

    @property
    def data(self) -> dict:
        """What the model was trained on: shape, num_classes, levels, class_names, name (and a text vocab)."""
        return self.state["data"]

    @property
    def run_dir(self) -> Path:
        """The run directory (the checkpoint's grandparent for runs/NAME/checkpoints/step_N)."""
        p = Path(self.path)
        return p.parent.parent if p.parent.name == "checkpoints" else p

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def __iter__(self):
        warnings.warn("load_run returns a Run; unpacking it as (cfg, method, model, state) is deprecated: use "
                      "run.config, run.method, run.model, run.state", DeprecationWarning, stacklevel=2)
        return iter((self.config, self.method, self.model, self.state))

    def __getitem__(self, i):
        warnings.warn("load_run returns a Run; indexing it like the old tuple is deprecated: use run.config, "
                      "run.method, run.model, run.state", DeprecationWarning, stacklevel=2)
        return (self.config, self.method, self.model, self.state)[i]


def load_run(ckpt, *, which: str = "latest", use_ema: bool = True, device: str = "auto") -> Run:
    """A :class:`Run` from a run or checkpoint directory: the newest intact checkpoint (``which``: latest or
    best), verified, with only the weights file it needs read (EMA unless ``use_ema=False``)."""
    from .train import checkpoint as ck
    from .train.dist import pick_device

    which_w = "ema" if use_ema else "model"       # the raw weights only when asked for (--raw)
    path = ck.resolve_checkpoint(ckpt, which, need=(which_w,))
    loaded = ck.load_checkpoint(path, weights=(which_w,))          # verified state and weights, read once
    state = loaded["state"]
    try:
        cfg = from_dict(state["config"])
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise ck.CheckpointError(f"{path}/state.json has an unusable config: {e}") from None
    method = get_method(cfg)
    info = state["data"]
    try:
        kw = {"vocab": info["vocab"]} if info.get("vocab") else {}
        model = method.build_model(tuple(info["shape"]), info["num_classes"], levels=info["levels"], **kw)
    except (KeyError, TypeError, ValueError) as e:
        raise ck.CheckpointError(f"{path}/state.json describes data the model cannot be built for ({e})") from None
    ck.load_weights(model, loaded[which_w], f"{path}/{which_w}.safetensors")
    model.to(pick_device(device)).eval()
    state["path"] = str(path)
    return Run(config=cfg, method=method, model=model, state=state, path=Path(path),
               ema=model if use_ema else None)


def load_data(cfg: Config, split: str):
    """One split of the configured dataset."""
    from .data import load_dataset

    d = cfg.data
    return load_dataset(d.name, split, root=d.root, image_size=d.image_size, channels=d.channels,
                        labels=d.labels or None, on_bad_image=d.on_bad_image, val_size=d.val_size,
                        binarize=d.binarize, seed=d.split_seed, captions_required=cfg.model.text_cond,
                        cache=d.cache, cache_dir=d.cache_dir)


def evaluate_checkpoint(ckpt, *, which: str = "latest", use_ema: bool = True, device: str = "auto",
                        run: Optional[Run] = None, **kw) -> dict:
    """Load a run (or take ``run``) and evaluate its samples (see :func:`genlab.eval.evaluate.evaluate_run`)."""
    from .config import check_options
    from .eval.evaluate import evaluate_run

    check_options(**{k: v for k, v in kw.items() if k in ("n", "seeds", "batch_size")})
    run = run or load_run(ckpt, which=which, use_ema=use_ema, device=device)
    return evaluate_run(run.config, run.method, run.model, run.state, use_ema=use_ema, **kw)


# ------------------------------------------------------------------------------------------------ training a run

def _rank() -> int:
    """This process's rank under torchrun (before the process group exists), 0 otherwise."""
    return int(os.environ.get("RANK", "0"))


def resolve_config(config: Union[str, Config, None], overrides: Sequence[str] = ()) -> Config:
    if isinstance(config, Config):
        cfg = apply_overrides(from_dict(config.to_dict()), list(overrides))
        return cfg.validate()
    return load_config(config, list(overrides))


def describe(cfg: Config) -> str:
    """The resolved config as YAML, plus the data and model sizes (what ``--dry-run`` prints)."""
    ds = load_data(cfg, "train")
    model = get_method(cfg).build_model(ds.shape, ds.num_classes, levels=ds.levels, **text_kwargs(cfg, ds))
    n_params = sum(p.numel() for p in model.parameters())
    head = (f"# data: {ds.name}, {len(ds)} train images of shape {tuple(ds.shape)}, {ds.levels} levels, "
            f"{ds.num_classes} classes\n# model: {type(model).__name__}, {n_params / 1e6:.3f}M parameters\n")
    return head + yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def train(config: Union[str, Config, None] = None, overrides: Sequence[str] = (), *,
          name: Optional[str] = None, resume: bool = False, force: bool = False, dry_run: bool = False,
          runs_root=None, progress: bool = True) -> Optional[TrainResult]:
    """Train a model into runs/NAME (see ``genlab train --help``). Returns None for a dry run.

    config: a shipped recipe name, a YAML path or a Config; None means the run's saved config.yaml when
    resuming, else ``digits_ddpm``. overrides: ``section.key=value`` strings applied on top."""
    if resume and not name:
        raise ValueError("--resume needs the --name of the run to continue")
    if name is not None:
        check_run_name(name)
    if config is None:  # a resumed run continues with its own config; otherwise the digits recipe
        saved = Path(runs_root or RUNS_ROOT) / (name or "") / "config.yaml"
        config = str(saved) if resume and saved.exists() else "digits_ddpm"
    cfg = resolve_config(config, overrides)
    if dry_run:
        print(describe(cfg))
        return None
    if name is None:
        stem = Path(config).stem if isinstance(config, str) else cfg.method
        name = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    train_ds, val_ds = load_data(cfg, "train"), load_data(cfg, "val")
    method = get_method(cfg)
    if (cfg.model.class_cond or method.needs_labels) and train_ds.num_classes == 0:
        raise ValueError(f"model.class_cond=true needs labels, but data {cfg.data.name!r} has none here "
                         "(for a folder, set data.labels=true and put each class in its own sub-folder)")
    torch.manual_seed(cfg.train.seed)  # the same initial weights in every process
    model = method.build_model(train_ds.shape, train_ds.num_classes, levels=train_ds.levels,
                               **text_kwargs(cfg, train_ds, val_ds))
    check_captions(model, train_ds, val_ds)
    callbacks = [Callback(_grid_callback, every=cfg.train.sample_every)] if method.draws_samples else []
    if cfg.train.eval_every:
        from .eval.features import SPECS

        if cfg.data.name not in SPECS:
            hint = ("; evaluate a folder run's checkpoints after training with `genlab eval --ckpt RUN` (its "
                    "feature network is trained on the folder then)") if cfg.data.name == "folder" else ""
            raise ValueError(f"train.eval_every needs a feature network, and there is none for data "
                             f"{cfg.data.name!r} during training (available: {', '.join(SPECS)}){hint}")
        callbacks.append(Callback(_eval_callback, every=cfg.train.eval_every))
    # every check that can fail comes before this line: --force replaces the old run only now
    run_dir, lock = prepare_run_dir(name, runs_root=runs_root, resume=resume, force=force, rank=_rank())
    try:
        if _rank() == 0:
            print(f"run directory: {run_dir}", file=sys.stderr)
        return train_loop(cfg, run_dir, method=method, model=model, train_data=train_ds, val_data=val_ds,
                          resume=resume, callbacks=tuple(callbacks), progress=progress)
    finally:
        if lock is not None:
            lock.release()


def text_kwargs(cfg: Config, ds, val_ds=None) -> dict:
    """build_model's vocabulary argument for a text-conditional model: the words of the training and validation
    captions (so validation never meets an unknown word)."""
    if not cfg.model.text_cond:
        return {}
    if ds.captions is None:
        raise ValueError(f"model.text_cond=true needs captions, but data {cfg.data.name!r} has none (use "
                         "data.name=shapes, or a folder with captions.csv or one .txt per image)")
    if cfg.model.text_encoder != "learned":
        return {}
    from .nn.text import Tokenizer

    caps = list(ds.captions) + list(val_ds.captions or [] if val_ds is not None else [])
    return {"vocab": Tokenizer.from_captions(caps, cfg.model.text_max_len or None).to_dict()}


def check_captions(model, *datasets) -> None:
    """Encode every caption once before training, so a caption the text encoder cannot read (too long for a
    frozen encoder's max length) stops the run at the start with its text, not at a random step."""
    text = getattr(getattr(model, "module", model), "text", None)
    if text is None:
        return
    for ds in datasets:
        if ds is not None and ds.captions:
            text.tokenizer.encode(ds.captions)


def _training_condition(ctx: Context, n: int) -> dict:
    """What training-time grids and evaluations condition on: labels 0..K-1 in turn, the first n captions of
    the training data, and for an upsampler the first n training images downsampled."""
    cfg, data, out = ctx.cfg, ctx.data, {}
    if cfg.model.text_cond:
        out["y"] = ctx.ema.text.tokenizer.encode([data.captions[i % len(data)] for i in range(n)])
    elif cfg.model.class_cond:
        out["y"] = default_labels(n, data.num_classes, seed=0)
    if cfg.model.image_cond == "lowres":
        from .diffusion.conditioning import downsample

        idx = torch.arange(n) % len(data)
        out["lowres"] = downsample(data.batch(idx)["x"], cfg.model.lowres_size)
    return out


def _grid_callback(ctx: Context) -> None:
    """Sample grid of the EMA model during training (samples/step_N.png) and at the end (samples.png)."""
    cfg = ctx.cfg
    n = min(cfg.sample.n, 64)
    x, _ = ctx.method.sample(ctx.ema, n, seed=0, **_training_condition(ctx, n))
    x = quantize(x, ctx.data.levels)
    from .pictures import save_grid

    path = ctx.run_dir / ("samples.png" if ctx.final else f"samples/step_{ctx.state.step:07d}.png")
    save_grid(x, path, nrow=8 if n >= 8 else None)


def _eval_callback(ctx: Context) -> None:
    """FID and friends of EMA samples during training, appended to metrics.jsonl (not counted in the budget)."""
    from .eval.evaluate import evaluate_samples

    cfg, t0 = ctx.cfg, time.perf_counter()
    n = cfg.train.eval_n
    x, nfe = ctx.method.sample(ctx.ema, n, seed=0, **_training_condition(ctx, n))
    r = evaluate_samples(from_model(x, ctx.data.levels).numpy(), ctx.data.name, seed=0, root=cfg.data.root)
    rec = {"step": ctx.state.step, "time_used": ctx.state.time_used, "eval_n": n, "eval_nfe": nfe,
           "fid_train": r["fid_train"], "fid_matched_ratio": r["matched"]["ratio"], "precision": r["precision"],
           "recall": r["recall"], "entropy": r["entropy"], "eval_seconds": time.perf_counter() - t0}
    ctx.write_metrics(rec)
    print(f"step {rec['step']}: FID vs train {rec['fid_train']:.3f} ({n} samples, {nfe} evaluations, "
          f"{rec['eval_seconds']:.1f}s)", file=sys.stderr)


def default_labels(n: int, num_classes: int, seed: int = 0) -> Optional[torch.Tensor]:
    """Sample i gets class (seed + i) mod K, so a sample's label, like its noise, depends on its seed alone."""
    return (torch.arange(seed, seed + n) % num_classes) if num_classes else None


def quantize(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Round model-space images to the dataset's discrete levels (and back to [-1, 1])."""
    return to_model(from_model(x, levels), levels)
