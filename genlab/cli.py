"""genlab's one command-line entry point: ``genlab {train,sample,eval,compare,demo,data,featnet,configs}``.

Each subcommand calls the function of the same name in :mod:`genlab.api`; config keys are set with
``section.key=value`` overrides, so every option is also a YAML key and a Python argument.
"""
from __future__ import annotations

import argparse
import sys

from .methods.base import option_flags, options_given


def _add_train(sub):
    p = sub.add_parser("train", help="train a model (config recipe + key=value overrides)",
                       description="Train a model into runs/NAME. Example: genlab train --config digits_ddpm "
                                   "train.time_budget=60s model.width=48 --name quick")
    p.add_argument("--config", "-c", default=None,
                   help="shipped recipe name (see `genlab configs`) or path to a YAML file [digits_ddpm; with "
                        "--resume: the run's own config.yaml]")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.lr=1e-3")
    p.add_argument("--name", help="run name: writes to runs/NAME [CONFIG-DATE-TIME]")
    p.add_argument("--resume", action="store_true", help="continue runs/NAME from its latest checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite an existing runs/NAME")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and model size, then exit")
    p.add_argument("--runs-dir", default=None, help="parent directory of runs [runs, or $GENLAB_RUNS]")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N | mps (same as train.device=)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_sample(sub):
    p = sub.add_parser("sample", help="draw samples from a checkpoint",
                       description="Draw samples. --out grid.png (a grid), samples.npy (uint8 dataset levels, "
                                   "N x C x H x W), or DIR/ (one PNG per sample, named by its seed).")
    p.add_argument("--ckpt", required=True, help="run directory (runs/NAME) or checkpoint directory")
    p.add_argument("--n", type=int, default=64, help="number of samples [64]")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i [0]")
    p.add_argument("--batch-size", type=int, default=256, help="samples per batch [256]")
    p.add_argument("--out", default=None, help="output .png / .npy / DIR/ [samples.png; process.png with --process]")
    p.add_argument("--process", action="store_true",
                   help="write a picture of the generation process (diffusion: x_t and x0_hat over the steps; "
                        "autoregressive: the image filling in)")
    p.add_argument("--labels", "--class", type=int, nargs="+", default=None, dest="labels",
                   help="class label(s) of a class-conditional model: one for all samples or one per sample "
                        "[(seed + i) mod K]")
    p.add_argument("--classifier", default=None,
                   help="classifier guidance: a noise-aware classifier run (a classifier method, same schedule)")
    p.add_argument("--clip", default=None,
                   help="CLIP guidance towards --prompt: a noise-aware CLIP run (method=clip, same schedule)")
    p.add_argument("--prompt", action="append", default=None,
                   help="caption for a text-conditional model; repeat for several (one grid row each)")
    p.add_argument("--upsampler", default=None,
                   help="super-resolution run (model.image_cond=lowres) applied to the samples: a cascade")
    p.add_argument("--nrow", type=int, default=None, help="images per grid row [one row per prompt, else square]")
    p.add_argument("--which", choices=["latest", "best"], default="latest", help="checkpoint of a run [latest]")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--device", default="auto")
    option_flags(p)      # every method's sampling options, from their dataclasses (--sampler, --k, ...)


def _add_inpaint(sub):
    p = sub.add_parser("inpaint", help="fill the masked part of an image with a model",
                       description="Fill the white pixels of --mask (same size as the image; black = keep) in "
                                   "--image with --n completions; writes the masked input (hole in blue) and the "
                                   "completions side by side. Diffusion (any sampler), any-order and raster AR.")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--image", required=True, help="PNG/JPEG of the model's image size")
    p.add_argument("--mask", required=True, help="PNG of the same size: white = generate, black = keep")
    p.add_argument("--out", default="inpaint.png")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", "--class", type=int, nargs="+", default=None, dest="labels")
    p.add_argument("--prompt", default=None, help="caption for a text-conditional model")
    p.add_argument("--device", default="auto")
    option_flags(p)


def _add_demo(sub):
    p = sub.add_parser("demo", help="train on built-in digits for about two minutes, write pictures")
    p.add_argument("--name", default="demo")
    p.add_argument("--time-budget", default="100s", help="training time [100s]")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--force", action="store_true", help="replace an existing runs/NAME (runs/demo always is)")


def _add_data(sub):
    from .data.download import SPECS

    p = sub.add_parser("data", help="download a dataset and verify its published checksums",
                       description=f"Download NAME ({', '.join(SPECS)}) into --root (default: $GENLAB_DATA or "
                                   "~/.cache/genlab/data/NAME). Files already present are verified, not fetched. "
                                   "cifar10 is the binary archive cifar-10-binary.tar.gz (162 MB, read without "
                                   "extracting it).")
    p.add_argument("name", choices=list(SPECS))
    p.add_argument("--root", default=None, help="directory for the files")
    p.add_argument("--mirror", default=None, help="base URL to download from instead of the official ones")
    p.add_argument("--force", action="store_true", help="download again even if the files verify")


def _add_eval(sub):
    p = sub.add_parser("eval", help="evaluate a checkpoint or a set of samples (FID, KID, P/R, memorization, cost)",
                       description="Evaluate samples drawn from --ckpt, or given by --samples (a .npy of dataset "
                                   "levels or a directory of PNGs) for --data. Prints a table; --json writes all.")
    p.add_argument("--ckpt", default=None, help="run or checkpoint directory to sample from")
    p.add_argument("--samples", default=None, help="samples.npy (uint8 levels, N x C x H x W) or a PNG directory")
    p.add_argument("--data", default=None, help="dataset the samples imitate (with --samples): digits | mnist | "
                                                "fashion-mnist | cifar10 | shapes | folder [digits]")
    p.add_argument("--root", default=None,
                   help="with --samples: the data directory (--data folder: the image folder); with --ckpt of a "
                        "folder run: where its image folder is now, if it moved")
    _folder_flags(p)
    p.add_argument("--n", type=int, default=1000, help="samples per seed [1000]")
    p.add_argument("--seeds", type=int, default=1, help="sampling seeds: report mean and spread [1]")
    p.add_argument("--raw", action="store_true", help="raw weights instead of EMA")
    p.add_argument("--which", choices=["latest", "best"], default="latest")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--pairs", default=None, help="write the closest sample/training pairs to this PNG")
    p.add_argument("--json", default=None, help="write every number to this JSON file")
    p.add_argument("--bpd", action="store_true",
                   help="also the test split's bits/dim (--ckpt only; a folder: its val split, as folders have no "
                        "test split), as the method defines it: exact, a bound or an estimate (each method's "
                        "likelihood kind)")
    p.add_argument("--draws", type=int, default=None,
                   help="with --bpd, for a likelihood that is estimated: Monte Carlo draws per image [the "
                        "method's default: any-order 16, diffusion all T terms of the bound]")
    p.add_argument("--t-samples", type=int, default=None,
                   help="the same as --draws, by its diffusion name: random timesteps per image instead of all T "
                        "terms of the bound")
    option_flags(p)


def _folder_flags(p) -> None:
    """The settings of an image folder that decide its splits (data.* of the run that trained on it)."""
    g = p.add_argument_group("image folders (--data folder; the same values as the run's data.* settings)")
    g.add_argument("--image-size", type=int, default=None, help="data.image_size (required for a folder)")
    g.add_argument("--channels", type=int, default=None, help="data.channels: 1 or 3 [3]")
    g.add_argument("--labels", action="store_true",
                   help="data.labels=true: classes from sub-folders (a supervised feature network)")
    g.add_argument("--val-size", type=int, default=None, help="data.val_size [10%% of the images]")
    g.add_argument("--split-seed", type=int, default=None, help="data.split_seed [0]")


FOLDER_FLAGS = ("image_size", "channels", "labels", "val_size", "split_seed")


def _add_featnet(sub):
    p = sub.add_parser("featnet", help="train the in-repo feature network of a dataset (for FID etc.)",
                       description="Train the feature network of --data on its train split (checked on its test "
                                   "split; a folder: rotation prediction, or its classes with --labels, checked "
                                   "on its val split) into the cache ($GENLAB_CACHE/featnets). Example: genlab "
                                   "featnet train --data folder --root DIR --image-size 32")
    p.add_argument("action", choices=["train"])
    p.add_argument("--data", default="digits", help="digits | mnist | fashion-mnist | cifar10 | folder [digits]")
    p.add_argument("--root", default=None, help="data directory (mnist-style datasets, cifar10; folder: the images)")
    p.add_argument("--seed", type=int, default=0)
    _folder_flags(p)


def _add_compare(sub):
    p = sub.add_parser("compare", help="train several methods under one budget and write a comparison report",
                       description="Train every method of a comparison spec (one after another, same budget), "
                                   "choose checkpoints on the validation subset, evaluate all with one harness and "
                                   "write OUT/index.html and OUT/README.md. Finished runs and evaluations are "
                                   "reused, so an interrupted comparison continues.")
    p.add_argument("--config", "-c", default="compare_digits",
                   help="shipped comparison spec or YAML path [compare_digits]")
    p.add_argument("--out", default="runs/compare", help="report directory [runs/compare]")
    p.add_argument("--quick", action="store_true",
                   help="a few training steps per method and small evaluations: checks the whole pipeline in "
                        "about a minute (numbers meaningless)")
    p.add_argument("--only", nargs="+", default=None, help="only these methods of the spec")
    p.add_argument("--fresh", action="store_true", help="delete OUT first instead of reusing what it holds")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genlab", description="Train, sample, evaluate and compare autoregressive and "
                                                           "diffusion image generators.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sample(sub)
    _add_demo(sub)
    _add_data(sub)
    _add_eval(sub)
    _add_featnet(sub)
    _add_compare(sub)
    _add_inpaint(sub)
    sub.add_parser("configs", help="list the shipped config recipes")
    s = sub.add_parser("serve", help="a local web app: runs, training curves, reports and live generation",
                       description="Serve the runs directory as a web app (read-only) at http://HOST:PORT/.")
    s.add_argument("--runs", default=None, help="runs directory [runs, or $GENLAB_RUNS]")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on [127.0.0.1: this machine only; another address warns]")
    s.add_argument("--port", type=int, default=8000, help="port [8000]")
    return p


def _folder_data(args, data: str):
    """The image folder the flags describe (--data folder), or None for a named dataset (which takes no folder
    flags)."""
    given = [f"--{k.replace('_', '-')}" for k in FOLDER_FLAGS if getattr(args, k) not in (None, False)]
    if data != "folder":
        if given:
            raise ValueError(f"{', '.join(given)} describe an image folder; they go with --data folder, not "
                             f"--data {data}")
        return None
    from .eval.folder_featnet import FolderData

    if args.root is None or args.image_size is None:
        raise ValueError("--data folder needs --root DIR (the image folder) and --image-size S (the size the model "
                         "was trained at, its data.image_size)")
    return FolderData(root=args.root, image_size=args.image_size, channels=3 if args.channels is None else
                      args.channels, labels=args.labels, split_seed=args.split_seed or 0, val_size=args.val_size)


def _folder_run(run, args) -> None:
    """Check (and with --root relocate) the image folder of a folder run before it is evaluated."""
    from pathlib import Path

    given = [f"--{k.replace('_', '-')}" for k in FOLDER_FLAGS if getattr(args, k) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)}: with --ckpt the data settings come from the run's config (data.*); "
                         "only --root may say where a folder run's images are now")
    d = run.config.data
    if d.name != "folder":
        if args.root:
            raise ValueError(f"--root with --ckpt points to a folder run's images; this run was trained on {d.name}")
        return
    d.root = args.root or d.root
    if not Path(str(d.root)).expanduser().is_dir():
        raise FileNotFoundError(f"the run was trained on the image folder {d.root}, which is not a directory "
                                "here; give its place with --root DIR")


def _eval(args) -> None:
    import json

    from .eval.evaluate import evaluate_samples, format_report, load_samples
    from .runs import evaluate_checkpoint

    if args.bpd and args.samples:
        raise ValueError("--bpd needs a model (--ckpt RUN): samples alone have no likelihood")
    if (args.ckpt is None) == (args.samples is None):
        raise ValueError("give either --ckpt RUN (to sample and evaluate) or --samples FILE_OR_DIR --data NAME")
    if args.ckpt:
        from .config import check_options

        from .runs import load_data, load_run

        check_options(t_samples=args.t_samples, draws=args.draws)
        run = load_run(args.ckpt, which=args.which, use_ema=not args.raw, device=args.device)
        _folder_run(run, args)
        res = evaluate_checkpoint(args.ckpt, n=args.n, seeds=args.seeds, use_ema=not args.raw,
                                  batch_size=args.batch_size, pairs_png=args.pairs, run=run, **options_given(args))
        if args.bpd:
            from .eval.likelihood import bits_per_dim

            split = "val" if run.config.data.name == "folder" else "test"     # folders have no test split
            ds = load_data(run.config, split)
            if not len(ds):
                raise ValueError(f"the {split} split of {run.config.data.root} is empty (fewer than 10 images, or "
                                 "data.val_size=0): bits/dim needs held-out images")
            b = bits_per_dim(run.method, run.model, ds, batch_size=min(args.batch_size, 256),
                             draws=args.draws if args.t_samples is None else args.t_samples)
            res.update({f"{split}_{k}": v for k, v in b.items()})
        title = (f"{res['checkpoint']} (step {res['step']}, {res['weights']} weights): {res['sampler']}, "
                 f"{res['nfe']} evaluations, {res['n']} samples x {res['seeds']} seed(s)")
    else:
        name = args.data or "digits"
        data = _folder_data(args, name) or name
        x = load_samples(args.samples, data, args.root)
        res = evaluate_samples(x, data, root=args.root, pairs_png=args.pairs)
        res.update({"samples": args.samples, "data": name, **({"root": args.root} if args.root else {})})
        title = f"{args.samples} ({len(x)} samples of {data})"
    print(format_report(res, title))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=float)
        print(f"wrote {args.json}")


def _is_users(e: BaseException) -> bool:
    """Whether an exception carries a message genlab meant for the user, shown as one line: genlab's own error
    types, faults of the environment (OS, memory, torch's out-of-memory), unreadable safetensors or YAML files,
    genlab's "pip install" hints, and ValueErrors raised by genlab's own code. Anything else (a ValueError raised
    deep inside a library that genlab did not turn into its own message, a failed import of a module, any other
    exception) is a path genlab did not anticipate, a bug: it keeps its traceback."""
    import os

    import yaml
    from safetensors import SafetensorError

    if type(e).__module__.split(".")[0] == "genlab" or type(e).__name__ == "OutOfMemoryError":
        return True
    if isinstance(e, (OSError, MemoryError, SafetensorError, yaml.YAMLError)):
        return True
    if isinstance(e, ImportError):
        return e.name is None
    if not isinstance(e, ValueError):
        return False
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is None or os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(
        os.path.dirname(os.path.abspath(__file__)) + os.sep)


def _one_line(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        msg = f"{e.filename}: {e.strerror}"
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        msg = f"out of memory ({msg.splitlines()[0][:150]}); use a smaller --batch-size or --n, or a smaller model"
    return msg


def main(argv=None) -> int:
    """Run one command; returns the exit status: 0 done, 2 a user's or environment error (one line on stderr),
    130 / 143 a training interrupted by SIGINT / SIGTERM after saving. ``GENLAB_DEBUG=1`` shows tracebacks."""
    import os

    parser = build_parser()
    # overrides may come anywhere after `train` (e.g. `genlab train --name x train.lr=1e-3 --resume`)
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if args.command != "train" or e.startswith("-") or "=" not in e]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if args.command == "train":
        args.overrides = list(args.overrides) + extra
    debug = os.environ.get("GENLAB_DEBUG", "") not in ("", "0")
    try:
        return _run(args)
    except KeyboardInterrupt as e:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 128 + (getattr(e, "signal", None) or 2)      # 130 after SIGINT, 143 after SIGTERM
    except Exception as e:
        if debug or not _is_users(e):
            raise
        print(f"genlab {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from . import api

    if args.command == "train":
        overrides = list(args.overrides) + ([f"train.device={args.device}"] if args.device else [])
        res = api.train(args.config, overrides, name=args.name, resume=args.resume, force=args.force,
                        dry_run=args.dry_run, runs_root=args.runs_dir, progress=not args.no_progress)
        if res is not None and res.already_done:
            print(f"nothing to do: {res.run_dir} is already finished at step {res.state.step} "
                  f"({res.checkpoint})")
        elif res is not None and res.checkpoint is not None:
            tail = " (interrupted; continue with --resume)" if res.interrupted else ""
            print(f"trained {res.state.step} steps in {res.state.time_used:.1f}s; checkpoint: "
                  f"{res.checkpoint}{tail}")
        if res is not None and res.interrupted:
            return 128 + (res.signal or 2)          # 130 after SIGINT, 143 after SIGTERM
    elif args.command == "sample":
        out = args.out or ("process.png" if args.process else "samples.png")
        opts = options_given(args)
        _, nfe, path = api.sample(args.ckpt, n=args.n, seed=args.seed, batch_size=args.batch_size, out=out,
                                  process=args.process, labels=args.labels, which=args.which,
                                  use_ema=not args.raw, device=args.device, classifier=args.classifier,
                                  prompt=args.prompt, upsampler=args.upsampler, lowres_t=opts.pop("lowres_t", None),
                                  nrow=args.nrow, clip=args.clip, **opts)
        print(f"wrote {path} ({nfe} network evaluations per sample)")
    elif args.command == "serve":
        import os

        from .serve import serve

        if not 1 <= args.port <= 65535:
            raise ValueError(f"--port {args.port}: a port is 1..65535")
        serve(args.runs or os.environ.get("GENLAB_RUNS", "runs"), host=args.host, port=args.port)
    elif args.command == "demo":
        api.demo(name=args.name, time_budget=args.time_budget, runs_root=args.runs_dir, force=args.force)
    elif args.command == "data":
        from .data import download

        path = download(args.name, args.root, base_url=args.mirror, force=args.force)
        print(f"{args.name}: all files verified in {path}")
    elif args.command == "eval":
        _eval(args)
    elif args.command == "featnet":
        from .eval.features import default_cache_dir, train_featnet

        from .config import check_options

        check_options(seed=args.seed)
        folder = _folder_data(args, args.data)
        if folder is not None:
            from .eval.folder_featnet import train_folder_featnet

            fx = train_folder_featnet(folder, seed=args.seed)
            print(f"saved in {fx.info['dir']}")
        else:
            train_featnet(args.data, root=args.root, seed=args.seed)
            print(f"saved under {default_cache_dir()}")
    elif args.command == "compare":
        from .report.compare import run as compare

        out = compare(args.config, args.out, quick=args.quick, fresh=args.fresh, only=args.only,
                      progress=not args.no_progress)
        print(f"report: {out / 'index.html'} and {out / 'README.md'}")
    elif args.command == "inpaint":
        _, nfe, path = api.inpaint(args.ckpt, args.image, args.mask, n=args.n, out=args.out, seed=args.seed,
                                   device=args.device, labels=args.labels, prompt=args.prompt,
                                   **options_given(args))
        print(f"wrote {path} ({nfe} network evaluations per sample)")
    elif args.command == "configs":
        from .config import CONFIG_DIR

        for f in sorted(CONFIG_DIR.glob("*.yaml")):
            first = f.read_text().splitlines()[0].lstrip("# ")
            print(f"{f.stem:20s} {first}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
