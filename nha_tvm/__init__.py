"""nha-tvm: Native Hybrid Attention as Apache TVM kernels, used from PyTorch."""

__version__ = "0.1.0"

from .attention import nha_attention, nha_decode  # noqa: E402
from .decode_cache import NHACache  # noqa: E402
from .layer import NativeHybridAttention  # noqa: E402
from . import reference  # noqa: E402

__all__ = ["NHACache", "NativeHybridAttention", "nha_attention", "nha_decode", "reference", "__version__"]
