"""Headless Chromium over a genlab serve in a thread: shared by the browser test and docs/screenshots.py.

Debian's chromium and chromium-driver are driven by Selenium through the binaries' own paths, so no browser build
is ever downloaded (which fails offline)."""
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = [p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()]
DRIVER = shutil.which("chromedriver") or next((p for p in ("/usr/bin/chromedriver",) if Path(p).exists()), None)
MISSING = "the browser tests need Debian's chromium and chromium-driver: sudo apt-get install chromium chromium-driver"


def missing() -> str | None:
    """Why the browser cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the browser tests need selenium (pip install -e '.[dev]')"
    return None if CHROMIUM and DRIVER else MISSING


@contextmanager
def served(root: Path):
    """``genlab serve`` over ``root`` on a free local port, in a thread; yields its base URL."""
    import uvicorn

    from genlab.serve import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(root), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        t.join(10)


def chromium(window: str = "1200,900"):
    """A headless Chromium WebDriver that keeps the page's console log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM[0]
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={window}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    d.set_page_load_timeout(30)
    return d


def wait(d, cond, timeout=60, what="condition"):
    """Poll the page's JavaScript ``cond`` until it is truthy; its value, or an AssertionError naming ``what``."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            v = d.execute_script(cond)
            if v:
                return v
        except Exception:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {cond}")


def console_errors(d) -> list:
    return [e for e in d.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
