"""nha-tvm: Native Hybrid Attention as Apache TVM kernels, used from PyTorch."""

__version__ = "0.1.0"

from .attention import nha_attention, nha_decode  # noqa: E402
from .decode_cache import NHACache  # noqa: E402
from .layer import NativeHybridAttention  # noqa: E402
from .op_package import load_ops  # noqa: E402
from . import reference  # noqa: E402


def export_onnx(model, example_inputs, path, *, mode="standard", phase="prefill", opset=None):
    """Export a model with NativeHybridAttention layers to ONNX: see
    :func:`nha_tvm.export.export_onnx` (imported on first use: it needs onnx and onnxscript)."""
    from .export import export_onnx as export
    return export(model, example_inputs, path, mode=mode, phase=phase, opset=opset)


__all__ = ["NHACache", "NativeHybridAttention", "export_onnx", "load_ops", "nha_attention",
           "nha_decode", "reference", "__version__"]
