"""The body of ``nha.NativeHybridAttentionDecode``: one token per sequence against the cache.

The cache is that of :class:`nha_tvm.NHACache`: slot memories hk [B, H, K, M], hv [B, H, M, V]
and a ring of R >= max(W, 1) entries (ring_k [B, R, H, K], ring_v [B, R, H, V], ring_g and
ring_s [B, R, H, M]) where token t lives at entry t % W. At step t (position [B], int32) the
token t - W leaves its entry and enters the slots (for W = 0 token t itself), token t takes the
freed entry, then one softmax over the M slot logits and the window entries. Keys are kept
without RoPE in the ring and rotated at their own positions when read, as the kernel does.
"""

import numpy as np
import onnx

from .nha_math import rotary_tables, rotate, write_strength
from .onnx_builder import FLOAT, INT64, NodeWriter
from .schema import ATTRIBUTE_TYPES, DECODE_INPUTS, DECODE_OP, DECODE_OUTPUTS, make_function

NEG_INF = np.float32(-np.inf)


def decode_function(opset: int) -> onnx.FunctionProto:
    w = NodeWriter()
    q, k, v, g, hk, hv, ring_k, ring_v, ring_g, ring_s, position = DECODE_INPUTS
    o_out, hk_out, hv_out, *ring_outs = DECODE_OUTPUTS
    window = w.attribute("window", ATTRIBUTE_TYPES["window"])
    scale = w.attribute("scale", ATTRIBUTE_TYPES["scale"])
    rope_theta = w.attribute("rope_theta", ATTRIBUTE_TYPES["rope_theta"])
    B, HQ, K = (w.dim(q, axis) for axis in range(3))
    H = w.dim(k, 1)
    s = write_strength(w, g)

    t = w.op("Cast", position, to=INT64)  # [B]
    period = w.op("Max", window, w.const(1))  # the ring index is t mod max(W, 1)
    entries = w.op("Range", w.const(0), w.scalar(w.dim(ring_k, 1)), w.const(1))  # [R]
    entry_of_t = w.op("Mod", t, period)
    at_entry = w.op("Equal", w.unsqueeze(entries, 0), w.unsqueeze(entry_of_t, 1))  # [B, R]

    # the token that leaves the window (its entry is the one token t takes)
    def leaving(ring: str, current: str) -> str:
        index = w.op("Expand", w.op("Reshape", entry_of_t, w.const([-1, 1, 1, 1])),
                     w.op("Shape", w.unsqueeze(current, 1)))
        stored = w.op("Squeeze", w.op("GatherElements", ring, index, axis=1), w.const([1]))
        return w.op("Where", w.op("Equal", window, w.const(0)), current, stored)
    k_old, v_old, g_old, s_old = (leaving(r, x) for r, x in zip((ring_k, ring_v, ring_g, ring_s),
                                                                 (k, v, g, s)))
    decay = w.op("Exp", g_old)  # [B, H, M]
    hk_next = w.op("Add", w.op("Mul", hk, w.unsqueeze(decay, 2)),
                   w.op("Mul", w.unsqueeze(k_old, 3), w.unsqueeze(s_old, 2)))
    hv_next = w.op("Add", w.op("Mul", hv, w.unsqueeze(decay, 3)),
                   w.op("Mul", w.unsqueeze(s_old, 3), w.unsqueeze(v_old, 2)))
    enters = w.op("Reshape", w.op("GreaterOrEqual", t, window), w.const([-1, 1, 1, 1]))
    hk_new = w.op_into("Where", [enters, hk_next, hk], hk_out)
    hv_new = w.op_into("Where", [enters, hv_next, hv], hv_out)

    # token t takes its entry (with W = 0 there is no window and the ring stays as it is)
    writes = w.unsqueeze(w.op("And", at_entry, w.op("Greater", window, w.const(0))), 2, 3)
    ring_k_new, ring_v_new, _, _ = (
        w.op_into("Where", [writes, w.unsqueeze(x, 1), ring], name)
        for x, ring, name in zip((k, v, g, s), (ring_k, ring_v, ring_g, ring_s), ring_outs))

    # entry r holds token t - ((t - r) mod W), in the window when r < W and that token exists
    t_col = w.unsqueeze(t, 1)
    token_at = w.op("Sub", t_col, w.op("Mod", w.op("Sub", t_col, w.unsqueeze(entries, 0)), period))
    in_window = w.op("And", w.unsqueeze(w.op("Less", entries, window), 0),
                     w.op("GreaterOrEqual", token_at, w.const(0)))  # [B, R]

    tables = rotary_tables(w, K, rope_theta)
    q_heads = w.op("Reshape", q, w.concat(B, H, w.const([-1]), K))  # [B, H, G, K]
    q_rot = rotate(w, q_heads, w.op("Reshape", w.op("Cast", t, to=FLOAT), w.const([-1, 1, 1])), tables)
    k_rot = rotate(w, ring_k_new, w.unsqueeze(w.op("Cast", token_at, to=FLOAT), 2), tables)

    slot_logits = w.op("Mul", w.op("MatMul", q_heads, hk_new), scale)  # [B, H, G, M]
    window_logits = w.op("Mul", w.op("MatMul", q_rot, w.transpose(k_rot, 0, 2, 3, 1)), scale)
    window_logits = w.op("Where", w.unsqueeze(in_window, 1, 2), window_logits,
                         w.const(NEG_INF, np.float32))  # [B, H, G, R]
    p = w.op("Softmax", w.concat(slot_logits, window_logits, axis=3), axis=3)
    M = w.dim(hk, 3)
    p_slot = w.slice(p, w.const([0]), M, 3)
    p_window = w.slice(p, M, w.const([np.iinfo(np.int64).max]), 3)
    o = w.op("Add", w.op("MatMul", p_slot, hv_new),
             w.op("MatMul", p_window, w.transpose(ring_v_new, 0, 2, 1, 3)))  # [B, H, G, V]
    w.op_into("Reshape", [o, w.concat(B, HQ, w.const([-1]))], o_out)
    return make_function(DECODE_OP, DECODE_INPUTS, DECODE_OUTPUTS, w.nodes, opset)
