"""The README's screenshots of ``genlab serve`` (docs/serve_runs.png, serve_run.png, serve_live.png), taken in
headless Chromium over short real trainings on the built-in digits, so that the pictures show what a user sees.

    .venv/bin/python docs/screenshots.py            # or: make docs   (about 6 minutes on 2 CPU threads)

The runs are trained into runs/docs-serve/ (reused when they already finished with the same config, so a
second call only takes the pictures). Needs Debian's chromium and chromium-driver.
"""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from browser_kit import chromium, console_errors, missing, served, wait  # noqa: E402

# name, recipe, overrides: about 5 minutes of training in all
RUNS = [
    ("digits-ddpm", "digits_ddpm", ["train.time_budget=120s", "train.sample_every=250", "train.val_every=250"]),
    ("digits-pixelcnn", "digits_pixelcnn", ["train.time_budget=90s", "train.sample_every=250"]),
    ("digits-cfg", "digits_cfg", ["train.time_budget=60s"]),
    ("digits-gan", "digits_gan", ["train.time_budget=45s"]),
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=str(REPO / "runs" / "docs-serve"), help="where the runs are trained")
    ap.add_argument("--out", default=str(REPO / "docs"), help="where the PNGs are written")
    a = ap.parse_args(argv)
    why = missing()
    if why:
        raise SystemExit(why)
    from genlab.report.compare import train_or_reuse

    root, out = Path(a.runs), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, recipe, over in RUNS:
        train_or_reuse(name, recipe, over, runs_root=root, log_prefix="[screenshots]")
    with served(root) as url:
        d = chromium("1200,820")
        try:
            d.get(url + "/")
            wait(d, f"return document.querySelectorAll('.run-row').length >= {len(RUNS)}", what="the runs table")
            d.save_screenshot(str(out / "serve_runs.png"))

            d.set_window_size(1200, 1000)
            d.get(url + "/run/digits-ddpm")
            wait(d, "return document.querySelector('#loss-plot polyline.series-loss') !== null", what="the loss curve")
            wait(d, "const i = document.getElementById('grid-img'); return i.complete && i.naturalWidth > 0",
                 what="a sample grid")
            d.save_screenshot(str(out / "serve_run.png"))

            d.set_window_size(1200, 560)
            d.get(url + "/live?run=digits-ddpm")
            wait(d, "return document.getElementById('opt-steps-0') !== null", what="the diffusion controls")
            d.execute_script("document.getElementById('opt-n-0').value = 6;")
            d.execute_script("const s = document.getElementById('run-1'); s.value = 'digits-pixelcnn'; s.onchange();")
            wait(d, "return document.getElementById('opt-temperature-1') !== null", what="the AR controls")
            d.execute_script("document.getElementById('opt-n-1').value = 6;")
            d.find_element("id", "generate").click()
            wait(d, "return document.body.dataset.state === 'done'", timeout=180, what="both generations")
            for i in (0, 1):
                wait(d, f"const i = document.getElementById('live-img-{i}'); return i.complete && i.naturalWidth > 0",
                     what="the final image")
            d.save_screenshot(str(out / "serve_live.png"))
            bad = console_errors(d)
            if bad:
                raise SystemExit(f"console errors: {bad}")
        finally:
            d.quit()
    print(f"wrote {', '.join(str(out / f'serve_{p}.png') for p in ('runs', 'run', 'live'))}")


if __name__ == "__main__":
    main()
