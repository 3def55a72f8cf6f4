"""Typed configuration: dataclasses, YAML load/save, ``a.b=value`` overrides and validation with clear errors.

Every option is a field here, so it is at once a YAML key, a command-line override (``train.lr=1e-3``) and a
Python argument (``Config(train=TrainConfig(lr=1e-3))``). Recipes ship in ``genlab/configs/*.yaml`` and are
found by name (``digits_ddpm``) or by path.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from . import registry

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message says which and what is allowed."""


# ------------------------------------------------------------------------------------------------ value ranges

SEED_MAX = 2 ** 32 - 1      # seeds are integers in 0..SEED_MAX (sample i uses seed + i; torch takes 64 bits)


@dataclass(frozen=True)
class Range:
    """The numbers a field allows: finite, in [lo, hi] (an end is open with lo_open / hi_open), whole numbers
    with ``integer``. For a list-valued field the range applies to every element, and ``length`` bounds the
    number of elements. Declared once beside its dataclass field (see :func:`num`), it is checked by
    :func:`validate` for configs and by :func:`check_options` for options of the API and the CLI."""
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    length: Optional[tuple] = None

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.lo is not None and self.hi is not None:
            if self.integer and not self.lo_open and not self.hi_open:
                return f"{kind} in {_fmt(self.lo)}..{_fmt(self.hi)}"
            return (f"{kind} in {'(' if self.lo_open else '['}{_fmt(self.lo)}, {_fmt(self.hi)}"
                    f"{')' if self.hi_open else ']'}")
        if self.lo is not None:
            return f"{kind} {'>' if self.lo_open else '>='} {_fmt(self.lo)}"
        if self.hi is not None:
            return f"{kind} {'<' if self.hi_open else '<='} {_fmt(self.hi)}"
        return f"a finite {'integer' if self.integer else 'number'}"

    def ok(self, v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if self.integer and not (isinstance(v, int) or float(v).is_integer()):
            return False
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            return False
        return True

    def check(self, key: str, value) -> None:
        """Raise ConfigError naming ``key``, the value and the allowed range unless ``value`` fits."""
        if isinstance(value, (list, tuple)):
            lo, hi = self.length or (0, None)
            if len(value) < lo or (hi is not None and len(value) > hi):
                want = f"{lo}" if hi == lo else f"{lo}..{hi}" if hi is not None else f"at least {lo}"
                raise ConfigError(f"{key}={list(value)!r} must have {want} element(s), each {self.describe()}")
            for i, v in enumerate(value):
                if not self.ok(v):
                    raise ConfigError(f"{key}={list(value)!r}: element {i} ({v!r}) must be {self.describe()}")
            return
        if self.length is not None:
            raise ConfigError(f"{key}={value!r} must be a list, e.g. {key}=[1,2], of numbers each {self.describe()}")
        if not self.ok(value):
            raise ConfigError(f"{key}={value!r} must be {self.describe()}")


def _fmt(x) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        x = int(x)
    return f"{x:g}" if isinstance(x, float) else str(x)


def num(default=dataclasses.MISSING, lo=None, hi=None, *, lo_open=False, hi_open=False, integer=None,
        length=None, factory=None, help: str = "", late: bool = False):
    """A dataclass field with its allowed range (see :class:`Range`); ``factory`` for list defaults; ``help``
    the one-line description that the CLI shows for a sampling option; ``late``: a value given to the API or
    the CLI is left to the method, which checks it against the data with a sharper message (any-order's k
    against the image's sub-pixel count)."""
    if integer is None:
        integer = isinstance(default, int) and not isinstance(default, bool) and default is not None
    meta = {"range": Range(lo, hi, lo_open, hi_open, integer, length), "help": help, "late": late}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def choice(default, allowed, *, help: str = "", other: str = ""):
    """A string field that takes one of ``allowed`` (checked by :func:`validate` and by the methods' options).
    ``other``: a description of what else the Python API accepts (e.g. an explicit permutation); such values
    are left to the method to check."""
    return field(default=default, metadata={"choices": tuple(allowed), "help": help, "other": other})


def opt(default, *, help: str = ""):
    """A field with a help line and no range (booleans, free strings)."""
    return field(default=default, metadata={"help": help})


def check_value(key: str, f: dataclasses.Field, value) -> None:
    """ConfigError unless ``value`` fits the Range or the choices declared on field ``f`` (None: unset)."""
    if value is None:
        return
    if "range" in f.metadata:
        f.metadata["range"].check(key, value)
    allowed = f.metadata.get("choices")
    if allowed and (isinstance(value, str) or not f.metadata.get("other")) and value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(allowed)}")


def check_options(**given) -> None:
    """Check options given to the API or the CLI (None: unset) against the Range declared beside the field of
    the same name in :class:`CommandOptions` or in a method's sampling options (see :func:`sample_section`).
    Fields declared ``late`` (any-order's k) are left to their method, which checks them against the data."""
    fields = {f.name: f for f in dataclasses.fields(sample_section())}
    fields.update({f.name: f for f in dataclasses.fields(CommandOptions)})
    for name, value in given.items():
        if value is None:
            continue
        f = fields.get(name)
        if f is not None and "range" in f.metadata and not f.metadata.get("late"):
            f.metadata["range"].check(name, value)


BIG = 10 ** 12     # upper end of counts that have no natural limit


@dataclass
class DataConfig:
    name: str = "digits"               # digits | shapes | mnist | fashion-mnist | cifar10 | folder
    root: Optional[str] = None         # directory of the data (default: $GENLAB_DATA or ~/.cache/genlab/data/NAME)
    image_size: Optional[int] = num(None, 4, 4096, integer=True)  # folder: required; others: native size when unset
    channels: Optional[int] = None     # folder: 1 (grayscale) or 3 (RGB, default)
    labels: bool = False               # folder: labels from sub-folder names (digits/MNIST always have labels)
    on_bad_image: str = "error"        # folder: error | skip
    val_size: Optional[int] = num(None, 0, BIG, integer=True)  # validation images carved from the train split
    binarize: bool = False             # mnist-style: threshold at 128 (2 levels)
    hflip: bool = False                # training batches: mirror each image left-right with probability 1/2
    split_seed: int = num(0, 0, SEED_MAX)  # seed of the validation split (MNIST, folders; digits' is fixed)
    cache: bool = True                 # folder: decode once into a memory-mapped cache (false: into memory, every load)
    cache_dir: Optional[str] = None    # folder: where caches go (default: default_data_root()/folder-cache)


@dataclass
class ModelConfig:
    width: int = num(32, 1, 4096)      # channels of the first UNet level
    channel_mults: list = num(None, 1, 64, integer=True, length=(1, 8), factory=lambda: [1, 2])
    num_res_blocks: int = num(2, 1, 64)
    attn_resolutions: list = num(None, 1, 4096, integer=True, length=(0, 16), factory=lambda: [4])
    num_heads: int = num(4, 1, 256)
    dropout: float = num(0.0, 0.0, 1.0, hi_open=True)
    class_cond: bool = False           # condition on the dataset's labels (adds a null class for guidance)
    text_cond: bool = False            # condition on the dataset's captions (GLIDE-style; empty caption = null)
    text_encoder: str = "learned"      # learned (trained with the generator) | minilm (frozen all-MiniLM-L6-v2)
    text_width: int = num(128, 1, 4096)  # learned text encoder width
    text_layers: int = num(2, 0, 64)   # learned text encoder blocks
    text_max_len: int = num(0, 0, 4096)  # tokens per caption incl. the start token (0: longest caption + 1)
    image_cond: str = "none"           # none | lowres (super-resolution upsampler) | mask (GLIDE inpainting model)
    lowres_size: int = num(0, 0, 4096)  # image_cond=lowres: side of the low-resolution conditioning image


@dataclass
class DiffusionConfig:
    schedule: str = "cosine"           # linear (DDPM) | cosine (improved DDPM)
    timesteps: int = num(1000, 1, 100_000)
    beta_start: float = num(1e-4, 0.0, 1.0, lo_open=True, hi_open=True)   # linear schedule only
    beta_end: float = num(0.02, 0.0, 1.0, lo_open=True, hi_open=True)     # linear schedule only
    prediction: str = "v"              # eps | x0 | v
    loss_weight: str = "none"          # none | min_snr (Hang et al. 2023)
    min_snr_gamma: float = num(5.0, 0.0, 1e6, lo_open=True)
    cond_drop: float = num(0.0, 0.0, 1.0, hi_open=True)  # probability of replacing the label by the null class
    clip_sample: bool = True           # clip x0_hat to [-1, 1] while sampling
    lowres_aug: float = num(0.2, 0.0, 1.0)  # upsampler: noise augmentation of the low-res image, max fraction of
                                       # T in training (Ho et al. 2022, cascaded diffusion); sample.lowres_t later


@dataclass
class ARConfig:
    """Backbone of method ``autoregressive`` (``any_order`` and ``diffusion`` use the UNet of ``model``)."""
    backbone: str = choice("pixelcnn", ("pixelcnn", "transformer"))  # pixelcnn (gated, van den Oord et al. 2016) | transformer (causal, KV cache)
    width: int = num(64, 1, 4096)      # PixelCNN channels / transformer model width
    layers: int = num(8, 1, 256)       # gated layers / transformer blocks
    kernel_size: int = num(5, 1, 63)   # PixelCNN only (odd)
    heads: int = num(4, 1, 256)        # transformer only; must divide width
    dropout: float = num(0.0, 0.0, 1.0, hi_open=True)


@dataclass
class TrainConfig:
    batch_size: int = num(128, 1, 2 ** 20)  # global batch (split over processes and accumulation steps)
    grad_accum: int = num(1, 1, 4096)
    lr: float = num(2e-3, 0.0, 10.0, lo_open=True)
    min_lr_ratio: float = num(0.05, 0.0, 1.0)  # cosine decays to lr * min_lr_ratio
    lr_schedule: str = "cosine"        # cosine | constant (both after linear warmup)
    warmup_steps: int = num(100, 0, BIG)
    weight_decay: float = num(0.0, 0.0, 100.0)
    adam_betas: list = num(None, 0.0, 1.0, hi_open=True, integer=False, length=(2, 2), factory=lambda: [0.9, 0.99])
    grad_clip: float = num(1.0, 0.0, 1e9)  # max global grad norm; 0 disables
    ema_decay: float = num(0.999, 0.0, 1.0, hi_open=True)
    ema_warmup: bool = True            # decay = min(ema_decay, (1 + step) / (10 + step))
    max_steps: Optional[int] = num(None, 1, BIG, integer=True)  # step budget
    time_budget: Optional[str] = None  # wall-clock budget of training steps only: "300s", "5m", "1h"
    precision: str = "auto"            # auto (bf16/fp16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"               # auto | cpu | cuda | cuda:N | mps
    seed: int = num(0, 0, SEED_MAX)
    log_every: int = num(25, 1, BIG)
    val_every: int = num(500, 0, BIG)  # steps between validation losses (0: only at the end)
    ckpt_every: int = num(1000, 0, BIG)  # steps between checkpoints (0: only at the end)
    keep_last: int = num(2, 0, 10 ** 6)  # checkpoints kept besides the best by validation loss
    sample_every: int = num(0, 0, BIG)  # steps between sample grids written to the run (0: only at the end)
    eval_every: int = num(0, 0, BIG)   # steps between FID evaluations (0: none); also at the end when > 0
    eval_n: int = num(500, 4, 10 ** 7)  # samples per evaluation (drawn with the sample.* settings, EMA weights)
    num_threads: int = num(0, 0, 4096)  # torch CPU threads (0: leave torch's default)
    compile: bool = False              # torch.compile the network for training (first steps slower; on CPU needs a C++ compiler)
    dist_timeout: float = num(120.0, 1.0, 86400.0)  # DDP: seconds a process waits for a lost peer before it exits


@dataclass
class SampleBase:
    """The sampling keys every method has; each method adds its own (see :func:`sample_section`)."""
    n: int = num(64, 1, 10 ** 7, help="samples drawn for grids during training")
    use_ema: bool = opt(True, help="sample with the EMA weights")


_SAMPLE_CLASSES: dict = {}


def sample_section() -> type:
    """The ``sample`` section: :class:`SampleBase` plus every registered method's sampling options (its
    ``Options`` dataclass), each defaulting to None, "the method's own default". So config keys, the API's
    keyword arguments and the CLI's flags all come from the methods' option dataclasses. A key of another
    method is accepted and ignored (one override list serves every method of a comparison); each method
    checks the keys it takes when it builds its options."""
    fields_ = registry.option_fields()
    key = tuple((n, tuple(m)) for n, (_, m) in fields_.items())
    cls = _SAMPLE_CLASSES.get(key)
    if cls is None:
        extra = []
        for name, (f, owners) in fields_.items():
            if name in ("n", "use_ema"):
                continue
            tp = typing.get_type_hints(registry.METHODS[owners[0]].Options)[name]
            extra.append((name, Optional[tp], field(default=None, metadata=dict(f.metadata, methods=tuple(owners)))))
        cls = dataclasses.make_dataclass("SampleConfig", extra, bases=(SampleBase,))
        cls.__module__ = __name__
        _SAMPLE_CLASSES[key] = cls
    return cls


def _new_sample():
    return sample_section()()


@dataclass
class CommandOptions:
    """Ranges of the API's and the CLI's options that are not config keys (checked with :func:`check_options`)."""
    seed: int = num(0, 0, SEED_MAX)            # sample i uses seed + i
    batch_size: int = num(256, 1, 2 ** 20)     # samples per batch
    seeds: int = num(1, 1, 1000)               # sampling seeds of an evaluation
    n: int = num(64, 1, 10 ** 7)               # samples
    guidance: float = num(1.0, 0.0, 1000.0)    # classifier-free guidance scale (1: none, 0: unconditional)
    classifier_scale: float = num(1.0, 0.0, 1e6)  # classifier guidance scale
    nrow: int = num(8, 1, 4096)                # images per grid row
    resample: int = num(1, 1, 1000)            # RePaint resampling
    t_samples: int = num(1, 1, 10 ** 7)        # random timesteps per image of the diffusion bound
    draws: int = num(16, 1, 10 ** 6)           # any-order likelihood draws per image


@dataclass
class Config:
    method: str = "diffusion"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    ar: ARConfig = field(default_factory=ARConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleBase = field(default_factory=_new_sample)

    def __post_init__(self):
        self.__dict__["_extra"] = {}

    def __getattr__(self, name):
        """Sections that methods declare in their own files (registered in :mod:`genlab.registry`)."""
        extra = self.__dict__.get("_extra")
        secs = registry.sections()
        if extra is not None and name in secs:
            if name not in extra:
                extra[name] = secs[name]()
            return extra[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def sections(self) -> dict:
        """Every section by name: the built-in ones, then the methods' own."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "method"}
        out.update({name: getattr(self, name) for name in registry.sections()})
        return out

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update({name: dataclasses.asdict(getattr(self, name)) for name in registry.sections()})
        return d

    def validate(self) -> "Config":
        validate(self)
        return self


def _choices() -> dict:
    """Allowed values of the built-in sections, taken from the registries that implement them (the methods'
    own keys declare theirs with :func:`choice`)."""
    from .data import DATASETS
    from .diffusion.process import PREDICTIONS
    from .diffusion.schedules import SCHEDULES

    return {
        "data.name": DATASETS,
        "data.on_bad_image": ("error", "skip"),
        "diffusion.schedule": SCHEDULES,
        "diffusion.prediction": PREDICTIONS,
        "diffusion.loss_weight": ("none", "min_snr"),
        "model.text_encoder": ("learned", "minilm"),
        "model.image_cond": ("none", "lowres", "mask"),
        "train.lr_schedule": ("cosine", "constant"),
        "train.precision": ("auto", "fp32", "bf16", "fp16"),
    }


def parse_duration(value) -> float:
    """Seconds from ``300``, ``"300s"``, ``"5m"``, ``"1.5h"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = f"{value}s"
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|sec|m|min|h)?\s*", str(value))
    if not m:
        raise ConfigError(f"train.time_budget={value!r} is not a duration; write e.g. 300s, 5m or 1h")
    scale = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
    seconds = float(m.group(1)) * scale
    if not seconds <= 10 * 365 * 86400:          # also refuses inf (a number too long for a float)
        raise ConfigError(f"train.time_budget={value!r} is longer than ten years; give a finite budget")
    return seconds


def check_ranges(obj, prefix: str = "") -> None:
    """Check every field of a config (sections recursively) against the Range or choices declared beside it.
    Keys of the ``sample`` section that belong to other methods are checked by range only (their methods'
    choices may differ: each method checks its own when it builds its options)."""
    for name, f in _fields(obj).items():
        v = getattr(obj, name)
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(v):
            check_ranges(v, key + ".")
        elif f is not None and v is not None:
            if "range" in f.metadata:
                r = f.metadata["range"]
                r.check(key, v)
                if r.integer and isinstance(v, list):       # [1.0, 2] -> [1, 2]: layers count in whole numbers
                    setattr(obj, name, [int(e) for e in v])
            elif "choices" in f.metadata and "methods" not in f.metadata:
                check_value(key, f, v)


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the first bad value and what is allowed: the built-in sections here, then the
    method's own checks (its section, its sampling options, the conditions it supports)."""
    if cfg.method not in registry.METHODS:
        raise ConfigError(f"method={cfg.method!r} is not allowed; choose one of {', '.join(registry.names())}")
    for key, allowed in _choices().items():
        v = get_key(cfg, key)
        if v not in allowed:
            raise ConfigError(f"{key}={v!r} is not allowed; choose one of {', '.join(allowed)}")

    check_ranges(cfg)
    if cfg.data.channels not in (None, 1, 3):
        raise ConfigError(f"data.channels={cfg.data.channels} must be 1 (grayscale) or 3 (RGB)")
    if cfg.ar.kernel_size % 2 == 0:
        raise ConfigError(f"ar.kernel_size={cfg.ar.kernel_size} must be odd")
    if cfg.ar.width % cfg.ar.heads:
        raise ConfigError(f"ar.width={cfg.ar.width} must be divisible by ar.heads={cfg.ar.heads}")
    m = cfg.model
    if m.text_cond and m.class_cond:
        raise ConfigError("model.class_cond and model.text_cond are exclusive: condition on labels or on captions")
    for kind, on in (("image_cond", m.image_cond != "none"), ("text_cond", m.text_cond)):
        if on and not registry.METHODS[cfg.method].supports(kind, cfg):
            value = f"model.image_cond={m.image_cond}" if kind == "image_cond" else "model.text_cond"
            where = " and for ".join(c.support_note(kind) for c in registry.METHODS.values()
                                     if c.support_note(kind))
            raise ConfigError(f"{value} is implemented for {where}, not {cfg.method}"
                              + registry.METHODS[cfg.method].support_detail(kind, cfg))
    if m.text_cond and m.text_encoder == "learned" and (m.text_width <= 0 or m.text_layers < 0
                                                        or m.text_width % m.num_heads):
        raise ConfigError(f"model.text_width={m.text_width} must be > 0 and divisible by model.num_heads="
                          f"{m.num_heads}, model.text_layers >= 0")
    if m.text_max_len < 0 or m.text_max_len == 1:
        raise ConfigError(f"model.text_max_len={m.text_max_len} must be 0 (automatic) or >= 2")
    if m.text_cond and m.text_encoder == "minilm" and m.text_max_len and not 3 <= m.text_max_len <= 512:
        raise ConfigError(f"model.text_max_len={m.text_max_len}: the MiniLM encoder reads 3..512 tokens "
                          "([CLS], the word pieces, [SEP]); 0 means 24")
    if m.image_cond == "lowres" and (m.text_cond or m.class_cond):
        raise ConfigError("an upsampler (model.image_cond=lowres) is conditioned on its low-resolution image only; "
                          "set model.class_cond=false and model.text_cond=false")
    if m.image_cond == "lowres" and m.lowres_size < 2:
        raise ConfigError("model.image_cond=lowres needs model.lowres_size (side of the low-resolution input), "
                          f"got {m.lowres_size}")
    if cfg.diffusion.beta_start > cfg.diffusion.beta_end:
        raise ConfigError("diffusion.beta_start and beta_end must satisfy 0 < beta_start <= beta_end < 1")
    if cfg.train.time_budget is not None:
        if parse_duration(cfg.train.time_budget) <= 0:
            raise ConfigError(f"train.time_budget={cfg.train.time_budget!r} must be positive")
    if cfg.train.max_steps is None and cfg.train.time_budget is None:
        raise ConfigError("set a budget: train.max_steps=N and/or train.time_budget=300s")
    if cfg.train.batch_size % cfg.train.grad_accum:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} must be divisible by "
                          f"train.grad_accum={cfg.train.grad_accum}")
    registry.METHODS[cfg.method].check_config(cfg)


# ----------------------------------------------------------------------------------------------- key access

def _fields(obj) -> dict:
    """name -> dataclasses.Field of a config object; the methods' own sections of a Config map to None."""
    out = {f.name: f for f in dataclasses.fields(obj)}
    if isinstance(obj, Config):
        out.update({name: None for name in registry.sections()})
    return out


def _resolve(cfg, key: str):
    """(parent object, field name) of a dotted key; unknown keys get the closest suggestion."""
    parts = key.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        fields = _fields(obj)
        if part not in fields:
            prefix = ".".join(parts[:i])
            known = [f"{prefix}.{n}" if prefix else n for n in fields]
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint} Known keys here: {', '.join(known)}")
        if i == len(parts) - 1:
            return obj, part
        obj = getattr(obj, part)
        if not dataclasses.is_dataclass(obj):
            raise ConfigError(f"config key {'.'.join(parts[:i + 1])!r} is a value, not a section")


def get_key(cfg, key: str):
    obj, name = _resolve(cfg, key)
    return getattr(obj, name)


def _coerce(value, tp, key: str):
    """Convert a YAML/CLI value to the field's declared type, or say what was expected."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, inner, key)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if tp is list:
            if isinstance(value, str):
                value = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
            if isinstance(value, tuple):
                value = list(value)
            if not isinstance(value, list):
                raise ValueError
            return value
    except (TypeError, ValueError, OverflowError, yaml.YAMLError):
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"{key}={value!r} is not a valid {name}") from None
    return value


def set_key(cfg, key: str, value) -> None:
    obj, name = _resolve(cfg, key)
    if dataclasses.is_dataclass(getattr(obj, name)):
        raise ConfigError(f"{key!r} is a section; set its keys, e.g. {key}.{dataclasses.fields(getattr(obj, name))[0].name}=...")
    hints = typing.get_type_hints(type(obj))
    setattr(obj, name, _coerce(value, hints[name], key))


def apply_dict(cfg, d: dict, prefix: str = "") -> None:
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            sub = get_key(cfg, key)
            if not dataclasses.is_dataclass(sub):
                raise ConfigError(f"config key {key!r} takes a value, not a mapping")
            apply_dict(cfg, v, key + ".")
        else:
            set_key(cfg, key, v)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars, then coerced to the field type)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=1e-3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        set_key(cfg, key.strip(), value)
    return cfg


def find_config(name_or_path: str) -> Path:
    """A shipped recipe by name (``digits_ddpm``) or a YAML file by path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        if not p.is_file():
            raise ConfigError(f"config {p} is a directory, not a YAML file")
        return p
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    names = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"no config named {name_or_path!r}.{hint} Shipped configs: {', '.join(names)}; "
                      f"or give a path to a YAML file.")


def from_dict(d: dict) -> Config:
    cfg = Config()
    apply_dict(cfg, d)
    return cfg


def load_config(name_or_path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Defaults, then the YAML recipe, then overrides; validated."""
    cfg = Config()
    if name_or_path:
        path = find_config(name_or_path)
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        if "methods" in d:
            raise ConfigError(f"{path} is a comparison spec (it lists methods), not a training recipe; run it with "
                              f"`genlab compare --config {name_or_path}`")
        try:
            apply_dict(cfg, d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    apply_overrides(cfg, overrides or [])
    return cfg.validate()


def save_config(cfg: Config, path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
