"""Torch ops that stand for the NHA kernels while torch.export traces a model, and their
translation into nodes of the ``nha`` domain.

``torch.ops.nha.prefill`` packs sequences for varlen and ``torch.ops.nha.decode`` updates the
cache in place; these two are functional and shaped like the ONNX nodes, so each call becomes one
node. Their eager forms run the TVM kernels, so a traced model still computes the real numbers.
"""

import onnxscript
import torch
from onnxscript import opset18 as op
from torch import Tensor

from nha_tvm.attention import nha_attention, nha_decode
from nha_tvm.decode_cache import NHACache

from .schema import (DECODE_INPUTS, DECODE_OP, DECODE_OUTPUTS, DOMAIN, DOMAIN_VERSION,
                     PREFILL_INPUTS, PREFILL_OP, PREFILL_OUTPUTS, op_schema)


def _rope(rope_theta: float) -> float | None:
    return rope_theta if rope_theta > 0 else None  # 0 stands for "no RoPE", as in the nha domain


@torch.library.custom_op("nha_onnx::attention", mutates_args=())
def attention(q: Tensor, k: Tensor, v: Tensor, g: Tensor, window: int, scale: float,
              rope_theta: float, slots: int) -> Tensor:
    """NHA over whole sequences (s = 1 - exp(g)); ``slots`` is M, an attribute of the node."""
    return nha_attention(q, k, v, g, window=window, scale=scale, rope_theta=_rope(rope_theta))[0]


@attention.register_fake
def _(q, k, v, g, window, scale, rope_theta, slots):
    return q.new_empty(*q.shape[:3], v.shape[3])


@torch.library.custom_op("nha_onnx::decode_step", mutates_args=())
def decode_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor, hk: Tensor, hv: Tensor,
                ring_k: Tensor, ring_v: Tensor, ring_g: Tensor, ring_s: Tensor, position: Tensor,
                window: int, scale: float, rope_theta: float, slots: int
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One decode step; returns o and the updated cache tensors (the inputs stay as they are)."""
    cache = NHACache(hk.clone(), hv.clone(), ring_k.clone(), ring_v.clone(), ring_g.clone(),
                     ring_s.clone(), position.clone(), window)
    o = nha_decode(q, k, v, g, cache, scale=scale, rope_theta=_rope(rope_theta))
    return o, cache.hk, cache.hv, cache.ring_k, cache.ring_v, cache.ring_g, cache.ring_s


@decode_step.register_fake
def _(q, k, v, g, hk, hv, ring_k, ring_v, ring_g, ring_s, position, window, scale, rope_theta, slots):
    cache = (hk, hv, ring_k, ring_v, ring_g, ring_s)
    return (q.new_empty(*q.shape[:2], v.shape[2]), *(x.new_empty(x.shape) for x in cache))


_NHA_OPSET = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)
_PREFILL_NODE = onnxscript.values.Op(_NHA_OPSET, PREFILL_OP,
                                     op_schema(PREFILL_OP, PREFILL_INPUTS, PREFILL_OUTPUTS))
_DECODE_NODE = onnxscript.values.Op(_NHA_OPSET, DECODE_OP,
                                    op_schema(DECODE_OP, DECODE_INPUTS, DECODE_OUTPUTS))


def _attention_node(q, k, v, g, window: int, scale: float, rope_theta: float, slots: int):
    return _PREFILL_NODE(q, k, v, g, window=window, scale=scale, rope_theta=rope_theta, slots=slots)


def _decode_node(q, k, v, g, hk, hv, ring_k, ring_v, ring_g, ring_s, position, window: int,
                 scale: float, rope_theta: float, slots: int):
    return _DECODE_NODE(q, k, v, g, hk, hv, ring_k, ring_v, ring_g, ring_s, position,
                        window=window, scale=scale, rope_theta=rope_theta, slots=slots)


def _log_sigmoid(x):
    # torchlib writes Log(Sigmoid(x)): -inf once the sigmoid underflows (x < -103 in float32),
    # which would turn the gate cumsum into NaN; -softplus(-x) is finite everywhere
    return op.Neg(op.Softplus(op.Neg(x)))


TRANSLATIONS = {
    torch.ops.nha_onnx.attention.default: _attention_node,
    torch.ops.nha_onnx.decode_step.default: _decode_node,
    torch.ops.aten.log_sigmoid.default: _log_sigmoid,
}
