"""The method protocol: what every family of generators declares, and the pieces they share.

A method is one class in one file (``methods/diffusion.py``, ``methods/flow_matching.py``, ...), registered with
``@register``. It declares

- ``name`` (the ``method:`` key of a config), ``family`` and ``label`` (how reports name it);
- its own config section, if any: ``section = "flow"`` and ``Section``, a dataclass whose fields use
  :func:`genlab.config.num` / :func:`~genlab.config.choice` (ranges and choices checked by config validation);
- its sampling options: ``Options``, a dataclass of the same kind. The ``sample`` config section, the keyword
  arguments of :func:`genlab.api.sample` and the flags of ``genlab sample`` / ``genlab eval`` are generated
  from these dataclasses (see :func:`genlab.config.sample_section` and :func:`option_flags`);
- ``inputs``: the tensors (not options) its sampler accepts besides labels: ``known`` / ``known_mask``
  (inpainting), ``lowres`` (super-resolution), ``classifier`` (a guiding network), ``clip`` with
  ``clip_tokens`` (a guiding noise-aware CLIP and each sample's caption in its vocabulary);
- ``likelihood``: what ``log_likelihood`` returns in bits/dim: ``exact``, ``bound``, ``estimate`` or ``none``;
  ``likelihood_draws``: its default number of Monte Carlo draws per image (None where it has none);

and implements ``build_model(shape, num_classes, levels, **kw)``, ``loss(model, batch, rng)``,
``sample_batch(model, seeds, opts, *, y, device, callback, **inputs)`` (one batch; :meth:`Method.sample` does
the per-sample seeds, batching and eval mode for every method), ``log_likelihood(model, x, y, *, draws, seed)``,
``nfe(opts, shape)`` (network evaluations per sample for a set of options) and ``sampling_label(opts)``.

Nothing here assumes images beyond what a sampler needs (a sample shape): grids, process pictures and FID belong
to the data kind and the report.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from .. import registry
from ..config import Config, ConfigError, check_value

LIKELIHOODS = ("exact", "bound", "estimate", "none")
INPUTS = ("known", "known_mask", "lowres", "classifier", "clip", "clip_tokens")
PER_SAMPLE = ("known", "known_mask", "lowres", "clip_tokens")   # inputs with one row per sample (cut into batches)


def register(cls):
    """Class decorator: check the declarations and add the method to :mod:`genlab.registry`."""
    for attr in ("name", "family", "label"):
        if not isinstance(getattr(cls, attr, None), str):
            raise TypeError(f"method class {cls.__qualname__} must declare {attr} as a string")
    if cls.likelihood not in LIKELIHOODS:
        raise TypeError(f"{cls.__qualname__}.likelihood must be one of {LIKELIHOODS}")
    if not dataclasses.is_dataclass(cls.Options):
        raise TypeError(f"{cls.__qualname__}.Options must be a dataclass")
    if (cls.section is None) != (cls.Section is None):
        raise TypeError(f"{cls.__qualname__}: declare both section (its name) and Section (its dataclass)")
    bad = [i for i in cls.inputs if i not in INPUTS]
    if bad:
        raise TypeError(f"{cls.__qualname__}.inputs: unknown input(s) {bad}; known: {INPUTS}")
    return registry.add(cls)


@dataclasses.dataclass
class NoOptions:
    """The sampling options of a method that takes none."""


def unwrap(model):
    """The network inside a DDP wrapper (or the network itself)."""
    return getattr(model, "module", model)


class Method:
    """Base class of every method; see the module docstring for the protocol."""
    name: str = ""
    family: str = ""
    label: str = ""
    section: Optional[str] = None
    Section: Optional[type] = None
    Options: type = NoOptions
    inputs: tuple = ()
    likelihood: str = "none"
    likelihood_draws: Optional[int] = None
    draws_samples: bool = True       # False for networks that only guide others (a noise-aware classifier)
    needs_labels: bool = False       # trained on labels even when the model is unconditional (a classifier)
    conditions: tuple = ("class",)   # conditions it supports: class, text, image
    has_validation_loss: bool = True  # False: its loss says nothing of quality (a GAN's), so no validation
                                      # loss and no checkpoints/best chosen by it

    def __init__(self, cfg: Config):
        self.cfg = cfg

    # ------------------------------------------------------------------ declarations
    @classmethod
    def option_names(cls) -> tuple:
        return tuple(f.name for f in dataclasses.fields(cls.Options))

    @classmethod
    def supports(cls, kind: str, cfg: Config) -> bool:
        """Whether this method implements a condition: ``text_cond`` or ``image_cond`` (class labels: all)."""
        return {"text_cond": "text", "image_cond": "image"}[kind] in cls.conditions

    @classmethod
    def support_note(cls, kind: str) -> str:
        """How error messages name where a condition is implemented ("" where it is not)."""
        return f"method={cls.name}" if {"text_cond": "text", "image_cond": "image"}[kind] in cls.conditions else ""

    @classmethod
    def support_detail(cls, kind: str, cfg: Config) -> str:
        """What to add to "not METHOD" in that message (e.g. the backbone that lacks it)."""
        return ""

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """Method-specific checks of a config (after the generic ones): its sampling options from the
        ``sample`` section, with ranges and choices; subclasses add their own."""
        cls.options_from(cfg.sample, prefix="sample.")

    @classmethod
    def options_from(cls, sample_cfg=None, prefix: str = "", **given):
        """The typed options: the dataclass defaults, then the non-None keys of the ``sample`` section that this
        method takes (others belong to other methods and are ignored), then ``given`` (None: unset). A given
        option this method does not take is a clear error naming the methods that do."""
        fields = {f.name: f for f in dataclasses.fields(cls.Options)}
        values = {}
        for name, f in fields.items():
            v = getattr(sample_cfg, name, None) if sample_cfg is not None else None
            if v is not None:
                check_value(prefix + name, f, v)
                values[name] = v
        check_sample_options(cls.name, cls.option_names() + tuple(cls.inputs), given)
        for name, v in given.items():
            if v is not None and name in fields:
                if not fields[name].metadata.get("late"):       # late: the method checks it against the data
                    check_value(name, fields[name], v)
                values[name] = v
        return cls.Options(**values)

    def options(self, **given):
        """This run's options: its config's ``sample`` section, then ``given``."""
        return self.options_from(self.cfg.sample, **given)

    # ------------------------------------------------------------------ costs and names
    def nfe(self, opts, shape: tuple) -> int:
        """Network evaluations per sample that ``opts`` cost (for images of ``shape``)."""
        return 1

    def sampling_label(self, opts) -> str:
        """A short name of how samples were drawn, for reports (``ddim-50``, ``k=4 random order``)."""
        return self.label

    def process_options(self, option_list: list) -> dict:
        """Which of several sampling settings (dicts) shows the generation process best (default: the first)."""
        return option_list[0]

    def extra_pictures(self, model, data=None) -> dict:
        """Pictures a report adds for this method: name -> images in [-1, 1] (e.g. one-shot's mean image, a
        VAE's reconstructions of ``data``, a few held-out images as an ImageDataset, when given)."""
        return {}

    # ------------------------------------------------------------------ to implement
    def build_model(self, shape: tuple, num_classes: int = 0, levels: int = 256, **kw) -> torch.nn.Module:
        raise NotImplementedError

    def loss(self, model, batch: dict, rng) -> torch.Tensor:
        raise NotImplementedError

    def log_likelihood(self, model, x: torch.Tensor, y: Optional[torch.Tensor] = None, *,
                       draws: Optional[int] = None, seed: int = 0, **kw) -> torch.Tensor:
        raise ValueError(f"{self.name} models have no likelihood")

    def prepare_inputs(self, model, n: int, opts, inputs: dict) -> dict:
        """Check the sampler's inputs for n samples once, before batching (default: nothing to check)."""
        return inputs

    def sample_batch(self, model, seeds: range, opts, *, y=None, device=None, callback=None, **inputs):
        """Draw one batch, sample i from seeds[i] alone: (images in [-1, 1], network evaluations per sample)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    @torch.no_grad()
    def sample(self, model, n: int, *, y: Optional[torch.Tensor] = None, seed: int = 0, batch_size: int = 256,
               callback: Optional[Callable] = None, device=None, progress: bool = False,
               **given) -> tuple[torch.Tensor, int]:
        """Draw n samples in [-1, 1]; sample i uses seed + i alone, so it does not depend on the batching.

        ``given``: sampling options (the method's ``Options``; None: the config's, then the default) and inputs
        (``known``, ``known_mask``, ``lowres``, ``classifier``). Returns (images N x ... on the CPU, network
        evaluations per sample). The callback (if given) receives the step info of the first batch only."""
        if not self.draws_samples:
            self.sample_batch(model, range(0), None)     # raises the method's own explanation
        inputs = {k: given.pop(k) for k in list(given) if k in INPUTS}
        inputs = {k: v for k, v in inputs.items() if v is not None}
        check_sample_options(self.name, self.option_names() + tuple(self.inputs), inputs)
        opts = self.options(**given)
        inputs = self.prepare_inputs(model, n, opts, inputs)
        dev = device or next(unwrap(model).parameters()).device
        was_training = model.training
        model.eval()
        out, nfe = [], 0
        starts = range(0, n, batch_size)
        if progress:
            from tqdm import tqdm
            starts = tqdm(starts, desc=f"sampling {self.sampling_label(opts)}", unit="batch", leave=False)
        try:
            for b0 in starts:
                b = min(batch_size, n - b0)
                part = {k: (v[b0:b0 + b] if k in PER_SAMPLE else v) for k, v in inputs.items()}
                x, used = self.sample_batch(model, range(seed + b0, seed + b0 + b), opts,
                                            y=None if y is None else y[b0:b0 + b].to(dev), device=dev,
                                            callback=callback if b0 == 0 else None, **part)
                out.append(x.cpu())
                nfe = max(nfe, used)
        finally:
            model.train(was_training)
        return torch.cat(out), nfe


def check_sample_options(method: str, allowed: tuple, given: dict) -> None:
    """A clear error for sampling options that do not apply to this method (e.g. --k for a diffusion model)."""
    bad = [k for k, v in given.items() if k not in allowed]
    if bad:
        k = bad[0]
        takers = registry.takers(k)
        flag = "--" + k.replace("_", "-")
        shown = [o for o in allowed if not o.startswith("known")]
        raise ValueError(f"{flag} does not apply to {method} models (it applies to: {', '.join(takers) or 'none'}); "
                         f"options for {method}: {', '.join('--' + o.replace('_', '-') for o in shown) or 'none'}")


def get_method(cfg: Config) -> Method:
    """The method object of a config."""
    try:
        cls = registry.method_class(cfg.method)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cls(cfg)


def option_flags(parser, *, exclude=()) -> None:
    """Add one CLI flag per sampling option of every registered method (``--top-k`` for ``top_k``), typed
    and described from the options' dataclasses, in an argument group per method."""
    import typing

    seen = set(exclude)
    for name, cls in registry.METHODS.items():
        fields = [f for f in dataclasses.fields(cls.Options) if f.name not in seen]
        if not fields:
            continue
        group = parser.add_argument_group(f"{name} sampling options")
        hints = typing.get_type_hints(cls.Options)
        for f in fields:
            seen.add(f.name)
            tp = hints[f.name]
            kw = {"default": None, "dest": f.name}
            if tp is bool:
                kw["type"] = _parse_bool
                kw["metavar"] = "true|false"
            elif tp in (int, float):
                kw["type"] = tp
            owners = [o for o in registry.takers(f.name) if o != name]
            choices = f.metadata.get("choices")
            help_ = f.metadata.get("help", "")
            if choices:
                help_ += f" ({' | '.join(choices)})"
            help_ += f" [{f.default}]"
            for o in owners:          # a name several methods share: each one's own choices and default
                of = next(g for g in dataclasses.fields(registry.METHODS[o].Options) if g.name == f.name)
                oc = of.metadata.get("choices")
                help_ += f"; {o}: " + (f"{' | '.join(oc)} " if oc else "") + f"[{of.default}]"
            kw["help"] = help_
            group.add_argument("--" + f.name.replace("_", "-"), **kw)


def _parse_bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("true", "yes", "1", "on"):
        return True
    if v in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"{s!r} is not true or false")


def options_given(args, names=None) -> dict:
    """The sampling options set on the command line (argparse namespace -> dict without the unset ones)."""
    names = names or registry.option_fields().keys()
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
