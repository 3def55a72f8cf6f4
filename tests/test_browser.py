"""genlab serve in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven by Selenium
through the binaries' own paths: no browser download) opens the runs list, a run page, a compare report and the
live page, presses generate for a diffusion and a raster AR model side by side, waits for both final images, and
fails on any console error. The time from pressing generate to the first frame is measured in the page and
printed (reported, not asserted).

Without Chromium the test is skipped with the packages to install; with GENLAB_REQUIRE_BROWSER=1 (set by
.ci/run) a missing browser is a failure. The README's screenshots of these pages come from
trained runs instead: docs/screenshots.py (``make docs``).
"""
import json
import os

import pytest

from browser_kit import chromium, console_errors, missing, served, wait
from serve_runs import make_runs

REQUIRED = bool(os.environ.get("GENLAB_REQUIRE_BROWSER"))
# Only where Chromium is missing and not required (a laptop without Debian's packages); CI requires it.
pytestmark = pytest.mark.skipif(missing() is not None and not REQUIRED, reason=str(missing()))
ROOTS = {}


def server_root(url):
    return ROOTS[url]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if missing():
        pytest.fail(missing())
    root = make_runs(tmp_path_factory.mktemp("browser"))
    with served(root) as url:
        ROOTS[url] = root
        yield url


@pytest.fixture(scope="module")
def browser(server):
    d = chromium()
    yield d
    d.quit()


def no_console_errors(d):
    bad = console_errors(d)
    assert not bad, bad


def test_runs_list_run_page_report_and_live_generation(server, browser, capsys):
    d = browser
    d.get(server + "/")
    wait(d, "return document.querySelectorAll('.run-row').length >= 7", what="the runs table")
    assert wait(d, "return document.querySelector('.badge.running') !== null", what="a running badge")
    assert "config.yaml cannot be read" in d.find_element("id", "runs-errors").text
    no_console_errors(d)

    d.get(server + "/run/dif")
    wait(d, "return document.querySelector('#loss-plot polyline.series-loss') !== null", what="the loss curve")
    wait(d, "const i = document.getElementById('grid-img'); return i.complete && i.naturalWidth > 0",
         what="a sample grid")
    assert "method: diffusion" in d.find_element("id", "config").text
    d.execute_script("const s = document.getElementById('grid-slider'); s.value = 0; s.oninput();")
    assert "step 3" in d.find_element("id", "grid-step").text
    no_console_errors(d)

    for name in ("pcnn", "cfg", "txt", "gan", "broken"):           # every kind of run has a page that loads
        d.get(server + "/run/" + name)
        wait(d, "return document.getElementById('run-stats').textContent.length > 0 || "
                "document.querySelector('#run-error .error') !== null", what=f"the page of {name}")
    assert "cannot be read" in d.find_element("id", "run-error").text             # broken: an error card
    no_console_errors(d)

    # a run that is still training: new records appear without a reload
    d.get(server + "/run/live")
    wait(d, "return document.querySelector('#loss-plot polyline.series-loss') !== null", what="the live run's curve")
    n0 = d.execute_script("return document.querySelector('#loss-plot polyline.series-loss').points.length")
    root = server_root(server)
    with open(root / "live" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 10, "loss": 0.3, "time_used": 5.0}) + "\n")
    wait(d, f"return document.querySelector('#loss-plot polyline.series-loss').points.length > {n0}", timeout=20,
         what="the new point of a run that is still training")
    no_console_errors(d)

    d.get(server + "/files/cmp/index.html")
    wait(d, "const i = document.querySelector('img'); return i && i.complete && i.naturalWidth > 0",
         what="the report's picture")
    no_console_errors(d)

    d.get(server + "/live?run=dif")
    wait(d, "return document.getElementById('opt-steps-0') !== null", what="the diffusion controls")
    d.execute_script("document.getElementById('opt-steps-0').value = 20;")
    d.execute_script("const s = document.getElementById('run-1'); s.value = 'pcnn'; s.onchange();")
    wait(d, "return document.getElementById('opt-temperature-1') !== null", what="the AR controls")
    d.find_element("id", "generate").click()
    wait(d, "return document.body.dataset.state === 'done'", timeout=120, what="both generations")
    frames = [int(d.execute_script(f"return document.getElementById('live-stats-{i}').dataset.frames || 0"))
              for i in (0, 1)]
    done = [d.execute_script(f"return document.getElementById('live-stats-{i}').dataset.done") for i in (0, 1)]
    first_ms = float(d.execute_script("return document.getElementById('first-frame').dataset.ms"))
    assert done == ["1", "1"], [d.find_element("id", f"live-stats-{i}").text for i in (0, 1)]
    assert frames[0] >= 10 and frames[1] >= 10, frames
    for i in (0, 1):
        wait(d, f"const i = document.getElementById('live-img-{i}'); return i.complete && i.naturalWidth > 0",
             what="the final image")
    no_console_errors(d)
    with capsys.disabled():
        print(f"\n[browser] live page: {frames[0]} frames (diffusion, DDIM-20) and {frames[1]} frames (PixelCNN, 64 "
              f"steps); first frame {first_ms:.0f} ms after pressing generate")
