"""The "Why" bullets of issue 11 as scenarios through genlab's CLI main(argv), each printing what happens, in a
scratch directory. `python benchmarks/issue11_why.py` shows this checkout; `PYTHONPATH=OLD_CHECKOUT python ...` an
older one (bf52293 deletes ../keep, overwrites docs/, reads 16-bit PNGs as 255, prints tracebacks, ...)."""
import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

import genlab
from genlab.cli import main

TINY = ["model.width=8", "model.channel_mults=[1,2]", "model.num_res_blocks=1", "model.attn_resolutions=[]",
        "model.num_heads=1", "diffusion.timesteps=100", "train.batch_size=32", "train.time_budget=null",
        "train.warmup_steps=5", "train.log_every=1", "sample.steps=2", "sample.n=4", "train.val_every=0"]
print("genlab from", Path(genlab.__file__).parent.parent)


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    except BaseException as e:
        return "TRACEBACK " + type(e).__name__ + ": " + str(e).splitlines()[0][:90]
    msg = [x for x in err.getvalue().splitlines() if "error" in x.lower() or "skipping" in x]
    return f"exit {rc}" + (f": {msg[-1][:110]}" if msg else "")


root = Path(tempfile.mkdtemp())
os.chdir(root)
(root / "keep").mkdir()
(root / "keep" / "thesis.tex").write_text("x")
(root / "runs").mkdir()
r = lambda *a: print(f"  {a[0]:<52} -> {a[1]}")  # noqa: E731

print("1. run names as paths with --force")
res = run(["train", *TINY, "train.max_steps=1", "--name", "../keep", "--force", "--runs-dir", "runs", "--no-progress"])
r("train --name ../keep --force", f"{res}; keep/thesis.tex exists: {(root / 'keep' / 'thesis.tex').exists()}")
print("2. compare --out over a user's directory")
(root / "docs").mkdir()
(root / "docs" / "README.md").write_text("mine")
res = run(["compare", "--quick", "--fresh", "--out", "docs", "--only", "oneshot", "--no-progress"])
r("compare --fresh --out docs", f"{res[:60]}; docs/README.md still mine: "
  f"{(root / 'docs' / 'README.md').exists() and (root / 'docs' / 'README.md').read_text() == 'mine'}")
print("3. 16-bit PNG in a folder")
from PIL import Image  # noqa: E402
(root / "img16").mkdir()
for i in range(12):
    Image.fromarray((np.full((8, 8), 100, np.uint16) * 257)).save(root / "img16" / f"{i}.png")
from genlab.data import load_dataset  # noqa: E402
ds = load_dataset("folder", "train", root=root / "img16", image_size=8, channels=1)
r("pixel value of a 16-bit 100*257 image", int(ds.x[0, 0, 0, 0]))
print("4./5. full disk and damaged checkpoints")
assert run(["train", *TINY, "train.max_steps=6", "train.ckpt_every=3", "--name", "base", "--runs-dir", "runs",
            "--no-progress"]).startswith("exit 0")
import importlib  # noqa: E402
ck = importlib.import_module("genlab.train.checkpoint")
real = ck.save_file
calls = {"n": 0}


def full(t, f, *a, **k):
    calls["n"] += 1
    if calls["n"] == 5:
        raise __import__("safetensors").SafetensorError("No space left on device (os error 28)")
    return real(t, f, *a, **k)


ck.save_file = full
res = run(["train", *TINY, "train.max_steps=6", "train.ckpt_every=3", "--name", "disk", "--runs-dir", "runs",
           "--no-progress"])
ck.save_file = real
r("disk full during the 2nd checkpoint", f"{res[:90]}; temp dirs left: "
  f"{len(list((root / 'runs' / 'disk' / 'checkpoints').glob('.*')))}")
for name, how in [("model.safetensors", "truncate"), ("state.json", "empty"), ("state.json", "garbage"),
                  ("ema.safetensors", "remove")]:
    d = root / "runs" / f"dmg-{name}-{how}"
    shutil.copytree(root / "runs" / "base", d)
    f = d / "checkpoints" / "step_0000006" / name
    if how == "truncate":
        f.write_bytes(f.read_bytes()[:100])
    elif how == "empty":
        f.write_bytes(b"")
    elif how == "garbage":
        f.write_text("{not json")
    else:
        f.unlink()
    r(f"sample with latest {name} {how}d", run(["sample", "--ckpt", d, "--n", "2", "--out", root / "s.png"]))
print("6. NaN and zero values")
r("train.lr=nan", run(["train", *TINY, "train.max_steps=2", "train.lr=nan", "--name", "nan", "--runs-dir", "runs",
                        "--no-progress"]) + f"; run dir made: {(root / 'runs' / 'nan').exists()}")
for args in (["--eta", "nan"], ["--n", "0"], ["--batch-size", "0"], ["--seed", str(2 ** 70)], ["--steps", "0"]):
    r("sample " + " ".join(args), run(["sample", "--ckpt", root / "runs" / "base", "--out", root / "x.png", *args]))
r("eval --seeds 0", run(["eval", "--ckpt", root / "runs" / "base", "--n", "8", "--steps", "1", "--seeds", "0"]))
print("7. list-valued keys")
for o in ("train.adam_betas=[a,b]", "model.channel_mults=[1.5,2]", "model.attn_resolutions=abc"):
    r(o, run(["train", "--dry-run", o]))
print("8. .npy samples")
for name, arr in [("strings", np.array([["a"]])), ("complex", np.zeros((8, 1, 8, 8), complex)),
                  ("bool", np.zeros((8, 1, 8, 8), bool))]:
    np.save(root / f"{name}.npy", arr)
    r(f"eval --samples {name}.npy", run(["eval", "--samples", root / f"{name}.npy"]))
(root / "text.npy").write_text("hello")
r("eval --samples text.npy (a text file)", run(["eval", "--samples", root / "text.npy"]))
print("10./11. resume")
res = run(["train", *TINY, "train.max_steps=6", "train.ckpt_every=3", "--name", "base", "--runs-dir", "runs",
           "--resume", "--no-progress"])
r("resume a finished run", res)
shutil.rmtree(root / "runs" / "base" / "checkpoints" / "step_0000006")
run(["train", *TINY, "train.max_steps=6", "train.ckpt_every=3", "--name", "base", "--runs-dir", "runs", "--resume",
     "--no-progress"])
steps = [json.loads(x).get("step") for x in (root / "runs" / "base" / "metrics.jsonl").read_text().splitlines()]
r("metrics.jsonl steps after resuming from step 3", steps)
