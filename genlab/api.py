"""The Python API; the CLI is a thin layer over these functions (every CLI option is an argument here).

    import genlab
    genlab.train("digits_ddpm", ["train.time_budget=60s"], name="quick")
    genlab.sample("runs/quick", n=64, sampler="ddim", steps=50, out="grid.png")
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import registry
from .config import Config, check_options
from .data import from_model, to_model
from .report.process import process_picture  # noqa: F401
from .runs import (RUNS_ROOT, Run, default_labels, describe, evaluate_checkpoint, load_data, load_run,  # noqa: F401
                   quantize, resolve_config, text_kwargs, train)


def resolve_labels(labels, n: int, num_classes: int, class_names, seed: int, conditional: bool):
    """The labels of n samples: one given label for all, one per sample, or by default (seed + i) mod K;
    None for an unconditional model (where giving labels is an error)."""
    if not conditional:
        if labels is not None:
            raise ValueError("this model is unconditional (model.class_cond is false); labels need --classifier "
                             "(classifier guidance) or a class-conditional model")
        return None
    if labels is None:
        return default_labels(n, num_classes, seed)
    # checked as Python numbers before they become a tensor (a huge label would overflow int64)
    flat = labels.flatten().tolist() if torch.is_tensor(labels) else np.ravel(np.asarray(labels, dtype=object)).tolist()
    bad = [v for v in flat if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < num_classes]
    if bad:
        raise ValueError(f"labels must be in 0..{num_classes - 1} (classes: "
                         f"{', '.join(map(str, class_names or range(num_classes)))}); got {bad[0]!r}")
    y = torch.as_tensor(flat).long()
    y = y.expand(n).clone() if len(y) == 1 else y
    if len(y) != n:
        raise ValueError(f"got {len(y)} labels for {n} samples (give one label for all, or one per sample)")
    return y


def sample(ckpt, *, n: int = 64, seed: int = 0, batch_size: int = 256, out=None, process: bool = False,
           labels: Optional[Sequence[int]] = None, which: str = "latest", use_ema: bool = True,
           device: str = "auto", progress: bool = True, classifier=None,
           prompt: Union[str, Sequence[str], None] = None, upsampler=None, lowres_t: Optional[float] = None,
           nrow: Optional[int] = None, clip=None, **options):
    """Draw n samples from a checkpoint. Sample i uses seed + i alone (reproducible by itself).

    out: ``*.png`` a grid; ``*.npy`` a uint8 array of dataset levels (N, C, H, W); a directory (ending in / or
    existing) one PNG per sample named by its seed; None returns the images. ``process=True`` writes a picture
    of the generation process for the first few samples instead (diffusion: x_t and x0_hat over the steps;
    autoregressive methods: the canvas filling in).
    ``options``: the method's sampling options, the fields of its ``Options`` dataclass (``genlab sample
    --help`` lists them per method; an option of another method is a clear error), e.g. diffusion sampler,
    steps, eta; autoregressive / oneshot / any_order temperature, top_k; any_order k (sub-pixels per step) and
    order; ``guidance`` (classifier-free guidance scale; 1 = none) for conditional models.
    ``classifier``: a noise-aware classifier run (``method: classifier``, same diffusion schedule) for classifier
    guidance with ``classifier_scale`` (default 1; 0 = none); it also works for an unconditional generator.
    ``clip``: a noise-aware CLIP run (``method: clip``, same diffusion schedule and, for a text-conditional
    generator, the same caption vocabulary) for CLIP guidance towards ``prompt`` with ``clip_scale`` (GLIDE).
    ``labels``: one label per sample, or a single label for all of them.
    ``prompt``: a caption, or several (for a text-conditional model): with P prompts, sample i asks for prompt
    i * P // n (P blocks; one grid row each when P divides n); no prompt draws unconditional samples.
    ``upsampler``: a super-resolution run (``model.image_cond=lowres``) applied to the samples (a cascade);
    ``lowres_t`` its conditioning noise level (fraction of T; default its sample.lowres_t).
    ``nrow``: images per row of a PNG grid (default: one row per prompt, else square).
    Returns (images in [-1, 1] quantized to the dataset's levels, network evaluations per sample, output path).
    """
    from .report.images import save_grid

    check_options(n=n, seed=seed, batch_size=batch_size, lowres_t=lowres_t, nrow=nrow, **options)
    out_kind = None if process else output_kind(out)
    run = load_run(ckpt, which=which, use_ema=use_ema, device=device)
    cfg, method, model, state = run.config, run.method, run.model, run.state
    opts = {key: v for key, v in options.items() if v is not None}
    if not method.draws_samples:
        method.sample(model, n)          # the method's own explanation (a classifier guides, draws nothing)
    method.options(**opts)               # an option of another method: one clear error, before any work
    guidance = opts.get("guidance")
    if classifier is not None:
        opts["classifier"] = load_classifier(classifier, cfg, device)
    elif opts.get("classifier_scale") is not None:
        raise ValueError("--classifier-scale needs --classifier CKPT (a noise-aware classifier run)")
    if clip is not None:
        if prompt is None:
            raise ValueError("CLIP guidance steers towards a caption: give --prompt \"...\" with --clip")
        opts["clip"] = load_clip(clip, cfg, device, generator=model)
        opts["clip_tokens"] = prompt_tokens(opts["clip"], prompt, n)
    elif opts.get("clip_scale") is not None:
        raise ValueError("--clip-scale needs --clip CKPT (a noise-aware CLIP run, method=clip)")
    if cfg.model.image_cond == "lowres":
        raise ValueError(f"{ckpt} is an upsampler (it needs low-resolution images): sample a base model and "
                         f"chain it, genlab sample --ckpt BASE --upsampler {ckpt}")
    info = state["data"]
    levels = info["levels"]
    nk = info["num_classes"] or (opts["classifier"].num_classes if classifier is not None else 0)
    if cfg.model.text_cond:
        if labels is not None:
            raise ValueError("this model is text-conditional: ask with --prompt \"a red circle ...\", not --class")
        if classifier is not None:
            raise ValueError("classifier guidance steers towards class labels; this model is text-conditional "
                             "(use --guidance for classifier-free guidance on the prompt)")
        y = prompt_tokens(model, prompt, n)
    else:
        if prompt is not None and clip is None:
            kind = "class-conditional (use --class)" if cfg.model.class_cond else "unconditional"
            raise ValueError(f"--prompt needs a text-conditional model (model.text_cond=true); this one is {kind}")
        y = resolve_labels(labels, n, nk, info["class_names"], seed, cfg.model.class_cond or classifier is not None)
    if y is None and (guidance is not None and guidance != 1.0):
        raise ValueError("guidance needs a condition: give a prompt (--prompt) for a text-conditional model, "
                         "labels (--class / --labels) for a class-conditional one")
    if nrow is not None and nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    if lowres_t is not None and upsampler is None:
        raise ValueError("--lowres-t sets the upsampler's conditioning noise: it needs --upsampler UP")
    up = None
    if upsampler is not None:     # load and check it before spending time on the base samples
        up = load_upsampler(upsampler, tuple(info["shape"]), device=device)
    if nrow is None and prompt is not None and not isinstance(prompt, str) and len(prompt) > 1 \
            and n % len(prompt) == 0:      # one grid row per prompt when they divide the samples evenly
        nrow = n // len(prompt)
    if process:
        if upsampler is not None:
            raise ValueError("--process draws the base model's process; leave out --upsampler")
        path = Path(out or "process.png")
        if path.suffix.lower() != ".png":
            raise ValueError(f"--process writes a PNG picture; got --out {path}")
        if "clip_tokens" in opts:
            opts["clip_tokens"] = opts["clip_tokens"][:8]
        x, nfe = process_picture(method, model, min(n, 8), path, y=None if y is None else y[:8], seed=seed, **opts)
        return quantize(x, levels), nfe, path
    x, nfe = method.sample(model, n, y=y, seed=seed, batch_size=batch_size, progress=progress, **opts)
    x = quantize(x, levels)
    if up is not None:
        x, up_nfe, levels = upsample(up, x, seed=seed, batch_size=batch_size, progress=progress, lowres_t=lowres_t)
        nfe += up_nfe
    if out is None:
        return x, nfe, None
    path = Path(out)
    if out_kind == "dir":
        from .report.images import grid

        path.mkdir(parents=True, exist_ok=True)
        (path / SAMPLES_MARKER).touch()
        for i in range(n):
            grid(x[i:i + 1], pad=0).save(path / f"{seed + i:06d}.png")
    elif out_kind == "npy":
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, from_model(x, levels).numpy().astype(np.uint8))
    else:
        save_grid(x, path, nrow=nrow)
    return x, nfe, path


SAMPLES_MARKER = ".genlab-samples"


def output_kind(out) -> Optional[str]:
    """What ``--out`` asks for (png | npy | dir), checked before any sampling: a directory is filled only when it
    is new, empty or one that genlab sample filled before (it holds .genlab-samples), so a user's folder of PNGs
    is never overwritten."""
    if out is None:
        return None
    path = Path(out)
    if str(out).endswith(("/", os.sep)) or path.is_dir():
        if path.exists() and not path.is_dir():
            raise ValueError(f"--out {out} is a file, not a directory")
        if path.is_dir() and any(path.iterdir()) and not (path / SAMPLES_MARKER).exists():
            raise ValueError(f"--out {out} is a directory with files genlab did not write; give a new or empty "
                             "directory for one PNG per sample")
        return "dir"
    if path.suffix.lower() in (".npy", ".png"):
        return path.suffix.lower()[1:]
    raise ValueError(f"--out {out}: use a .png (grid), a .npy (array of levels) or a directory ending in /")


def prompt_tokens(model, prompt, n: int) -> Optional[torch.Tensor]:
    """Caption tokens (n, L) for a text-conditional model: one prompt for all, or P prompts in P equal blocks
    (sample i asks for prompt i * P // n); None without a prompt (unconditional samples)."""
    if prompt is None:
        return None
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        return None
    if len(prompts) > n:
        raise ValueError(f"{len(prompts)} prompts for {n} samples: ask for at least one sample per prompt (--n)")
    return model.text.tokenizer.encode([prompts[i * len(prompts) // n] for i in range(n)])


def load_upsampler(ckpt, base_shape: Optional[tuple] = None, *, which: str = "latest", device: str = "auto"):
    """An upsampler run (``model.image_cond=lowres``) as a :class:`Run`, checked against the (C, H, W) of the
    images it will get."""
    run = load_run(ckpt, which=which, device=device)
    cfg, state = run.config, run.state
    if cfg.model.image_cond != "lowres":
        raise ValueError(f"--upsampler {ckpt} is not an upsampler (model.image_cond={cfg.model.image_cond}); "
                         "train one with model.image_cond=lowres model.lowres_size=N")
    c, size = state["data"]["shape"][0], cfg.model.lowres_size
    if base_shape is not None and tuple(base_shape) != (c, size, size):
        raise ValueError(f"the upsampler takes {c}x{size}x{size} images, but the base model makes "
                         f"{'x'.join(map(str, base_shape))}")
    return run


def upsample(ckpt, lowres: torch.Tensor, *, seed: int = 0, batch_size: int = 256, device: str = "auto",
             progress: bool = False, lowres_t: Optional[float] = None, which: str = "latest", **opts):
    """Super-resolve images (N, C, h, w) in [-1, 1] with an upsampler (a run directory, or load_upsampler's
    tuple). Returns (images in [-1, 1] quantized to the upsampler's levels, network evaluations per image,
    levels)."""
    up = ckpt if isinstance(ckpt, (Run, tuple)) else load_upsampler(ckpt, which=which, device=device)
    cfg, method, model, state = (up.config, up.method, up.model, up.state) if isinstance(up, Run) else up
    c, size = state["data"]["shape"][0], cfg.model.lowres_size
    if tuple(lowres.shape[1:]) != (c, size, size):
        raise ValueError(f"the upsampler takes {c}x{size}x{size} images, but the base model makes "
                         f"{'x'.join(map(str, lowres.shape[1:]))}")
    if lowres_t is not None:
        opts["lowres_t"] = lowres_t
    x, nfe = method.sample(model, lowres.shape[0], lowres=lowres, seed=seed, batch_size=batch_size,
                           progress=progress, **opts)
    levels = state["data"]["levels"]
    return quantize(x, levels), nfe, levels


def read_image_levels(path, shape: tuple, levels: int, what: str = "image") -> torch.Tensor:
    """A PNG/JPEG as dataset levels (1, C, H, W) (uint8), read like training images
    (:func:`genlab.data.images.read_image`), or a ValueError naming what does not fit."""
    from .data.images import read_image

    c, h, w = shape
    arr = read_image(path, c, what)          # C x H x W uint8; ImageReadError (a ValueError) names the file
    if arr.shape[1:] != (h, w):
        raise ValueError(f"{what} {path} is {arr.shape[2]}x{arr.shape[1]} pixels but the model makes {w}x{h} images")
    return torch.from_numpy(np.round(arr.astype(np.float64) / 255 * (levels - 1)).astype(np.uint8))[None]


def inpaint(ckpt, image, mask, *, n: int = 4, out=None, seed: int = 0, which: str = "latest",
            use_ema: bool = True, device: str = "auto", labels: Optional[Sequence[int]] = None,
            prompt: Optional[str] = None, **opts):
    """Fill the white pixels of ``mask`` (a PNG of the image's size; white = generate, black = keep) in
    ``image`` with n completions. Diffusion: replacement in x0_hat at every step (any sampler; ``resample=U``
    with the ddpm sampler adds RePaint's resampling), or, for a GLIDE-style inpainting model
    (``model.image_cond=mask``), the mask and known pixels as its input; any-order AR:
    the known pixels are revealed from the start; raster AR: known pixels are kept, but each drawn pixel sees
    only the known pixels before it. ``out``: a PNG with the masked input (hole in blue) then the completions.
    Returns (completions in [-1, 1], evaluations per sample, path)."""
    from .report.images import mark_unknown, save_grid

    check_options(n=n, seed=seed, **opts)
    run = load_run(ckpt, which=which, use_ema=use_ema, device=device)
    cfg, method, model, state = run.config, run.method, run.model, run.state
    if "known" not in method.inputs:
        able = [name for name, c in registry.METHODS.items() if "known" in c.inputs]
        raise ValueError(f"{cfg.method} models cannot inpaint ({', '.join(able)} can)")
    info = state["data"]
    shape, levels = tuple(info["shape"]), info["levels"]
    x = to_model(read_image_levels(image, shape, levels), levels)
    m = read_image_levels(mask, (1, *shape[1:]), 2, "mask")                    # 1 = generate
    known_mask = (m == 0).expand(n, shape[0], *shape[1:]).clone()
    if bool(known_mask.all()):
        raise ValueError(f"mask {mask} has no white pixel: nothing to generate")
    opts = {k: v for k, v in opts.items() if v is not None}
    if cfg.model.text_cond:
        if labels is not None:
            raise ValueError("this model is text-conditional: ask with --prompt \"a red circle ...\", not --class")
        y = prompt_tokens(model, prompt, n)
    elif prompt is not None:
        raise ValueError("--prompt needs a text-conditional model (model.text_cond=true)")
    else:
        y = resolve_labels(labels, n, info["num_classes"], info["class_names"], seed, cfg.model.class_cond)
    xs, nfe = method.sample(model, n, y=y, seed=seed, known=x.expand(n, *shape).clone(), known_mask=known_mask,
                            **opts)
    xs = quantize(xs, levels)
    path = None
    if out is not None:
        shown = torch.cat([mark_unknown(x, known_mask[:1]), xs.expand(-1, 3, -1, -1) if shape[0] == 1 else xs])
        path = save_grid(shown, out, nrow=n + 1)
    return xs, nfe, path


def load_classifier(ckpt, generator_cfg: Config, device: str = "auto"):
    """A noise-aware classifier run for guiding a generator with config ``generator_cfg``: it must be a
    ``method: classifier`` checkpoint trained on the same diffusion schedule."""
    run = load_run(ckpt, device=device)
    ccfg, cmodel = run.config, run.model
    guides = getattr(run.method, "guides", None)
    if not guides:
        makers = [name for name, c in registry.METHODS.items() if getattr(c, "guides", None)]
        raise ValueError(f"--classifier {ckpt} is a {ccfg.method} checkpoint, not a noise-aware classifier "
                         f"(train one with method={makers[0] if makers else '?'})")
    if "classifier" not in registry.method_class(generator_cfg.method).inputs:
        raise ValueError(f"classifier guidance applies to {guides} models, not {generator_cfg.method}")
    _check_schedule("classifier", ccfg, generator_cfg)
    return cmodel


def _check_schedule(what: str, guide_cfg: Config, generator_cfg: Config) -> None:
    """ValueError when a guiding network was trained on another noise schedule than the generator."""
    keys = ("schedule", "timesteps") + (("beta_start", "beta_end") if generator_cfg.diffusion.schedule == "linear" else ())
    diff = [k for k in keys if getattr(guide_cfg.diffusion, k) != getattr(generator_cfg.diffusion, k)]
    if diff:
        raise ValueError(f"the {what} was trained on another noise schedule than the generator: " + ", ".join(
            f"diffusion.{k} {getattr(guide_cfg.diffusion, k)!r} vs {getattr(generator_cfg.diffusion, k)!r}"
            for k in diff) + f"; train the {what} with the generator's diffusion.* settings")


def load_clip(ckpt, generator_cfg: Config, device: str = "auto", generator=None):
    """A noise-aware CLIP run (``method: clip``) for CLIP guidance of a generator with config ``generator_cfg``:
    trained on the same diffusion schedule and, when the generator reads captions with its own learned
    vocabulary (``generator``, the loaded network), on the same vocabulary."""
    run = load_run(ckpt, device=device)
    if run.config.method != "clip":
        raise ValueError(f"--clip {ckpt} is a {run.config.method} checkpoint, not a noise-aware CLIP (train one with "
                         "method=clip, e.g. genlab train --config shapes_clip)")
    if "clip" not in registry.method_class(generator_cfg.method).inputs:
        raise ValueError(f"CLIP guidance applies to diffusion models, not {generator_cfg.method}")
    _check_schedule("CLIP", run.config, generator_cfg)
    c, size = getattr(generator, "out_channels", None), getattr(generator, "image_size", None)
    if c is not None and (c, size) != (run.model.in_channels, run.model.image_size):
        raise ValueError(f"the CLIP run {ckpt} sees {run.model.in_channels}x{run.model.image_size}x"
                         f"{run.model.image_size} images and the generator draws {c}x{size}x{size}: train the CLIP "
                         "on the generator's data")
    gen_tok = getattr(getattr(generator, "text", None), "tokenizer", None)
    clip_tok = run.model.text.tokenizer
    if gen_tok is not None and hasattr(gen_tok, "words") and list(gen_tok.words) != list(clip_tok.words):
        only_g = sorted(set(gen_tok.words) - set(clip_tok.words))
        only_c = sorted(set(clip_tok.words) - set(gen_tok.words))
        detail = (f"{len(only_g)} words only the generator knows ({', '.join(only_g[:5]) or '-'}), {len(only_c)} "
                  f"only the CLIP knows ({', '.join(only_c[:5]) or '-'})") if only_g or only_c else \
            "the same words in another order"
        raise ValueError(f"the CLIP run {ckpt} was trained on another caption vocabulary than the generator "
                         f"({detail}): train it on the generator's captions (the same data)")
    return run.model


def demo(*, name: str = "demo", time_budget: str = "100s", runs_root=None, force: bool = False,
         progress: bool = True) -> Path:
    """Train the digits recipe for about two minutes on the CPU, then write samples.png, process.png and
    loss.png under runs/NAME. runs/demo is replaced each time; another existing name needs ``force``."""
    from .report.images import loss_plot

    t0 = time.time()
    res = train("digits_ddpm", [f"train.time_budget={time_budget}"], name=name, force=force or name == "demo",
                runs_root=runs_root, progress=progress)
    run_dir = res.run_dir
    if res.interrupted:
        from .train.loop import Interrupted

        raise Interrupted(res.signal)
    sample(run_dir, n=8, process=True, out=run_dir / "process.png", seed=0)
    loss_plot(run_dir / "metrics.jsonl", run_dir / "loss.png")
    print(f"\ndemo done in {time.time() - t0:.0f}s: {res.state.step} steps, "
          f"{res.state.samples_seen} images seen.\n"
          f"  samples:  {run_dir / 'samples.png'}\n  process:  {run_dir / 'process.png'}\n"
          f"  loss:     {run_dir / 'loss.png'}\n  checkpoint: {res.checkpoint}")
    return run_dir
