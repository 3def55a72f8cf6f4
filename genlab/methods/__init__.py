"""Methods: each a small object with build_model(), loss(), sample() (and log_likelihood() where defined)."""
from .diffusion import DiffusionMethod

METHODS = {"diffusion": DiffusionMethod}


def get_method(cfg):
    return METHODS[cfg.method](cfg)
