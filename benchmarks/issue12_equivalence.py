"""Issue 12: the method protocol, the run module and the loop in pieces change no number.

Trains tiny runs of every family that existed before issue 12 (diffusion, class-conditional diffusion with
guidance, PixelCNN, any-order AR, one-shot) and samples them with several samplers, under this checkout and under
an older one, each in its own process, and compares SHA-256 digests of the EMA weights, the optimizer states and
the samples, the network evaluations and any-order's test bits/dim. Identical digests mean that B1's and B2's
genlab rows are unchanged for the same number of training steps (a time budget may still give another step
count on a busier machine).

    git worktree add /tmp/old bb50ff2          # the last commit before issue 12
    .venv/bin/python benchmarks/issue12_equivalence.py --old /tmp/old
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.width=8", "model.channel_mults=[1,2]", "model.num_res_blocks=1", "model.attn_resolutions=[]",
        "model.num_heads=1", "diffusion.timesteps=100", "train.batch_size=32", "train.time_budget=null",
        "train.warmup_steps=5", "train.log_every=5", "sample.steps=5", "sample.n=8", "train.max_steps=6",
        "train.val_every=3", "train.num_threads=1", "ar.width=8", "ar.layers=2"]
CASES = {"dif": ("digits_ddpm", [], [dict(sampler="ddim", steps=5), dict(sampler="dpmpp-2m", steps=4),
                                     dict(sampler="heun", steps=3), dict(sampler="ddpm", steps=5)]),
         "cfg": ("digits_cfg", ["diffusion.cond_drop=0.2"], [dict(sampler="ddim", steps=5, guidance=3.0)]),
         "pcnn": ("digits_pixelcnn", [], [dict(), dict(temperature=0.8, top_k=5)]),
         "ao": ("digits_any_order", [], [dict(k=1), dict(k=4, order="raster")]),
         "one": ("digits_oneshot", [], [dict()])}


def digests(root: str) -> dict:
    """Runs in the checkout on sys.path[0]: train, sample, hash."""
    import genlab.api as api
    from genlab.eval.likelihood import bits_per_dim

    out = {}
    for name, (cfg, extra, samplers) in CASES.items():
        res = api.train(cfg, TINY + extra, name=name, runs_root=root, force=True, progress=False)
        latest = sorted((res.run_dir / "checkpoints").glob("step_*"))[-1]
        for f in ("ema", "optimizer"):
            out[f"{name}.{f}"] = hashlib.sha256((latest / f"{f}.safetensors").read_bytes()).hexdigest()[:16]
        for i, s in enumerate(samplers):
            x, nfe, _ = api.sample(res.run_dir, n=6, seed=3, batch_size=4, progress=False, **s)
            out[f"{name}.samples{i}"] = [hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16], nfe]
        if name == "ao":
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                cfg_, method, model, _ = api.load_run(res.run_dir)       # the tuple: works in both checkouts
            out["ao.bpd"] = bits_per_dim(method, model, api.load_data(cfg_, "test"), draws=2)["bpd"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="an older checkout (e.g. a git worktree at bb50ff2)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, args.child)
        print(json.dumps(digests(tempfile.mkdtemp(prefix="genlab-eq-"))))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    got = {}
    for label, tree in (("old", args.old), ("new", str(ROOT))):
        p = subprocess.run([sys.executable, __file__, "--old", args.old, "--child", tree], env=env,
                           capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
        got[label] = json.loads(p.stdout.strip().splitlines()[-1])
    keys = sorted(set(got["old"]) | set(got["new"]))
    same = [k for k in keys if got["old"].get(k) == got["new"].get(k)]
    print("| quantity | old | new | same |\n|---|---|---|---|")
    for k in keys:
        print(f"| {k} | {got['old'].get(k)} | {got['new'].get(k)} | {'yes' if k in same else '**NO**'} |")
    print(f"\n{len(same)} of {len(keys)} identical")
    sys.exit(0 if len(same) == len(keys) else 1)


if __name__ == "__main__":
    main()
