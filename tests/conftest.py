import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Feature networks are built into a cache of the test session, never the user's."""
    import tempfile

    os.environ.setdefault("GENLAB_CACHE", tempfile.mkdtemp(prefix="genlab-test-cache-"))

# a model small enough that a training step takes a few milliseconds on one core
TINY = ["model.width=8", "model.channel_mults=[1,2]", "model.num_res_blocks=1", "model.attn_resolutions=[]",
        "model.num_heads=1", "diffusion.timesteps=100", "train.batch_size=32", "train.time_budget=null",
        "train.warmup_steps=5", "train.log_every=5", "sample.steps=5", "sample.n=8"]


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
