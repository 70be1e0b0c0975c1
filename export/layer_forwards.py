"""The forward of every NativeHybridAttention while a model is traced for export.

Each layer keeps its own projections (``layer.project``) and output (W_o RMSNorm(SiLU(o))); only
the attention becomes one traceable op (``traced_ops``), which translates into one nha node. In
the decode phase the layer reads its cache tensors from the :class:`DecodeStep` of the traced
call and hands the updated ones back, so the model's own forward needs no cache argument.
"""

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from nha_tvm.layer import NativeHybridAttention
from nha_tvm.validation import check_scalars, check_window

from . import traced_ops  # noqa: F401  (registers torch.ops.nha_onnx.*)


def find_layers(model: nn.Module) -> dict[NativeHybridAttention, str]:
    """The model's NHA layers in registration order, each with its module name, all checked."""
    layers = {module: name for name, module in model.named_modules()
              if isinstance(module, NativeHybridAttention)}
    if not layers:
        raise ValueError(f"{type(model).__name__} contains no nha_tvm.NativeHybridAttention layer; "
                         "export it with torch.onnx.export")
    for layer, name in layers.items():
        _check_layer(layer, name or type(model).__name__)
    return layers


def _check_layer(layer: NativeHybridAttention, name: str) -> None:
    for method in ("forward", "project"):
        if getattr(type(layer), method) is not getattr(NativeHybridAttention, method):
            raise ValueError(f"layer {name!r} ({type(layer).__name__}) overrides {method}(); the export "
                             "reproduces NativeHybridAttention's own math only")
    for param_name, param in layer.named_parameters():
        if param.dtype != torch.float32:
            raise ValueError(f"layer {name!r} has {param_name} in {param.dtype}; the ONNX export is "
                             "float32 only: call model.float() first")
    check_window(layer.window)
    try:
        check_scalars(None, layer.rope_theta, layer.head_dim)
    except ValueError as error:
        raise ValueError(f"layer {name!r}: {error}") from None


def node_attributes(layer: NativeHybridAttention) -> dict:
    """window, scale, rope_theta (0 = no RoPE) and slots of the layer's nha node."""
    return {"window": layer.window, "scale": float(layer.head_dim ** -0.5),
            "rope_theta": 0.0 if layer.rope_theta is None else float(layer.rope_theta),
            "slots": layer.num_slots}


def _output(layer: NativeHybridAttention, o: torch.Tensor) -> torch.Tensor:
    """y = W_o RMSNorm(SiLU(o)) for o [B, L, HQ, V], as NativeHybridAttention.forward ends."""
    B, L = o.shape[:2]
    return layer.o_proj(layer.o_norm(F.silu(o)).reshape(B, L, -1))


def _reject_cache_arguments(name: str, cache, use_cache) -> None:
    if cache is not None or use_cache:
        raise ValueError(f"layer {name!r} is called with a cache; the exported graph handles the "
                         "cache itself (phase='decode'), so call layers as layer(x)")


def _prefill_forward(layer: NativeHybridAttention, name: str):
    attributes = node_attributes(layer)

    def forward(x, cache=None, use_cache=False):
        _reject_cache_arguments(name, cache, use_cache)
        q, k, v, g = layer.project(x)
        return _output(layer, torch.ops.nha_onnx.attention(q, k, v, g, **attributes))
    return forward


class DecodeStep:
    """The cache tensors of one traced decode step: ``begin`` gives every layer its input
    tensors, ``attend`` (from each layer's forward) swaps them for the updated ones, ``end``
    returns those in layer order."""

    def __init__(self, layers: dict[NativeHybridAttention, str]):
        self.layers = layers
        self.position = None
        self._caches: dict[NativeHybridAttention, tuple] = {}
        self._updated: set[NativeHybridAttention] = set()

    def begin(self, position: torch.Tensor, caches: list[tuple]) -> None:
        self.position = position
        self._caches = dict(zip(self.layers, caches))
        self._updated = set()

    def attend(self, layer: NativeHybridAttention, q, k, v, g) -> torch.Tensor:
        name = self.layers[layer]
        if layer in self._updated:
            raise ValueError(f"layer {name!r} runs twice in one forward; its decode cache would be "
                             "ambiguous")
        o, *cache = torch.ops.nha_onnx.decode_step(q, k, v, g, *self._caches[layer], self.position,
                                                    **node_attributes(layer))
        self._caches[layer] = tuple(cache)
        self._updated.add(layer)
        return o

    def end(self) -> list[tuple]:
        for layer, name in self.layers.items():
            if layer not in self._updated:
                raise ValueError(f"layer {name!r} does not run in the model's forward; a decode step "
                                 "needs every NHA layer exactly once")
        return [self._caches[layer] for layer in self.layers]


def _decode_forward(layer: NativeHybridAttention, name: str, step: DecodeStep):
    def forward(x, cache=None, use_cache=False):
        _reject_cache_arguments(name, cache, use_cache)
        if x.shape[1] != 1:
            raise ValueError(f"layer {name!r} gets {x.shape[1]} tokens in a decode step; "
                             "it takes one token per sequence")
        q, k, v, g = layer.project(x)
        return _output(layer, step.attend(layer, q[:, 0], k[:, 0], v[:, 0], g[:, 0])[:, None])
    return forward


@contextmanager
def traced_forwards(layers: dict[NativeHybridAttention, str], step: DecodeStep | None = None):
    """Within the block every layer runs its export forward: the prefill one, or with ``step``
    the decode one. Each layer gets its own forward back on exit."""
    for layer, name in layers.items():
        layer.forward = (_prefill_forward(layer, name) if step is None
                         else _decode_forward(layer, name, step))
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
