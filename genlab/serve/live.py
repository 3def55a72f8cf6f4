"""Live generation for the web app: sampling options from each method's option dataclasses, and one generation at
a time streamed frame by frame.

The controls of the live page come from :func:`controls`: the fields of the run's method's ``Options``
dataclass (name, type, default from the run's ``sample`` config, choices, range, help), plus seed, the number of
samples and, where the model takes them, a class or a prompt. So every family, present and future, gets its own
controls without page code of its own.

:class:`Generations` runs ``method.sample`` in a worker thread with a callback that turns every step's canvas into
a PNG frame (diffusion: x_t above the model's current x0_hat; the discrete methods: the canvas, pixels not yet
drawn in blue), every step up to ``MAX_FRAMES`` steps, else every k-th and the last; the frames reach the browser as server-sent events
with the step, the network evaluations so far and the seconds since the request. At most one generation runs at
a time (one or two checkpoints side by side, each its own stream, sharing the generation's id); ``max_waiting``
more may wait, further requests are refused with "busy"; a generation whose browser went away is cancelled at
its next step.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import math
import queue
import threading
import time
import typing
from collections import OrderedDict
from pathlib import Path

import torch

MAX_SAMPLES = 16
MAX_FRAMES = 60            # frames per generation at most (every k-th step, and the last)


class Busy(Exception):
    """Too many generations are waiting."""


class Cancelled(Exception):
    """The browser went away: stop sampling."""


def _field_info(f: dataclasses.Field, hint, default) -> dict:
    meta = f.metadata or {}
    rng = meta.get("range")
    kind = {bool: "bool", int: "int", float: "float"}.get(hint, "str")
    out = {"name": f.name, "type": kind, "default": default, "help": meta.get("help", "")}
    if meta.get("choices"):
        out["type"], out["choices"] = "choice", list(meta["choices"])
    if rng is not None:
        out.update({"min": rng.lo, "max": rng.hi})
    return out


def controls(run) -> dict:
    """The live page's controls for a loaded run (see the module docstring)."""
    method, cfg, model = run.method, run.config, run.model
    opts = method.options()
    hints = typing.get_type_hints(type(opts))
    fields = [_field_info(f, hints[f.name], getattr(opts, f.name)) for f in dataclasses.fields(opts)]
    skip = {"lowres_t", "resample", "classifier_scale", "clip_scale"}     # need inputs the page does not give
    fields = [f for f in fields if f["name"] not in skip]
    info = run.state["data"]
    cond = {}
    if cfg.model.text_cond:
        cond["prompt"] = {"default": (run.state.get("data", {}).get("example_caption") or "")}
    elif cfg.model.class_cond and info.get("num_classes"):
        cond["class"] = {"count": info["num_classes"], "names": info.get("class_names")}
    return {"method": cfg.method, "family": method.family, "label": method.label, "options": fields,
            "condition": cond, "shape": info["shape"], "draws_samples": method.draws_samples}


def parse_params(ctrl: dict, raw: dict) -> dict:
    """Query-string values (strings) typed by the controls: the method's options, n, seed, class, prompt; empty
    values are dropped (the defaults apply); an unknown name or a value of the wrong type is a ValueError."""
    types_ = {f["name"]: f["type"] for f in ctrl["options"]}
    out = {}
    for k, v in raw.items():
        if k == "run" or v is None or v == "":
            continue
        if k == "prompt":
            out[k] = str(v)
            continue
        kind = "int" if k in ("n", "seed", "class") else types_.get(k)
        if kind is None:
            raise ValueError(f"unknown option {k!r} for {ctrl['method']} (its options: "
                             f"{', '.join(types_) or 'none'})")
        try:
            out[k] = {"int": int, "float": float, "bool": lambda s: str(s).lower() in ("1", "true", "on", "yes"),
                      "choice": str, "str": str}[kind](v)
        except (TypeError, ValueError):
            raise ValueError(f"{k}={v!r} is not a valid {kind}") from None
    return out


def _png(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def frame_image(info: dict, nrow: int):
    """The picture of one step: diffusion's x_t row(s) over x0_hat, or the discrete canvas with the unknown
    pixels painted."""
    from ..pictures import auto_scale, grid, mark_unknown

    if "x_t" in info:
        x = torch.cat([info["x_t"].clamp(-1, 1).float().cpu(), info["x0_hat"].clamp(-1, 1).float().cpu()])
    else:
        x = info["x"].float().cpu()
        if "known" in info:
            x = mark_unknown(x, info["known"].cpu())
    return grid(x, nrow=nrow, scale=auto_scale(x.shape[-1], 64))


class LoadedRuns:
    """The last few runs loaded (EMA weights, CPU), so a second generation does not load again."""

    def __init__(self, size: int = 2):
        self.size, self.cache, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, run_dir: Path):
        from ..runs import load_run
        from ..train import checkpoint as ck

        key = str(run_dir)
        ckpt = str(ck.resolve_checkpoint(run_dir))
        with self.lock:
            hit = self.cache.get(key)
            if hit is not None and hit[0] == ckpt:
                self.cache.move_to_end(key)
                return hit[1]
        run = load_run(run_dir, device="cpu")
        with self.lock:
            self.cache[key] = (ckpt, run)
            while len(self.cache) > self.size:
                self.cache.popitem(last=False)
        return run


class Generations:
    """One generation at a time, ``max_waiting`` more queued (see the module docstring)."""

    def __init__(self, max_waiting: int = 2):
        self.max_waiting = max_waiting
        self.cond = threading.Condition()
        self.pending = 0                  # streams running or waiting
        self.active, self.active_streams = None, 0     # the generation running now: its id, its open streams
        self.runs = LoadedRuns()

    def start(self, run_dir: Path, params: dict) -> tuple[queue.Queue, threading.Event]:
        """Queue one stream of a generation (``params["pair"]``: the generation's id, shared by the two streams
        of a side-by-side generation, at most two at once; absent: a generation of its own); returns its event queue (dicts; None ends
        it) and its cancel flag. Busy when too many are waiting."""
        pair = str(params.pop("pair", "") or id(params))
        with self.cond:
            if self.pending >= 2 * (self.max_waiting + 1):
                raise Busy(f"{self.pending} generations are running or waiting; try again when one ends")
            self.pending += 1
        events: queue.Queue = queue.Queue(maxsize=1000)
        cancel = threading.Event()
        threading.Thread(target=self._work, args=(run_dir, params, events, cancel, pair), daemon=True).start()
        return events, cancel

    def _acquire(self, pair: str, cancel: threading.Event) -> None:
        with self.cond:
            while self.active not in (None, pair) or (self.active == pair and self.active_streams >= 2):
                if cancel.is_set():
                    raise Cancelled()
                self.cond.wait(0.2)
            self.active = pair
            self.active_streams += 1

    def _release(self) -> None:
        with self.cond:
            self.active_streams -= 1
            if self.active_streams == 0:
                self.active = None
            self.cond.notify_all()

    def _work(self, run_dir, params, events, cancel, pair):
        t0 = time.perf_counter()
        acquired = False
        try:
            events.put({"event": "queued"})
            self._acquire(pair, cancel)
            acquired = True
            self._generate(run_dir, params, events, cancel, t0)
        except Cancelled:
            events.put({"event": "cancelled"})
        except Exception as e:            # every failure reaches the page as one message
            events.put({"event": "error", "message": f"{type(e).__name__}: {e}"[:500]})
        finally:
            if acquired:
                self._release()
            with self.cond:
                self.pending -= 1
            events.put(None)

    def _generate(self, run_dir, params, events, cancel, t0):
        from ..api import prompt_tokens
        from ..runs import quantize

        run = self.runs.get(run_dir)
        method, model, cfg = run.method, run.model, run.config
        params = parse_params(controls(run), params)
        if not method.draws_samples:
            raise ValueError(f"{run_dir.name} is a {cfg.method} run: it guides a generator but draws no samples")
        n = int(params.pop("n", 4))
        if not 1 <= n <= MAX_SAMPLES:
            raise ValueError(f"n must be in 1..{MAX_SAMPLES}")
        seed = int(params.pop("seed", 0))
        label, prompt = params.pop("class", None), params.pop("prompt", None)
        opts = {k: v for k, v in params.items() if v is not None}
        typed = method.options(**opts)                   # one clear error for a bad option
        y = None
        if cfg.model.text_cond:
            y = prompt_tokens(model, prompt or "", n) if prompt else model.text.tokenizer.null(n)
        elif cfg.model.class_cond and run.state["data"].get("num_classes"):
            k = run.state["data"]["num_classes"]
            y = torch.full((n,), int(label), dtype=torch.long) if label not in (None, "") else torch.arange(n) % k
            if int(y.min()) < 0 or int(y.max()) >= k:
                raise ValueError(f"class must be in 0..{k - 1}")
        shape = tuple(run.state["data"]["shape"])
        total = method.nfe(typed, shape)
        expected = getattr(typed, "steps", None) if hasattr(typed, "steps") else None
        nrow = n
        calls = expected or total                   # steps the sampler will report (its callbacks)
        every = max(1, calls // MAX_FRAMES)
        state = {"i": 0, "pending": None}

        def send(info, i):
            events.put({"event": "frame", "step": i + 1, "png": _png(frame_image(info, nrow)),
                        "nfe": min(total, math.ceil((i + 1) * total / max(calls, 1))),
                        "seconds": round(time.perf_counter() - t0, 3)})

        def callback(info):
            if cancel.is_set():
                raise Cancelled()
            i = state["i"]
            state["i"] += 1
            if i % every == 0 or i == calls - 1:
                send(info, i)
                state["pending"] = None
            else:                                   # kept, so that the last step is always shown
                state["pending"] = ({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in info.items()}, i)

        events.put({"event": "start", "total_nfe": total, "n": n, "label": method.sampling_label(typed)})
        x, nfe = method.sample(model, n, y=y, seed=seed, batch_size=n, callback=callback, **opts)
        if state["pending"] is not None:
            send(*state["pending"])
        final = {"x": quantize(x, run.state["data"]["levels"])}
        events.put({"event": "done", "png": _png(frame_image(final, nrow)), "nfe": nfe, "frames": state["i"],
                    "seconds": round(time.perf_counter() - t0, 3)})
