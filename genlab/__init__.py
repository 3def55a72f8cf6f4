"""genlab: train, sample, evaluate and compare autoregressive and diffusion image generators side by side."""
from .version import __version__  # noqa: F401

from . import methods  # noqa: E402,F401  (registers every method in genlab.registry)
from .api import demo, load_run, sample, train  # noqa: E402,F401
from .config import Config, load_config  # noqa: E402,F401
