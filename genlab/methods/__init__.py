"""Methods: each a small object with build_model(), loss(), sample() and log_likelihood().

- ``diffusion``: denoising diffusion (DDPM family), samplers from :mod:`genlab.diffusion.samplers`;
- ``autoregressive``: raster autoregression with a gated PixelCNN or a causal transformer;
- ``any_order``: generalized autoregression, any order and k sub-pixels per step;
- ``oneshot``: every pixel predicted independently (the blurry-average baseline).
"""
from .any_order import AnyOrderMethod
from .autoregressive import AutoregressiveMethod
from .classifier import ClassifierMethod
from .diffusion import DiffusionMethod
from .oneshot import OneShotMethod

METHODS = {"diffusion": DiffusionMethod, "autoregressive": AutoregressiveMethod, "any_order": AnyOrderMethod,
           "oneshot": OneShotMethod, "classifier": ClassifierMethod}

# sampling options each method accepts (besides n, labels, seed, batch size), for clear errors
SAMPLE_OPTIONS = {name: m.sample_options for name, m in METHODS.items()}


def get_method(cfg):
    return METHODS[cfg.method](cfg)
