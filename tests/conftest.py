import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Feature networks are built into a cache of the test session, never the user's."""
    import tempfile

    os.environ.setdefault("GENLAB_CACHE", tempfile.mkdtemp(prefix="genlab-test-cache-"))
    # folder caches (genlab.data.cache) default to GENLAB_DATA/folder-cache: a directory of the session too
    os.environ.setdefault("GENLAB_DATA", tempfile.mkdtemp(prefix="genlab-test-data-"))

# counts of the reliability suites (issue 11), printed at the end of the test session
RELIABILITY = {}


def record(what: str, n: int = 1) -> None:
    RELIABILITY[what] = RELIABILITY.get(what, 0) + n


def pytest_terminal_summary(terminalreporter):
    for rep in terminalreporter.stats.get("skipped", []):
        reason = str(getattr(rep, "longrepr", ""))
        if "chromium-driver" in reason:
            terminalreporter.write_line("browser tests skipped: sudo apt-get install chromium chromium-driver "
                                        "(Debian packages), then make test again")
            break
    if RELIABILITY:
        terminalreporter.section("reliability suites")
        for k in ("kills survived", "damaged files tried", "fuzz examples run", "path cases", "tracebacks seen"):
            terminalreporter.write_line(f"{k}: {RELIABILITY.get(k, 0)}")
        for k, v in sorted(RELIABILITY.items()):
            if k not in ("kills survived", "damaged files tried", "fuzz examples run", "path cases",
                         "tracebacks seen"):
                terminalreporter.write_line(f"{k}: {v}")


# a model small enough that a training step takes a few milliseconds on one core
TINY = ["model.width=8", "model.channel_mults=[1,2]", "model.num_res_blocks=1", "model.attn_resolutions=[]",
        "model.num_heads=1", "diffusion.timesteps=100", "train.batch_size=32", "train.time_budget=null",
        "train.warmup_steps=5", "train.log_every=5", "sample.steps=5", "sample.n=8"]


def randomize(m, std=0.3, seed=0):
    """Weights far from their init (near-uniform attention, tiny logits), so that equalities mean something;
    returns m in eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return m.eval()


def nan_loss_after(monkeypatch, calls: int) -> None:
    """Diffusion's training loss becomes NaN from its (calls + 1)-th call on."""
    from genlab.methods.diffusion import DiffusionMethod

    real_loss = DiffusionMethod.loss
    count = {"n": 0}

    def loss(self, model, batch, rng):
        count["n"] += 1
        out = real_loss(self, model, batch, rng)
        return out * float("nan") if count["n"] > calls else out

    monkeypatch.setattr(DiffusionMethod, "loss", loss)


def random_unet(channel_mults=(1,), std=0.3, **kw):
    """A tiny 1-channel 8x8 UNet in eval mode, seeded with 0, whose zero-initialized output layer is drawn at
    random so its outputs depend on x_t, t and the condition."""
    import torch
    from genlab.nn import UNet

    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, width=8, channel_mults=channel_mults, num_res_blocks=1,
               attn_resolutions=(), num_heads=1, **kw).eval()
    with torch.no_grad():
        torch.nn.init.normal_(net.conv_out.weight, std=std)
    return net


@pytest.fixture(scope="session")
def cond_run(tmp_path_factory):
    """A tiny class-conditional diffusion run (trained with label dropout, so guidance applies); read-only."""
    import genlab.api as api

    root = tmp_path_factory.mktemp("condrun")
    api.train("digits_cfg", TINY + ["train.max_steps=2", "diffusion.cond_drop=0.2"], name="c", runs_root=root,
              progress=False)
    return root / "c"


@pytest.fixture
def tiny():
    return list(TINY)


def genlab_cmd(*args):
    """The CLI as a subprocess (same interpreter), for tests that kill or signal a run."""
    return [sys.executable, "-m", "genlab.cli", *args]


@pytest.fixture
def subprocess_env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    return env


@pytest.fixture(scope="session")
def forkserver():
    """A forkserver that has imported faultchild (and so genlab and torch) once; children fork from it, so a
    killed-and-resumed training costs no interpreter start-ups."""
    import multiprocessing
    from multiprocessing import forkserver as fs

    tests = str(ROOT / "tests")
    sys.path.insert(0, tests)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([tests, str(ROOT)] + ([old] if old else []))  # read by the server
    mp = multiprocessing.get_context("forkserver")
    mp.set_forkserver_preload(["faultchild"])
    fs.ensure_running()
    if old is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = old
    return mp


def run_child(ctx, argv: list, log: Path, fault=None, timeout: float = 120):
    """``genlab ARGV`` in a child of the forkserver ``ctx`` (with ``GENLAB_FAULT=fault``): (exit code, its log)."""
    import faultchild

    p = ctx.Process(target=faultchild.run, args=(argv, {"GENLAB_FAULT": fault} if fault else {}, str(log)))
    p.start()
    p.join(timeout)
    if p.exitcode is None:
        p.kill()
        p.join()
        pytest.fail(f"the run hung: {argv}\n{log.read_text()}")
    return p.exitcode, log.read_text()
