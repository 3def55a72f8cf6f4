"""genlab's one command-line entry point: ``genlab {train,sample,demo,data,configs}``.

Each subcommand calls the function of the same name in :mod:`genlab.api`; config keys are set with
``section.key=value`` overrides, so every option is also a YAML key and a Python argument.
"""
from __future__ import annotations

import argparse
import sys

from .config import ConfigError
from .diffusion.samplers import SAMPLERS


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
    p.add_argument("--sampler", choices=list(SAMPLERS), default=None, help="[the config's sample.sampler]")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps [the config's sample.steps]; Heun makes 2 * steps - 1 evaluations")
    p.add_argument("--eta", type=float, default=None, help="DDIM noise: 0 deterministic, 1 DDPM-like")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i [0]")
    p.add_argument("--batch-size", type=int, default=256, help="samples per batch [256]")
    p.add_argument("--out", default=None, help="output .png / .npy / DIR/ [samples.png; process.png with --process]")
    p.add_argument("--process", action="store_true", help="write x_t and x0_hat over the steps as a strip")
    p.add_argument("--labels", type=int, nargs="+", default=None, help="class labels (class-conditional models)")
    p.add_argument("--which", choices=["latest", "best"], default="latest", help="checkpoint of a run [latest]")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--device", default="auto")


def _add_demo(sub):
    p = sub.add_parser("demo", help="train on built-in digits for about two minutes, write pictures")
    p.add_argument("--name", default="demo")
    p.add_argument("--time-budget", default="100s", help="training time [100s]")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--force", action="store_true", help="replace an existing runs/NAME (runs/demo always is)")


def _add_data(sub):
    p = sub.add_parser("data", help="download a dataset and verify its published checksums",
                       description="Download NAME (mnist, fashion-mnist) into --root (default: $GENLAB_DATA or "
                                   "~/.cache/genlab/data/NAME). Files already present are verified, not fetched.")
    p.add_argument("name", choices=["mnist", "fashion-mnist"])
    p.add_argument("--root", default=None, help="directory for the files")
    p.add_argument("--mirror", default=None, help="base URL to download from instead of the official ones")
    p.add_argument("--force", action="store_true", help="download again even if the files verify")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genlab", description="Train, sample, evaluate and compare autoregressive and "
                                                           "diffusion image generators.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sample(sub)
    _add_demo(sub)
    _add_data(sub)
    sub.add_parser("configs", help="list the shipped config recipes")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    # overrides may come anywhere after `train` (e.g. `genlab train --name x train.lr=1e-3 --resume`)
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if args.command != "train" or e.startswith("-") or "=" not in e]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if args.command == "train":
        args.overrides = list(args.overrides) + extra
    from . import api
    from .data.download import DownloadError
    from .train.checkpoint import CheckpointError
    from .train.loop import TrainingDiverged

    try:
        if args.command == "train":
            overrides = list(args.overrides) + ([f"train.device={args.device}"] if args.device else [])
            res = api.train(args.config, overrides, name=args.name, resume=args.resume, force=args.force,
                            dry_run=args.dry_run, runs_root=args.runs_dir, progress=not args.no_progress)
            if res is not None and res.checkpoint is not None:
                tail = " (interrupted; continue with --resume)" if res.interrupted else ""
                print(f"trained {res.state.step} steps in {res.state.time_used:.1f}s; checkpoint: "
                      f"{res.checkpoint}{tail}")
        elif args.command == "sample":
            out = args.out or ("process.png" if args.process else "samples.png")
            _, nfe, path = api.sample(args.ckpt, n=args.n, sampler=args.sampler, steps=args.steps, eta=args.eta,
                                      seed=args.seed, batch_size=args.batch_size, out=out,
                                      process=args.process, labels=args.labels, which=args.which,
                                      use_ema=not args.raw, device=args.device)
            print(f"wrote {path} ({nfe} network evaluations per sample)")
        elif args.command == "demo":
            api.demo(name=args.name, time_budget=args.time_budget, runs_root=args.runs_dir, force=args.force)
        elif args.command == "data":
            from .data import download

            path = download(args.name, args.root, base_url=args.mirror, force=args.force)
            print(f"{args.name}: all files verified in {path}")
        elif args.command == "configs":
            from .config import CONFIG_DIR

            for f in sorted(CONFIG_DIR.glob("*.yaml")):
                first = f.read_text().splitlines()[0].lstrip("# ")
                print(f"{f.stem:20s} {first}")
    except (ConfigError, CheckpointError, TrainingDiverged, DownloadError, OSError, ValueError) as e:
        print(f"genlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
