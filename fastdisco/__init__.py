"""fastdisco: distill big frozen vision teachers into lightweight students (DisCo, SSLD)."""
from fastdisco import _compat  # noqa: F401  (must run before anything imports torchvision)

__version__ = "0.1.0"
