"""ONNX export of models that use NHA (installed as ``nha_tvm.export``).

``export_onnx`` writes a prefill graph or a decode-step graph, with standard ops only or with
one ``nha.NativeHybridAttention`` node per layer; ``nha-export`` (``cli.py``) exports the example
language model of ``example_lm.py`` from a JSON config. The graphs and the nha domain's schema:
NHA_DOMAIN.md in this folder.
"""

from .exporter import MODES, PHASES, export_onnx

__all__ = ["MODES", "PHASES", "export_onnx"]
