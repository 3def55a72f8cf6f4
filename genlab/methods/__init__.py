"""Methods: one file per family, each a :class:`~genlab.methods.base.Method` registered in
:mod:`genlab.registry` (see :mod:`genlab.methods.base` for the protocol). Importing this package registers them;
a new family is one file plus one import line here.
"""
from .base import Method, get_method, register  # noqa: F401
from .diffusion import DiffusionMethod  # noqa: F401
from .autoregressive import AutoregressiveMethod  # noqa: F401
from .any_order import AnyOrderMethod  # noqa: F401
from .oneshot import OneShotMethod  # noqa: F401
from .classifier import ClassifierMethod  # noqa: F401
from .flow_matching import FlowMatchingMethod  # noqa: F401
from .masked_diffusion import MaskedDiffusionMethod  # noqa: F401
from .gan import GANMethod  # noqa: F401
from .vae import VAEMethod  # noqa: F401
from .normalizing_flow import NormalizingFlowMethod  # noqa: F401
from .clip import ClipMethod  # noqa: F401
from ..registry import METHODS  # noqa: F401  (name -> class, filled by the imports above)
