"""``genlab compare``: train several methods under one budget, evaluate them with one harness, write one report.

A comparison spec (``genlab/configs/compare_digits.yaml`` or any YAML file) lists methods, each a training recipe
plus overrides and the sampling settings to evaluate. Every method trains with the same wall-clock budget, one
after another (never two at once), into ``OUT/runs/NAME``; the checkpoint with the best validation loss (on the
validation subset carved from the train split, never the test split) is evaluated: test bits/dim (exact for
raster AR and one-shot, an unbiased estimate for any-order AR, the variational bound for diffusion, all on the
same discrete levels), FID / precision / recall on the same feature network, network evaluations per sample,
sampling seconds per 1000 images, training images/s and parameters. ``OUT/index.html`` and ``OUT/README.md``
hold the table, sample grids, pictures of the generation process, FID against network evaluations per family,
and a summary written from the table's numbers.

Runs that finished are reused and evaluations are cached in ``OUT/results.json``, so an interrupted comparison
continues where it stopped (``--fresh`` starts over).

The pieces a benchmark needs are public (``benchmarks/b1_digits.py`` and ``b4_guidance.py`` use them):
:func:`train_or_reuse` (train ``RUNS/NAME`` unless it finished with the same config, resume it when it was
interrupted; :func:`is_finished` asks without training), :func:`open_results` / :func:`load_results` /
:func:`save_results` (the atomic results.json cache, rows keyed by :func:`row_key` of their sampling options),
and the report code :func:`table_rows`, :func:`markdown_table` (``columns`` for other tables),
:func:`fid_nfe_plot` (``label_key`` for other curves) and :func:`summary`.
"""
from __future__ import annotations

import html
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional, Union

import yaml

from .. import registry
from ..config import ConfigError, find_config
from ..runs import check_run_name

SPEC_KEYS = {"budget", "data", "overrides", "eval", "methods", "quick"}
METHOD_KEYS = {"name", "config", "overrides", "samplers", "label", "budget"}
# likelihood_draws: Monte Carlo draws per test image of the likelihoods that are estimated (a number for all
# methods, or a mapping method -> number; null: each method's own default, e.g. all T terms of the diffusion bound)
EVAL_DEFAULTS = {"n": 1000, "seeds": 1, "bpd_images": None, "likelihood_draws": None, "grid_n": 64,
                 "batch_size": 500}
QUICK_DEFAULTS = {"max_steps": 15, "eval": {"n": 200, "bpd_images": 64, "likelihood_draws": 2, "grid_n": 16},
                  "max_nfe": 100}


@dataclass
class MethodSpec:
    name: str
    config: str
    overrides: list = field(default_factory=list)
    samplers: list = field(default_factory=lambda: [{}])
    label: Optional[str] = None
    budget: Optional[str] = None                   # this method's own training budget (default: the spec's)


@dataclass
class CompareSpec:
    budget: str
    methods: list
    data: list = field(default_factory=list)        # overrides applied to every method, e.g. data.name=digits
    overrides: list = field(default_factory=list)   # overrides applied to every method (e.g. train.num_threads=2)
    eval: dict = field(default_factory=dict)
    quick: dict = field(default_factory=dict)


def method_overrides(spec: CompareSpec, m: MethodSpec, quick: bool = False) -> list[str]:
    """The overrides method ``m`` of ``spec`` trains with on top of its config: the spec's data and overrides, the
    method's, its budget (the method's own, else the spec's; quick: a few steps) and no grids or FID during
    training. A benchmark that trains with the same config and these overrides into the same run directory
    shares the run with ``genlab compare``."""
    budget = [f"train.max_steps={spec.quick['max_steps']}", "train.time_budget=null", "train.val_every=5",
              "train.ckpt_every=0", "train.warmup_steps=2"] if quick else \
        [f"train.time_budget={m.budget or spec.budget}", "train.max_steps=null"]
    return spec.data + spec.overrides + m.overrides + budget + ["train.sample_every=0", "train.eval_every=0"]


def load_spec(name_or_path: str) -> CompareSpec:
    """A comparison spec by shipped name (``compare_digits``) or path, with unknown keys named."""
    path = find_config(name_or_path)
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(d, dict) or "methods" not in d:
        raise ConfigError(f"{path} is not a comparison spec: it needs a 'methods' list (see "
                          f"genlab/configs/compare_digits.yaml); to train one model use `genlab train --config`")
    bad = set(d) - SPEC_KEYS
    if bad:
        raise ConfigError(f"{path}: unknown key(s) {sorted(bad)}; allowed: {sorted(SPEC_KEYS)}")
    methods = []
    if not isinstance(d["methods"], (list, type(None))):
        raise ConfigError(f"{path}: 'methods' must be a list of {{name, config, ...}} entries")
    for i, m in enumerate(d["methods"] or []):
        if not isinstance(m, dict) or "name" not in m or "config" not in m:
            raise ConfigError(f"{path}: methods[{i}] needs a name and a config")
        try:
            check_run_name(str(m["name"]))
        except ValueError as e:
            raise ConfigError(f"{path}: methods[{i}]: {e}") from None
        bad = set(m) - METHOD_KEYS
        if bad:
            raise ConfigError(f"{path}: methods[{i}] ({m['name']}): unknown key(s) {sorted(bad)}; "
                              f"allowed: {sorted(METHOD_KEYS)}")
        _expect(path, f"methods[{i}].overrides", m.get("overrides"), list, str)
        _expect(path, f"methods[{i}].samplers", m.get("samplers"), list, dict)
        methods.append(MethodSpec(name=str(m["name"]), config=str(m["config"]), overrides=list(m.get("overrides") or []),
                                  samplers=list(m.get("samplers") or [{}]), label=m.get("label"),
                                  budget=None if m.get("budget") is None else str(m["budget"])))
    if not methods:
        raise ConfigError(f"{path}: the methods list is empty")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: method names must be unique, got {names}")
    for key in ("data", "overrides"):
        _expect(path, key, d.get(key), list, str)
    _expect(path, "eval", d.get("eval"), dict)
    _expect(path, "quick", d.get("quick"), dict)
    ev = dict(d.get("eval") or {})
    for k, v in ev.items():
        if k == "likelihood_draws" and isinstance(v, dict):
            bad = [m for m in v if m not in registry.METHODS]
            if bad:
                raise ConfigError(f"{path}: eval.likelihood_draws names unknown method(s) {bad}; known: "
                                  f"{', '.join(registry.names())}")
            v = next((d for d in v.values() if d is not None and (isinstance(d, bool) or not isinstance(d, int)
                                                                  or d < 1)), None)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{path}: eval.{k}={v!r} must be a positive integer")
    q = d.get("quick") or {}
    _expect(path, "quick.eval", q.get("eval"), dict)
    for k in ("max_steps", "max_nfe"):
        if k in q and (isinstance(q[k], bool) or not isinstance(q[k], int) or q[k] < 1):
            raise ConfigError(f"{path}: quick.{k}={q[k]!r} must be a positive integer")
    bad = set(ev) - set(EVAL_DEFAULTS)
    if bad:
        raise ConfigError(f"{path}: unknown eval key(s) {sorted(bad)}; allowed: {sorted(EVAL_DEFAULTS)}")
    return CompareSpec(budget=str(d.get("budget", "300s")), methods=methods, data=list(d.get("data") or []),
                       overrides=list(d.get("overrides") or []), eval={**EVAL_DEFAULTS, **ev},
                       quick={**QUICK_DEFAULTS, **(d.get("quick") or {})})


COMPARE_MARKER = ".genlab-compare"
WRITTEN = ("runs", "img", "results.json", "results.tmp", "README.md", "index.html")   # all that compare writes


def prepare_out(out: Path, *, fresh: bool = False) -> Path:
    """The report directory, made ready: a new or empty directory, or one that holds a compare marker (or, from
    before the marker, a results.json of compare); anything else is refused, so a user's files are never
    overwritten. ``fresh`` removes only what compare wrote there (never following a link)."""
    import shutil

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory for the report")
    if out.is_dir() and any(out.iterdir()) and not (out / COMPARE_MARKER).is_file():
        legacy = False
        try:
            res = json.loads((out / "results.json").read_text())
            legacy = isinstance(res, dict) and "_mode" in res and ((out / "index.html").is_file()
                                                                   or (out / "img").is_dir())
        except (OSError, ValueError):
            pass
        if not legacy:
            shown = sorted(p.name for p in out.iterdir())[:3]
            raise ValueError(f"--out {out} holds files genlab compare did not write ({', '.join(shown)} ...); "
                             "choose a new or empty directory for the report")
    if fresh and out.is_dir():
        from ..runs import RunLock

        locks = []
        try:
            for r in sorted((out / "runs").glob("*")) if (out / "runs").is_dir() else []:
                if r.is_dir() and not r.is_symlink():
                    locks.append(RunLock(r).acquire())          # refused while a run there is training
            for name in WRITTEN:
                p = out / name
                if p.is_symlink() or p.is_file():
                    p.unlink()
                elif p.is_dir():
                    shutil.rmtree(p)
        finally:
            for lock in locks:
                lock.release()
    (out / "img").mkdir(parents=True, exist_ok=True)
    (out / COMPARE_MARKER).write_text(json.dumps({"written_by": "genlab compare", "files": list(WRITTEN)}))
    return out


def _read_json(path: Path) -> dict:
    """A small JSON file compare wrote, or {} when it is damaged (the work it records is then redone)."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _expect(path, key: str, value, tp, item=None) -> None:
    """ConfigError unless ``value`` is None or a ``tp`` (whose elements are ``item``s)."""
    if value is None:
        return
    if not isinstance(value, tp) or (item is not None and not all(isinstance(v, item) for v in value)):
        kind = f"a {tp.__name__}" + (f" of {item.__name__} entries" if item else "")
        raise ConfigError(f"{path}: {key} must be {kind}, got {value!r}")


def _draws(ev: dict, method: str):
    """The likelihood draws the spec asks of a method (None: the method's default)."""
    d = ev.get("likelihood_draws")
    return d.get(method) if isinstance(d, dict) else d


def row_key(opts: dict) -> str:
    """The key of an evaluated row in a record's ``rows``: its sampling options as sorted JSON."""
    return json.dumps(opts, sort_keys=True)




# ------------------------------------------------------------------------------------------------ cache

def load_results(out) -> dict:
    """``OUT/results.json`` ({} when there is none); ValueError when it is damaged or is not compare's."""
    results_path = Path(out) / "results.json"
    try:
        results = json.loads(results_path.read_text()) if results_path.exists() else {}
    except ValueError as e:
        raise ValueError(f"{results_path} is damaged ({e}); rerun with --fresh to start the comparison "
                         "over") from None
    if not isinstance(results, dict):
        raise ValueError(f"{results_path} does not hold compare's results; rerun with --fresh")
    return results


def save_results(results: dict, out) -> Path:
    """Write ``OUT/results.json`` atomically (through ``OUT/results.tmp`` and a rename)."""
    results_path = Path(out) / "results.json"
    tmp = results_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=float))
    tmp.replace(results_path)
    return results_path


def open_results(out, mode: str, ev: dict) -> dict:
    """The cached results of ``out`` for a ``mode`` ("quick" or "full") and evaluation settings ``ev``: a cache
    of the other mode is refused (ValueError); with other evaluation settings every record keeps its name and
    loses its rows (the runs are kept, the evaluations redone)."""
    results = load_results(out)
    if results.get("_mode") not in (None, mode):
        other = "full" if mode == "quick" else "quick"
        raise ValueError(f"{out} holds a {other} comparison; use another --out or --fresh")
    results["_mode"] = mode
    if results.get("_eval") not in (None, ev):      # other eval settings: keep the runs, redo the evaluations
        for k in [k for k in results if not k.startswith("_")]:
            results[k] = {"name": k, "rows": {}}
    results["_eval"] = ev
    return results


# ------------------------------------------------------------------------------------------------ training

class TrainedRun(NamedTuple):
    """What :func:`train_or_reuse` gives back: the run directory, its resolved config, and the TrainResult when
    it trained now (None when a finished run was reused)."""
    run_dir: Path
    config: object
    result: Optional[object] = None

    @property
    def trained(self) -> bool:
        """True when the run was trained (or resumed) now: evaluations cached for an older model are stale."""
        return self.result is not None


def is_finished(run_dir, cfg) -> bool:
    """True when ``run_dir`` finished training with the resolved config ``cfg`` (its done.json says so): every key
    the same, where a key or section that done.json lacks counts as the same while ``cfg`` has its default value
    (a section added to genlab later, e.g. a new method's, does not make finished runs look different; see
    :func:`genlab.train.loop.config_mismatch`)."""
    from ..train.loop import config_mismatch

    done = Path(run_dir) / "done.json"
    if not done.exists():
        return False
    saved = _read_json(done).get("config")
    return isinstance(saved, dict) and not config_mismatch(saved, cfg, ignore=())


def train_or_reuse(name: str, config, overrides=(), runs_root="runs", progress: bool = True, *,
                   budget_label: Optional[str] = None, log_prefix: str = "[compare]") -> TrainedRun:
    """Train ``runs_root/NAME`` from ``config`` plus ``overrides``, unless it already finished with this very
    config (its ``done.json``). A run that was interrupted (checkpoints but no done.json) is resumed; one that
    finished with another config is trained again from scratch. An interrupted training raises
    :class:`genlab.train.loop.Interrupted` (and leaves no done.json, so the next call resumes it)."""
    from .. import runs as R
    from ..files import write_text_atomic
    from ..train import checkpoint as ck

    cfg = R.resolve_config(config, list(overrides))
    run_dir = Path(runs_root) / name
    done = run_dir / "done.json"
    if is_finished(run_dir, cfg):
        return TrainedRun(run_dir, cfg, None)
    resumable = (run_dir / "checkpoints").is_dir() and not done.exists()
    try:
        resumable = resumable and bool(ck.resolve_checkpoint(run_dir))
    except ck.CheckpointError:
        resumable = False
    print(f"{log_prefix} training {name} ({cfg.method}){f' for {budget_label}' if budget_label else ''}"
          f"{' (resuming)' if resumable else ''}", file=sys.stderr)
    res = R.train(cfg, [], name=name, runs_root=Path(runs_root), resume=resumable, force=not resumable,
                  progress=progress)
    if res.interrupted:
        from ..train.loop import Interrupted

        raise Interrupted(res.signal)
    write_text_atomic(done, json.dumps({"config": cfg.to_dict()}))
    return TrainedRun(run_dir, cfg, res)


def run(spec_name: Union[str, CompareSpec] = "compare_digits", out="runs/compare", *, quick: bool = False,
        fresh: bool = False, only: Optional[list] = None, progress: bool = True) -> Path:
    """Train (or reuse), evaluate and report every method of the spec (a name or path for :func:`load_spec`, or a
    loaded :class:`CompareSpec`, e.g. one a benchmark extended with ``data.root=DIR``); returns the report
    directory."""
    from .. import runs as R
    from ..eval.likelihood import bits_per_dim

    spec = spec_name if isinstance(spec_name, CompareSpec) else load_spec(spec_name)
    out = prepare_out(Path(out), fresh=fresh)
    ev = dict(spec.eval)
    if quick:
        ev.update(spec.quick.get("eval", {}))
    results = open_results(out, "quick" if quick else "full", ev)
    methods = [m for m in spec.methods if not only or m.name in only]
    if only and len(methods) != len(only):
        raise ValueError(f"--only: unknown method(s) {sorted(set(only) - {m.name for m in spec.methods})}; "
                         f"the spec has {', '.join(m.name for m in spec.methods)}")

    for m in methods:
        t0 = time.time()
        rec = results.setdefault(m.name, {"name": m.name, "rows": {}})
        overrides = method_overrides(spec, m, quick)
        t = train_or_reuse(m.name, m.config, overrides, out / "runs", progress,
                           budget_label=(m.budget or spec.budget) if not quick else f"{spec.quick['max_steps']} steps")
        cfg, run_dir = t.config, t.run_dir
        if t.trained:
            rec = results[m.name] = {"name": m.name, "rows": {}}     # nothing of an older model survives
        which = "best" if _has_best(run_dir) else "latest"
        run = R.load_run(run_dir, which=which)
        method, model, state = run.method, run.model, run.state
        shape = tuple(state["data"]["shape"])
        rec.update({"method": cfg.method, "family": method.family, "label": m.label or m.name,
                    "checkpoint": state["path"], "step": state["step"], "params": run.params(),
                    "train_images_per_s": state["samples_seen"] / max(state["time_used"], 1e-9),
                    "train_seconds": state["time_used"], "images_seen": state["samples_seen"],
                    "best_val_loss": state.get("best_val")})
        if "test_bpd" not in rec:
            if method.likelihood == "none":
                rec.update({"test_bpd": None, "test_bpd_sem": None, "test_bpd_n": 0, "bpd_kind": "none"})
            else:
                test = R.load_data(cfg, "test")
                if ev["bpd_images"]:
                    test = test.head(ev["bpd_images"])
                print(f"[compare] {m.name}: test bits/dim on {len(test)} images", file=sys.stderr)
                b = bits_per_dim(method, model, test, draws=_draws(ev, cfg.method))
                rec.update({"test_bpd": b["bpd"], "test_bpd_sem": b["bpd_sem"], "test_bpd_n": b["n"],
                            "test_bpd_seconds": b["seconds"], "bpd_kind": method.likelihood})
            save_results(results, out)

        def nfe(s):
            return method.nfe(method.options(**s), shape)
        samplers = [s for s in m.samplers if not quick or nfe(s) <= spec.quick["max_nfe"]] or \
            [min(m.samplers, key=nfe)]
        for opts in samplers:
            key = row_key(opts)
            if key in rec["rows"]:
                continue
            print(f"[compare] {m.name}: sampling {ev['n']} with {opts or 'defaults'}", file=sys.stderr)
            r = R.evaluate_checkpoint(run_dir, n=ev["n"], seeds=ev["seeds"], batch_size=ev["batch_size"], run=run,
                                      **opts)
            rec["rows"][key] = {"opts": opts, "sampler": r["sampler"], "nfe": r["nfe"],
                                "fid": r["fid_train"], "fid_std": r.get("fid_train_std", 0.0),
                                "precision": r["precision"], "recall": r["recall"],
                                "seconds_per_1000": r["seconds_per_1000"],
                                "matched_ratio": r["matched"]["ratio"], "entropy": r["entropy"]}
            save_results(results, out)
        if "pictures" not in rec:
            held = R.load_data(cfg, "val" if cfg.data.name == "folder" else "test").head(8)
            rec["pictures"] = _pictures(m.name, method, model, samplers, out / "img", ev["grid_n"],
                                        state["data"]["levels"], held)
            save_results(results, out)
        print(f"[compare] {m.name} done in {time.time() - t0:.0f}s", file=sys.stderr)
    results["_spec"] = {"budget": spec.budget if not quick else f"{spec.quick['max_steps']} steps (quick)",
                        "eval_n": ev["n"], "data": cfg.data.name, "order": [m.name for m in spec.methods]}
    save_results(results, out)
    write_report(results, out)
    return out


def _has_best(run_dir: Path) -> bool:
    from ..train import checkpoint as ck
    try:
        ck.resolve_checkpoint(run_dir, "best")
        return True
    except ck.CheckpointError:
        return False



def _pictures(name, method, model, samplers, img_dir: Path, grid_n: int, levels: int, held=None) -> dict:
    """A sample grid per sampling setting (the first and the last), the generation process, and the method's
    own extra pictures (one-shot's mean image, a VAE's reconstructions of the ``held`` images)."""
    from ..runs import quantize
    from .process import process_picture
    from .images import save_grid

    pics = {}
    for opts in [samplers[0]] + ([samplers[-1]] if len(samplers) > 1 else []):
        x, _ = method.sample(model, grid_n, seed=0, **opts)
        p = img_dir / f"{name}_samples_{_slug(opts)}.png"
        save_grid(quantize(x, levels), p)
        pics.setdefault("grids", []).append({"opts": opts, "path": p.name})
    proc = method.process_options(samplers)
    p = img_dir / f"{name}_process.png"
    process_picture(method, model, 4, p, seed=0, **proc)
    pics["process"] = {"opts": proc, "path": p.name}
    for key, x in method.extra_pictures(model, held).items():
        p = img_dir / f"{name}_{key}.png"
        save_grid(x, p)
        pics[key] = p.name
    return pics


def _slug(opts: dict) -> str:
    return "_".join(f"{k}{v}" for k, v in sorted(opts.items())) or "default"


# ------------------------------------------------------------------------------------------------ report

def table_rows(results: dict) -> list[dict]:
    """One row per (method, sampling setting), in the spec's order."""
    rows = []
    order = results.get("_spec", {}).get("order") or [k for k in results if not k.startswith("_")]
    for name in order:
        rec = results.get(name)
        if not rec:
            continue
        for r in rec["rows"].values():
            rows.append({"name": name, "label": rec["label"], "family": rec["family"], "method": rec["method"],
                         "test_bpd": rec["test_bpd"], "test_bpd_sem": rec["test_bpd_sem"],
                         "bpd_kind": rec["bpd_kind"], "params": rec["params"],
                         "train_images_per_s": rec["train_images_per_s"], **r})
    return rows


def summary(rows: list[dict]) -> list[str]:
    """Plain statements derived from the table's numbers only (so they change when the numbers do)."""
    if not rows:
        return []
    out = []
    best = min(rows, key=lambda r: r["fid"])
    out.append(f"Best sample quality: **{best['label']}** ({best['sampler']}), FID {best['fid']:.2f} with "
               f"{best['nfe']} network evaluations per sample.")
    per_model = {}
    for r in rows:
        per_model.setdefault(r["name"], r)
    with_bpd = [r for r in per_model.values() if r["test_bpd"] is not None]
    if with_bpd:
        bpd_best = min(with_bpd, key=lambda r: r["test_bpd"])
        out.append(f"Best test likelihood: **{bpd_best['label']}** at {bpd_best['test_bpd']:.3f} bits/dim "
                   f"({bpd_best['bpd_kind']}).")
        if bpd_best["name"] != best["name"]:
            out.append(f"The best likelihood is not the best sample quality: {bpd_best['label']} samples reach FID "
                       f"{min(r['fid'] for r in rows if r['name'] == bpd_best['name']):.2f}, against "
                       f"{best['fid']:.2f} for {best['label']}; likelihood rewards covering every pixel's "
                       f"uncertainty, FID rewards images that look right.")
    none = [r["label"] for r in per_model.values() if r["test_bpd"] is None]
    if none:
        out.append(f"No likelihood: {', '.join(none)} (a GAN defines no density).")
    fam = {}
    for r in rows:
        fam.setdefault(r["family"], []).append(r)
    ar, dif = fam.get("autoregressive"), fam.get("diffusion")
    if ar and dif:
        a = min(ar, key=lambda r: r["fid"])
        d_ = min(dif, key=lambda r: r["fid"])
        head = (f"Diffusion vs raster autoregression: best diffusion FID {d_['fid']:.2f} ({d_['label']}, "
                f"{d_['nfe']} evaluations) vs best raster AR FID {a['fid']:.2f} ({a['label']}, {a['nfe']} "
                f"evaluations): ")
        if d_["fid"] == a["fid"]:
            out.append(head + "equal in FID.")
        else:
            win, lose, better = (d_, a, "diffusion") if d_["fid"] < a["fid"] else (a, d_, "raster autoregression")
            out.append(head + f"{better} is better by {lose['fid'] / max(win['fid'], 1e-9):.2f}x in FID, with "
                       f"{_times(win['nfe'], lose['nfe'])} the network evaluations of the other.")
        cheap = [r for r in dif if r["nfe"] < a["nfe"]]
        if cheap:
            c = min(cheap, key=lambda r: r["fid"])
            verdict = "better than" if c["fid"] < a["fid"] else "worse than"
            out.append(f"With fewer evaluations than raster AR needs ({a['nfe']}), diffusion's best is FID "
                       f"{c['fid']:.2f} at {c['nfe']}: {verdict} raster AR.")
    ao = sorted((r for r in fam.get("any-order AR", []) if "k=" in r["sampler"]),
                key=lambda r: (-r["nfe"], r["fid"]))        # most evaluations first; ties: the better FID
    if len(ao) >= 2:
        lo, hi = ao[0], min((r for r in ao if r["nfe"] == ao[-1]["nfe"]), key=lambda r: r["fid"])
        trend = "rises" if hi["fid"] > lo["fid"] else "does not rise"
        out.append(f"Any-order AR: revealing more pixels per step cuts evaluations from {lo['nfe']} to {hi['nfe']} "
                   f"and FID {trend} from {lo['fid']:.2f} to {hi['fid']:.2f} (pixels drawn in the same step are "
                   f"sampled independently of each other).")
    gan = fam.get("GAN")
    if gan and dif:
        g, d_ = min(gan, key=lambda r: r["fid"]), min(dif, key=lambda r: r["fid"])
        better = "diffusion" if d_["fid"] < g["fid"] else "the GAN"
        out.append(f"GAN vs diffusion: GAN FID {g['fid']:.2f} with 1 evaluation vs diffusion {d_['fid']:.2f} "
                   f"({d_['label']}, {d_['nfe']} evaluations): {better} is better by "
                   f"{max(g['fid'], d_['fid']) / max(min(g['fid'], d_['fid']), 1e-9):.2f}x in FID at this budget "
                   f"(one training seed here; benchmarks/gan_vs_diffusion.py measures the spread over seeds).")
    one = fam.get("one-shot")
    if one:
        o = min(one, key=lambda r: r["fid"])
        worst = max(rows, key=lambda r: r["fid"])
        rank = "the worst" if worst["name"] == o["name"] else f"not the worst ({worst['label']} is)"
        out.append(f"One-shot (independent pixels): FID {o['fid']:.2f} with 1 evaluation, {rank}: each pixel's "
                   f"marginal is right but nothing ties neighbouring pixels together; its mean is the blurry "
                   f"average.")
    return out


def _times(a: float, b: float) -> str:
    if a == b:
        return "the same number of"
    return f"{a / b:.2g}x" if a > b else f"1/{b / a:.3g}"


COLUMNS = [("label", "method"), ("sampler", "sampling"), ("test_bpd", "test bits/dim"), ("fid", "FID"),
           ("precision", "precision"), ("recall", "recall"), ("nfe", "evals/sample"),
           ("seconds_per_1000", "s / 1000 samples"), ("train_images_per_s", "train img/s"), ("params", "params")]


def _fmt(key, r) -> str:
    v = r[key]
    if key == "test_bpd":
        if v is None:
            return "- (no likelihood)"
        tag = {"exact": "", "estimate": " (est.)", "bound": " (bound)"}[r["bpd_kind"]]
        return f"{v:.3f} ± {r['test_bpd_sem']:.3f}{tag}"
    if key == "fid":
        return f"{v:.2f}" + (f" ± {r['fid_std']:.2f}" if r.get("fid_std") else "")
    if key in ("precision", "recall"):
        return f"{v:.2f}"
    if key == "seconds_per_1000":
        return f"{v:.1f}"
    if key == "train_images_per_s":
        return f"{v:.0f}"
    if key == "params":
        return f"{v / 1e3:.0f}k"
    return str(v)


def markdown_table(rows: list[dict], columns: Optional[list] = None) -> str:
    """A Markdown table of ``rows``. ``columns``: (key, header) pairs formatted as compare's table formats them
    (default :data:`COLUMNS`), or (key, header, format) triples whose ``format(row) -> str`` writes the cell."""
    cols = [c if len(c) == 3 else (c[0], c[1], None) for c in (columns or COLUMNS)]
    cell = lambda c, r: c[2](r) if c[2] is not None else _fmt(c[0], r)  # noqa: E731
    head = "| " + " | ".join(c[1] for c in cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "\n".join("| " + " | ".join(cell(c, r) for c in cols) + " |" for r in rows) + "\n"


def fid_nfe_plot(rows: list[dict], path: Path, *, label_key: str = "family", title: Optional[str] = None,
                 ylabel: str = "FID vs train (lower is better)", reference: Optional[tuple] = None) -> Path:
    """FID against network evaluations per sample (log x), one curve per family (its best FID at each count).

    ``label_key``: the row key whose values make the curves and name them in the legend (default: the family);
    ``title``; ``ylabel``; ``reference``: (FID, text) drawn as a dotted horizontal line (e.g. the real-vs-real
    floor)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    fams = {}
    for r in rows:
        fams.setdefault(r[label_key], []).append(r)
    for fam, rs in fams.items():
        best = {}
        for r in rs:
            if r["nfe"] not in best or r["fid"] < best[r["nfe"]]["fid"]:
                best[r["nfe"]] = r
        pts = sorted(best.values(), key=lambda r: r["nfe"])
        line, = ax.plot([r["nfe"] for r in pts], [r["fid"] for r in pts], "o-", label=fam, ms=5)
        ax.plot([r["nfe"] for r in rs], [r["fid"] for r in rs], "o", color=line.get_color(), alpha=0.35, ms=4)
        for r in pts:
            ax.annotate(r["label"] if len({q["name"] for q in rs}) > 1 else r["sampler"], (r["nfe"], r["fid"]),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
    if reference is not None:
        ax.axhline(reference[0], color="gray", ls=":", lw=1)
        ax.annotate(reference[1], (0, reference[0]), xycoords=("axes fraction", "data"), fontsize=6, color="gray",
                    xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations per sample")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _kinds(rows: list[dict]) -> str:
    """"exact for PixelCNN, one-shot; a bound for DDPM v; ...": what each likelihood column entry is."""
    words = {"exact": "exact", "estimate": "an unbiased estimate", "bound": "a variational bound",
             "none": "none"}
    by = {}
    for r in rows:
        by.setdefault(r["bpd_kind"], [])
        if r["label"] not in by[r["bpd_kind"]]:
            by[r["bpd_kind"]].append(r["label"])
    return "; ".join(f"{words[k]} for {', '.join(v)}" for k, v in by.items()) or "none"


def write_report(results: dict, out: Path) -> None:
    rows = table_rows(results)
    spec = results.get("_spec", {})
    fid_nfe_plot(rows, out / "img" / "fid_vs_nfe.png")
    lines = summary(rows)
    title = f"genlab compare: {spec.get('data', '?')}, {spec.get('budget', '?')} of training per method"
    md = [f"# {title}\n", f"FID from {spec.get('eval_n', '?')} samples against the train split; test bits/dim on "
          f"the test split ({_kinds(rows)}, all on the same levels); checkpoints chosen by validation loss (the "
          "latest where a method has none, as GANs).\n",
          "## Summary\n", *[f"- {s}" for s in lines], "", "## Table\n", markdown_table(rows),
          "## FID against network evaluations\n", "![FID vs evaluations](img/fid_vs_nfe.png)\n",
          "## Samples and the generation process\n"]
    names = spec.get("order") or [k for k in results if not k.startswith("_")]
    for name in names:
        rec = results.get(name)
        if not rec or "pictures" not in rec:
            continue
        pics = rec["pictures"]
        md.append(f"### {rec['label']} ({rec['family']})\n")
        for g in pics.get("grids", []):
            md.append(f"![{name} samples](img/{g['path']}) ")
        for key, path in _extras(pics):
            md.append(f"\n{key.replace('_', ' ')}: ![{name} {key}](img/{path})")
        md.append(f"\n\nprocess ({_slug(pics['process']['opts'])}): ![{name} process](img/{pics['process']['path']})\n")
    (out / "README.md").write_text("\n".join(md) + "\n")
    (out / "index.html").write_text(_html(title, lines, rows, results, names))


def _extras(pics: dict) -> list:
    """(name, file) of a method's own pictures (one-shot's mean image, a VAE's reconstructions)."""
    return [(k, v) for k, v in pics.items() if k not in ("grids", "process") and isinstance(v, str)]


def _html(title, lines, rows, results, names) -> str:
    e = html.escape
    import re
    bold = lambda s: re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", e(s))  # noqa: E731
    head = "".join(f"<th>{e(h)}</th>" for _, h in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{e(_fmt(k, r))}</td>" for k, _ in COLUMNS) + "</tr>" for r in rows)
    pics = []
    for name in names:
        rec = results.get(name)
        if not rec or "pictures" not in rec:
            continue
        p = rec["pictures"]
        imgs = "".join(f'<img src="img/{e(g["path"])}" title="{e(_slug(g["opts"]))}">' for g in p.get("grids", []))
        for key, path in _extras(p):
            imgs += f'<img src="img/{e(path)}" title="{e(key.replace("_", " "))}">'
        pics.append(f"<h3>{e(rec['label'])} <small>({e(rec['family'])})</small></h3><div>{imgs}</div>"
                    f'<p>process:</p><img src="img/{e(p["process"]["path"])}">')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{image-rendering:pixelated;margin:4px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{style}</style>"
            f"</head><body><h1>{e(title)}</h1><h2>Summary</h2><ul>{''.join(f'<li>{bold(s)}</li>' for s in lines)}"
            f"</ul><h2>Table</h2><table><tr>{head}</tr>{body}</table><h2>FID against network evaluations</h2>"
            f"<img src='img/fid_vs_nfe.png'><h2>Samples and the generation process</h2>{''.join(pics)}"
            "</body></html>\n")
