"""genlab: train, sample, evaluate and compare autoregressive and diffusion image generators side by side."""
__version__ = "0.1.0"

from .api import demo, load_run, sample, train  # noqa: E402,F401
from .config import Config, load_config  # noqa: E402,F401
