"""Benchmark B4: conditioning and guidance (issue 6).

    python benchmarks/b4_guidance.py [--out bench_out/b4] [--only cfg shapes ...] [--fresh STAGE ...] [--copy-docs]

The protocol is section B4 of benchmarks/README.md. Stages (each trains its models under the stated budget on
2 CPU threads, then evaluates; finished runs and finished stages are kept, so an interrupted benchmark resumes):

- cfg     class-conditional digits diffusion (digits_cfg, 300 s): feature-network accuracy of the requested class
          and FID vs train per classifier-free guidance scale, 1000 samples, DPM-Solver++ 20 steps.
- clf     unconditional digits diffusion (digits_ddpm, 300 s) + noise-aware classifier (digits_classifier,
          120 s): the same per classifier-guidance scale.
- ar      class-conditional PixelCNN (digits_pixelcnn + class_cond, cond_drop 0.1, 300 s): the same per
          guidance scale on the logits, 500 samples.
- shapes  text-conditional diffusion on 16x16 shapes (shapes_text, 900 s): attribute accuracy (classifier
          trained on the generator's ground truth) of 500 samples for the test captions (seen combinations)
          and 500 for the held-out captions (unseen shape-colour pairs), and FID in the attribute net's
          features (seen vs the train split, held-out vs 1000 real images of the held-out pairs) per scale.
- clip    CLIP guidance (GLIDE sec. 2.4) of the same text-conditional shapes model (shapes_text, its plain
          conditional sampler, CFG scale 1) with a noise-aware CLIP (shapes_clip, 300 s): the shapes metrics per
          CLIP scale, beside the classifier-free rows of ``shapes``.
- inpaint 300 digits test images with masks (bottom half, centre 4x4, left half): replacement with the
          unconditional model of `clf` (DPM-20 and DDPM-50), RePaint (DDPM-50, 4 resamples), GLIDE-style
          mask-conditioned model (digits_inpaint, 300 s, DPM-20): PSNR in the hole, feature-net accuracy of the
          original digit's class on the completions, FID vs train.
- upsample shapes 16 -> 32 upsampler (shapes_upsampler, 600 s) vs bicubic on test images: PSNR, FID and
          attribute accuracy at 32x32; and the cascade shapes_text -> upsampler.

--copy-docs regenerates docs/b4_*.png (the README's figures) with the same commands the README shows.

Caching: every run trains through ``genlab.report.compare.train_or_reuse`` into ``OUT/runs/NAME``, as genlab compare's
runs do: a run that finished with the same config (its done.json) is reused, an interrupted one resumed, one with
another config (another budget, --smoke) trained again. The stages' results stay in B4's own ``OUT/results.json``
(one entry per stage, plus ``trained``: steps and seconds per run), written atomically by compare's
``save_results``: they are guidance sweeps, PSNRs and attribute accuracies, not the per-sampler rows of FID,
precision/recall and bits/dim that compare's results format holds, so they do not fit it. A cached stage is redone
when a run it used was trained again (``--fresh STAGE`` redoes it anyway).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCALES = (0.0, 1.0, 2.0, 3.0, 5.0, 7.5)
BUDGETS = {"cfg": 300, "ddpm": 300, "classifier": 120, "pixelcnn": 300, "shapes_text": 900, "inpaint": 300,
           "upsampler": 600, "clip": 300}
CLIP_SCALES = (0.0, 10.0, 30.0, 100.0, 300.0)   # CLIP guidance: its gradient is of a cosine similarity (|.| <= 1)
RUNS = {  # run name -> (recipe, overrides)
    "cfg": ("digits_cfg", []),
    "ddpm": ("digits_ddpm", []),
    "classifier": ("digits_classifier", []),
    "pixelcnn": ("digits_pixelcnn", ["model.class_cond=true", "diffusion.cond_drop=0.1"]),
    "shapes_text": ("shapes_text", []),
    "inpaint": ("digits_inpaint", []),
    "upsampler": ("shapes_upsampler", []),
    "clip": ("shapes_clip", []),
}
SMOKE = False   # --smoke: 5 s budgets and 40 samples, to check the pipeline end to end


def N(n: int) -> int:
    return 40 if SMOKE else n


PROMPTS = ["a red circle in the top left", "a large blue square in the bottom right",
           "a small yellow triangle in the center", "a cyan cross in the top right",
           "a large magenta circle in the bottom left", "a green square in the center",
           # held-out pairs: never seen in training
           "a green circle in the top right", "a blue triangle in the bottom left"]


class Bench:
    def __init__(self, out: Path):
        from genlab.report.compare import load_results

        self.out = out
        self.runs = out / "runs"
        self.path = out / "results.json"
        self.results = load_results(out)
        self.results.setdefault("trained", {})
        self.used = {}          # run name -> its training id, for the stage being computed

    def save(self):
        from genlab.report.compare import save_results

        self.out.mkdir(parents=True, exist_ok=True)
        save_results(self.results, self.out)

    def run(self, name: str) -> Path:
        """Run ``name`` trained (or reused, or resumed) under its budget; return its directory."""
        from genlab.report.compare import train_or_reuse
        from genlab.train import checkpoint as ck

        recipe, over = RUNS[name]
        budget = 5 if SMOKE else BUDGETS[name]
        t0 = time.time()
        t = train_or_reuse(name, recipe, over + [f"train.time_budget={budget}s"], self.runs, progress=False,
                           budget_label=f"{budget} s", log_prefix="[b4]")
        state = ck.read_state(ck.resolve_checkpoint(t.run_dir))
        train_id = f"{state['step']}:{state['time_used']:.6f}"
        if t.trained or self.results["trained"].get(name, {}).get("train_id") != train_id:
            self.results["trained"][name] = {"recipe": recipe, "overrides": over, "budget_s": budget,
                                             "steps": state["step"], "train_s": round(state["time_used"], 1),
                                             "wall_s": round(time.time() - t0, 1), "train_id": train_id}
            self.save()
            if t.trained:
                log(f"trained {name}: {state['step']} steps in {state['time_used']:.0f}s")
        self.used[name] = train_id
        return t.run_dir

    def stale(self, stage: str) -> bool:
        """A cached stage whose runs were trained again since (their training ids changed)."""
        used = self.results.get(stage, {}).get("runs", {})
        return any(self.results["trained"].get(r, {}).get("train_id") != tid for r, tid in used.items())


def log(msg: str) -> None:
    print(f"[b4 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ digits guidance

def digits_scores(x: torch.Tensor, labels: torch.Tensor) -> dict:
    """Feature-network accuracy of the requested classes and FID vs train of samples in [-1, 1]."""
    from genlab.data import from_model
    from genlab.eval import metrics as M
    from genlab.eval.evaluate import reference

    ref = reference("digits")
    f, p = ref["fx"](from_model(x, ref["levels"]).numpy(), ref["levels"])
    return {"accuracy": M.conditional_accuracy(p, labels),
            "fid": M.fid_from_stats(M.feature_stats(f), ref["stats_train"])}


def guidance_sweep(b: Bench, stage: str, run: str, n: int, classifier: str | None = None, **opts) -> dict:
    from genlab import api

    run_ = api.load_run(b.run(run))
    method, model = run_.method, run_.model
    kw = {}
    if classifier is not None:
        kw["classifier"] = api.load_classifier(b.run(classifier), method.cfg)
    labels = api.default_labels(n, 10)
    rows = []
    for s in SCALES:
        t0 = time.time()
        if classifier is not None:
            x, nfe = method.sample(model, n, y=labels, seed=0, classifier_scale=s, **kw, **opts)
        else:
            x, nfe = method.sample(model, n, y=labels, seed=0, guidance=s, **opts)
        r = digits_scores(x, labels)
        r.update(scale=s, nfe=nfe, seconds=round(time.time() - t0, 1))
        rows.append(r)
        log(f"{stage} scale {s}: accuracy {r['accuracy']:.3f}, FID {r['fid']:.2f} ({nfe} evaluations)")
    return {"n": n, "rows": rows, "opts": {k: v for k, v in opts.items()}}


def stage_cfg(b: Bench) -> dict:
    return guidance_sweep(b, "cfg", "cfg", N(1000))


def stage_clf(b: Bench) -> dict:
    return guidance_sweep(b, "clf", "ddpm", N(1000), classifier="classifier", sampler="dpmpp-2m", steps=20)


def stage_ar(b: Bench) -> dict:
    return guidance_sweep(b, "ar", "pixelcnn", N(500))


# ------------------------------------------------------------------------------------------ shapes text

def shapes_sweep(b: Bench, scales, sample_kw) -> dict:
    """Attribute accuracy and FID of the shapes_text model per scale, for the test captions (seen combinations)
    and the held-out ones; ``sample_kw(scale)``: the sampling keywords of a scale (guidance, CLIP inputs)."""
    n = N(500)
    from genlab import api
    from genlab.data import from_model, load_dataset
    from genlab.eval import metrics as M
    from genlab.eval.attributes import load_attribute_classifier

    run_ = api.load_run(b.run("shapes_text"))
    method, model = run_.method, run_.model
    clf = load_attribute_classifier(16, log=log)
    from genlab.data.shapes import HELDOUT_COMBOS, make_shapes

    train = load_dataset("shapes", "train+val")
    # FID references: seen combinations against the train split, held-out ones against 1000 fresh real images of
    # the held-out pairs (the train split has none)
    stats = {"seen": M.feature_stats(clf.predict(train.x)[0]),
             "heldout": M.feature_stats(clf.predict(make_shapes(1000, 16, seed=31, combos=HELDOUT_COMBOS)[0])[0])}
    out = {"n": n, "classifier_test_accuracy": clf.info["test_accuracy"], "rows": []}
    sets = {split: load_dataset("shapes", split) for split in ("test", "heldout")}
    for s in scales:
        row = {"scale": s}
        for split, ds in sets.items():
            caps = ds.captions[:n]
            attrs = {a: v[:n] for a, v in ds.attrs.items()}
            t0 = time.time()
            x, nfe = method.sample(model, n, y=model.text.tokenizer.encode(caps), seed=0, **sample_kw(s, caps))
            lv = from_model(x, 256)
            acc = clf.accuracy(lv, attrs)
            f, _ = clf.predict(lv)
            key = "seen" if split == "test" else "heldout"
            row[key] = acc
            row[f"fid_{key}"] = M.fid_from_stats(M.feature_stats(f), stats[key])
            row["nfe"], row[f"seconds_{key}"] = nfe, round(time.time() - t0, 1)
        out["rows"].append(row)
        log(f"shapes scale {s}: seen mean {row['seen']['mean']:.3f} all {row['seen']['all']:.3f}, held-out mean "
            f"{row['heldout']['mean']:.3f} all {row['heldout']['all']:.3f}, FID {row['fid_seen']:.2f}")
    # real images through the same classifier and FID (n of them): the ceiling
    for key, real in (("seen", sets["test"]), ("heldout", sets["heldout"])):
        out[f"real_{key}"] = clf.accuracy(real.x[:n], {a: v[:n] for a, v in real.attrs.items()})
        out[f"real_fid_{key}"] = M.fid_from_stats(M.feature_stats(clf.predict(real.x[:n])[0]), stats[key])
    return out


def stage_shapes(b: Bench) -> dict:
    """Classifier-free guidance of the text-conditional shapes model."""
    return shapes_sweep(b, SCALES, lambda s, caps: {"guidance": s})


def stage_clip(b: Bench) -> dict:
    """CLIP guidance of the same model (its conditional sampler, CFG scale 1), with the noise-aware CLIP."""
    from genlab import api

    gen = api.load_run(b.run("shapes_text"))
    clip = api.load_clip(b.run("clip"), gen.config, generator=gen.model)
    tok = clip.text.tokenizer
    out = shapes_sweep(b, CLIP_SCALES, lambda s, caps: {"clip": clip, "clip_tokens": tok.encode(caps),
                                                        "clip_scale": s})
    from genlab.data import load_dataset, to_model

    test = load_dataset("shapes", "test")
    run_ = api.load_run(b.run("clip"))
    out["clip_retrieval"] = {f"t={t}": run_.method.retrieval_accuracy(run_.model, to_model(test.x[:500], 256),
                                                                     test.captions[:500], t)
                             for t in (0, 250, 500, 750)}
    log(f"CLIP retrieval accuracy among 500 test captions: {out['clip_retrieval']}")
    return out


# ------------------------------------------------------------------------------------------ inpainting

MASKS = ("bottom half", "centre 4x4", "left half")


def digit_mask(kind: str, n: int) -> torch.Tensor:
    """bool (n, 1, 8, 8), True = known."""
    m = torch.ones(8, 8, dtype=torch.bool)
    if kind == "bottom half":
        m[4:] = False
    elif kind == "centre 4x4":
        m[2:6, 2:6] = False
    else:
        m[:, :4] = False
    return m.expand(n, 1, 8, 8).clone()


def stage_inpaint(b: Bench) -> dict:
    n = N(300)
    from genlab import api
    from genlab.data import load_dataset, to_model

    test = load_dataset("digits", "test")
    n = min(n, len(test))
    x = to_model(test.x[:n], test.levels)
    labels = test.y[:n]
    models = {"replace": ("ddpm", dict(sampler="dpmpp-2m", steps=20)),
              "replace, ddpm-50": ("ddpm", dict(sampler="ddpm", steps=50)),
              "repaint": ("ddpm", dict(sampler="ddpm", steps=50, resample=4)),
              "glide": ("inpaint", dict(sampler="dpmpp-2m", steps=20))}
    loaded = {}
    out = {"n": n, "rows": []}
    for kind in MASKS:
        known_mask = digit_mask(kind, n)
        for name, (run, opts) in models.items():
            if run not in loaded:
                loaded[run] = api.load_run(b.run(run))
            method, model = loaded[run].method, loaded[run].model
            t0 = time.time()
            xs, nfe = method.sample(model, n, seed=0, known=x.clone(), known_mask=known_mask, **opts)
            xs = api.quantize(xs, test.levels)
            hole = ~known_mask
            r = digits_scores(xs, labels)
            r.update(mask=kind, method=name, psnr=psnr(xs[hole], x[hole]), nfe=nfe, seconds=round(time.time() - t0, 1))
            out["rows"].append(r)
            log(f"inpaint {kind} {name}: PSNR {r['psnr']:.2f} dB, class kept {r['accuracy']:.3f}, FID {r['fid']:.2f}")
    return out


# ------------------------------------------------------------------------------------------ super-resolution

def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio (dB) of images in [-1, 1], on [0, 1] intensities (inf when identical)."""
    mse = float(((a - b) / 2).pow(2).mean())
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def stage_upsample(b: Bench) -> dict:
    n = N(500)
    from genlab import api
    from genlab.data import from_model, load_dataset, to_model
    from genlab.diffusion.conditioning import downsample, upsample_bicubic
    from genlab.eval import metrics as M
    from genlab.eval.attributes import load_attribute_classifier

    up_dir = b.run("upsampler")
    clf32 = load_attribute_classifier(32, log=log)
    train32 = load_dataset("shapes", "train+val", image_size=32)
    stats_train = M.feature_stats(clf32.predict(train32.x)[0])
    test32 = load_dataset("shapes", "test", image_size=32)
    x32 = to_model(test32.x[:n], 256)
    attrs = {a: v[:n] for a, v in test32.attrs.items()}
    lr = api.quantize(downsample(x32, 16), 256)

    def score(x, name, nfe=0, seconds=0.0, truth=True):
        """truth=False: samples of the cascade, which have no ground truth to compute a PSNR against."""
        lv = from_model(x, 256)
        f, _ = clf32.predict(lv)
        r = {"name": name, "psnr": psnr(x, x32) if truth else None,
             "fid": M.fid_from_stats(M.feature_stats(f), stats_train),
             "accuracy": clf32.accuracy(lv, attrs), "nfe": nfe, "seconds": round(seconds, 1)}
        log(f"upsample {name}: PSNR {r['psnr'] or 0:.2f} dB, FID {r['fid']:.2f}, attribute mean {r['accuracy']['mean']:.3f}")
        return r

    rows = [score(api.quantize(upsample_bicubic(lr, 32), 256), "bicubic"),
            score(x32, "real 32x32 (ceiling)")]
    for lt in (0.0, 0.05, 0.1):
        t0 = time.time()
        x, nfe, _ = api.upsample(up_dir, lr, seed=0, lowres_t=lt)
        rows.append(score(x, f"upsampler (lowres_t {lt})", nfe, time.time() - t0))
    # the cascade: text-conditional 16x16 base, then the upsampler
    run_ = api.load_run(b.run("shapes_text"))
    method, model = run_.method, run_.model
    caps = test32.captions[:n]
    t0 = time.time()
    base, nfe0 = method.sample(model, n, y=model.text.tokenizer.encode(caps), seed=0, guidance=3.0)
    base = api.quantize(base, 256)
    casc, nfe1, _ = api.upsample(up_dir, base, seed=0)
    rows.append(score(casc, "cascade 16 (guidance 3) -> 32", nfe0 + nfe1, time.time() - t0, truth=False))
    rows.append(score(api.quantize(upsample_bicubic(base, 32), 256), "cascade base -> bicubic", nfe0, truth=False))
    return {"n": n, "rows": rows}


STAGES = {"cfg": stage_cfg, "shapes": stage_shapes, "clf": stage_clf, "ar": stage_ar, "inpaint": stage_inpaint,
          "upsample": stage_upsample, "clip": stage_clip}


# ------------------------------------------------------------------------------------------ figures

def acc_fid_plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    ax = axes[0]
    for key, label in (("cfg", "diffusion, classifier-free"), ("clf", "diffusion, classifier guidance"),
                       ("ar", "PixelCNN, classifier-free")):
        if key not in results:
            continue
        rows = results[key]["rows"]
        ax.plot([r["fid"] for r in rows], [100 * r["accuracy"] for r in rows], "o-", label=label)
        for r in rows:
            ax.annotate(f"{r['scale']:g}", (r["fid"], 100 * r["accuracy"]), fontsize=6, xytext=(3, -8),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("FID vs train (lower is better)")
    ax.set_ylabel("class accuracy of samples (%)")
    ax.set_title("class-conditional digits: guidance scale sweep", fontsize=9)
    ax.axhline(98, color="gray", lw=0.6, ls="--")
    ax.legend(fontsize=7)
    ax = axes[1]
    if "shapes" in results:
        for stage, kind in (("shapes", "CFG"), ("clip", "CLIP")):
            if stage not in results:
                continue
            rows = results[stage]["rows"]
            for key, label, m in (("seen", "seen", "o-"), ("heldout", "held-out", "s--")):
                ax.plot([r[f"fid_{key}"] for r in rows], [100 * r[key]["mean"] for r in rows], m,
                        label=f"{kind}, {label} combinations")
                for r in rows:
                    ax.annotate(f"{r['scale']:g}", (r[f"fid_{key}"], 100 * r[key]["mean"]), fontsize=6,
                                xytext=(3, -8), textcoords="offset points")
        ax.axhline(90, color="gray", lw=0.6, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("FID in attribute-net features (vs real images)")
        ax.set_ylabel("attribute accuracy, mean of 4 (%)")
        ax.set_title("text-conditional shapes 16x16: guidance scale sweep", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _labeled_panels(panels: list, row_labels: list, titles: list, path: Path, width: float = 9.0) -> None:
    """Side-by-side picture grids (PIL images) with a title each and labels on the rows of the first."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = panels[0].height / panels[0].width * width / len(panels) + 0.5
    fig, axes = plt.subplots(1, len(panels), figsize=(width, h), dpi=110, squeeze=False)
    for k, (ax, im, title) in enumerate(zip(axes[0], panels, titles)):
        ax.imshow(im, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        rows = len(row_labels)
        ax.set_yticks([(i + 0.5) * im.height / rows for i in range(rows)])
        ax.set_yticklabels(row_labels if k == 0 else [], fontsize=7)
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def inpaint_figure(b: Bench, path: Path, n: int = 6) -> None:
    """Per mask: the masked input (hole in blue), replacement, RePaint and the GLIDE-style model, the original."""
    from genlab import api
    from genlab.data import load_dataset, to_model
    from genlab.report.images import auto_scale, grid, mark_unknown

    test = load_dataset("digits", "test")
    x = to_model(test.x[:n], test.levels)
    runs = {r: api.load_run(b.run(r)) for r in ("ddpm", "inpaint")}
    panels = []
    for kind in MASKS:
        m = digit_mask(kind, n)
        rows = [mark_unknown(x, m)]
        for run, opts in (("ddpm", dict(sampler="dpmpp-2m", steps=20)),
                          ("ddpm", dict(sampler="ddpm", steps=50, resample=4)),
                          ("inpaint", dict(sampler="dpmpp-2m", steps=20))):
            method, model = runs[run].method, runs[run].model
            xs, _ = method.sample(model, n, seed=0, known=x.clone(), known_mask=m, **opts)
            rows.append(api.quantize(xs, test.levels).expand(-1, 3, -1, -1))
        rows.append(x.expand(-1, 3, -1, -1))
        panels.append(grid(torch.cat(rows), nrow=n, scale=auto_scale(8)))
    _labeled_panels(panels, ["masked", "replacement\nDPM-20", "RePaint\nDDPM-50 x4", "inpainting\nmodel DPM-20",
                             "original"], [f"mask: {k}" for k in MASKS], path)


def upsample_figure(b: Bench, path: Path, n: int = 8) -> None:
    from genlab import api
    from genlab.data import load_dataset, to_model
    from genlab.diffusion.conditioning import downsample, upsample_bicubic
    from genlab.report.images import grid

    test32 = load_dataset("shapes", "test", image_size=32)
    x32 = to_model(test32.x[:n], 256)
    lr = api.quantize(downsample(x32, 16), 256)
    near = torch.nn.functional.interpolate(lr, size=32, mode="nearest")
    up, _, _ = api.upsample(b.run("upsampler"), lr, seed=0)
    panel = grid(torch.cat([near, api.quantize(upsample_bicubic(lr, 32), 256), up, x32]), nrow=n, scale=3)
    _labeled_panels([panel], ["16x16 input", "bicubic", "upsampler", "real 32x32"],
                    ["super-resolution 16 -> 32 on held-out test images"], path, width=7.5)


def copy_docs(b: Bench) -> None:
    """The README's pictures, made with the commands the README shows."""
    from genlab import api

    docs = ROOT / "docs"
    acc_fid_plot(b.results, docs / "b4_acc_vs_fid.png")
    api.sample(b.run("cfg"), n=80, labels=[i // 8 for i in range(80)], guidance=3.0, nrow=8,
               out=docs / "b4_classes.png", progress=False)
    api.sample(b.run("shapes_text"), n=8 * len(PROMPTS), prompt=PROMPTS, guidance=3.0,
               out=docs / "b4_prompts.png", progress=False)
    api.sample(b.run("shapes_text"), n=4 * len(PROMPTS), prompt=PROMPTS, guidance=3.0,
               upsampler=b.run("upsampler"), out=docs / "b4_cascade.png", progress=False)
    inpaint_figure(b, docs / "b4_inpaint.png")
    upsample_figure(b, docs / "b4_upsample.png")
    log("wrote docs/b4_*.png")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench_out" / "b4"))
    ap.add_argument("--only", nargs="+", choices=list(STAGES), default=None)
    ap.add_argument("--fresh", nargs="+", choices=list(STAGES), default=(), help="re-evaluate these stages")
    ap.add_argument("--copy-docs", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="5 s budgets, 40 samples: check the pipeline only")
    args = ap.parse_args(argv)
    global SMOKE
    SMOKE = args.smoke
    torch.set_num_threads(2)
    b = Bench(Path(args.out))
    for name in args.only or list(STAGES):
        if name in b.results and name not in args.fresh and not b.stale(name):
            continue
        t0 = time.time()
        b.used = {}
        b.results[name] = STAGES[name](b)
        b.results[name]["eval_wall_s"] = round(time.time() - t0, 1)
        b.results[name]["runs"] = dict(b.used)
        b.save()
    if args.copy_docs:
        copy_docs(b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
