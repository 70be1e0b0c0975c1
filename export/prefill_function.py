"""The body of ``nha.NativeHybridAttention``: NHA over whole sequences in standard ONNX ops.

It is the chunked form of NHA_SPEC.md. The slot inputs k, v, g, s are shifted right by W (token
t - W enters the slots at step t), T is padded to whole chunks of CHUNK tokens, and a Loop over
the chunks carries the slot memories: per chunk one softmax over the M slot logits and the
chunk's window keys, then the memories at the chunk's end. Only pairwise decays exp(G_t - G_tau)
with tau <= t are ever exponentiated (masked to -inf above the diagonal first), so strong gates
cannot overflow. Every size is read from the inputs at run time: one body serves any B and T.
"""

import numpy as np
import onnx
from onnx import helper

from .nha_math import rotary_tables, rotate, write_strength
from .onnx_builder import BOOL, FLOAT, INT64, NodeWriter
from .schema import ATTRIBUTE_TYPES, PREFILL_INPUTS, PREFILL_OP, PREFILL_OUTPUTS, make_function

CHUNK = 64
NEG_INF = np.float32(-np.inf)


def prefill_function(opset: int) -> onnx.FunctionProto:
    w = NodeWriter()
    q, k, v, g = PREFILL_INPUTS
    window = w.attribute("window", ATTRIBUTE_TYPES["window"])
    scale = w.attribute("scale", ATTRIBUTE_TYPES["scale"])
    rope_theta = w.attribute("rope_theta", ATTRIBUTE_TYPES["rope_theta"])
    B, T, HQ, K = (w.dim(q, axis) for axis in range(4))
    H, V, M = w.dim(k, 2), w.dim(v, 3), w.dim(g, 3)
    group = w.op("Div", HQ, H)
    s = write_strength(w, g)

    # head-major: q [B, H, G, T, K] (query head h * G + j reads kv head h), the others [B, H, T, *]
    q_heads = w.op("Reshape", w.transpose(q, 0, 2, 1, 3), w.concat(B, H, group, T, K))
    k_heads, v_heads, g_heads, s_heads = (w.transpose(x, 0, 2, 1, 3) for x in (k, v, g, s))
    tables = rotary_tables(w, K, rope_theta)
    positions = w.op("Cast", w.op("Range", w.const(0), w.scalar(T), w.const(1)), to=FLOAT)
    q_rot, k_rot = rotate(w, q_heads, positions, tables), rotate(w, k_heads, positions, tables)

    # the slot memories read token t - W at step t: shift right by min(W, T), zeros in front
    shift = w.op("Min", window, T)
    slot_inputs = [w.slice(_pad_axis(w, x, 4, 2, before=shift), w.const([0]), T, 2)
                   for x in (k_heads, v_heads, g_heads, s_heads)]

    chunk = w.const([CHUNK])
    n_chunks = w.op("Div", w.op("Add", T, w.const([CHUNK - 1])), chunk)
    padding = w.op("Sub", w.op("Mul", n_chunks, chunk), T)
    q_heads, q_rot = (_pad_axis(w, x, 5, 3, after=padding) for x in (q_heads, q_rot))
    k_rot, v_heads, *slot_inputs = (_pad_axis(w, x, 4, 2, after=padding)
                                    for x in (k_rot, v_heads, *slot_inputs))

    zero = helper.make_tensor("zero", FLOAT, [1], [0.0])
    hk0 = w.op("ConstantOfShape", w.concat(B, H, K, M), value=zero)
    hv0 = w.op("ConstantOfShape", w.concat(B, H, M, V), value=zero)
    body = _chunk_step(w.subgraph_writer(), q_heads, q_rot, k_rot, v_heads, slot_inputs,
                       window, scale, M)
    _, _, chunks = w.op("Loop", w.scalar(n_chunks), "", hk0, hv0, outputs=3, body=body)

    # [n_chunks, B, H, G, C, V] -> [B, n_chunks * C, HQ, V] -> the first T tokens
    o = w.op("Reshape", w.transpose(chunks, 1, 0, 4, 2, 3, 5), w.concat(B, w.const([-1]), HQ, V))
    w.op_into("Slice", [o, w.const([0]), T, w.const([1])], PREFILL_OUTPUTS[0])
    return make_function(PREFILL_OP, PREFILL_INPUTS, PREFILL_OUTPUTS, w.nodes, opset)


def _pad_axis(w: NodeWriter, x: str, rank: int, axis: int, *, before=None, after=None) -> str:
    """Zero-pad one axis of x; ``before`` and ``after`` are int64 tensors of shape [1]."""
    pads = [w.const([0])] * (2 * rank)
    pads[axis] = before or pads[axis]
    pads[rank + axis] = after or pads[rank + axis]
    return w.op("Pad", x, w.concat(*pads))


def _chunk_step(b: NodeWriter, q_heads, q_rot, k_rot, v_heads, slot_inputs, window, scale,
                M) -> onnx.GraphProto:
    """The Loop body: chunk ``i`` with the slot memories (hk [B, H, K, M], hv [B, H, M, V]) at its
    start; returns them at its end and the chunk's output [B, H, G, C, V]."""
    i, cond, hk, hv = b.fresh("chunk_index"), b.fresh("cond"), b.fresh("hk"), b.fresh("hv")
    start = b.op("Mul", b.unsqueeze(i, 0), b.const([CHUNK]))
    end = b.op("Add", start, b.const([CHUNK]))
    q_c, q_rot_c = (b.slice(x, start, end, 3) for x in (q_heads, q_rot))  # [B, H, G, C, K]
    k_c, v_c, g_c, s_c = (b.slice(x, start, end, 2) for x in slot_inputs)  # [B, H, C, *]

    # G_t: cumulative log decay from the chunk start, per slot; D[t, tau] = s_tau exp(G_t - G_tau)
    cum = b.op("CumSum", g_c, b.const(2))
    decay_from_start = b.unsqueeze(b.op("Exp", cum), 2)  # [B, H, 1, C, M]
    pairwise = b.op("Sub", b.unsqueeze(cum, 3), b.unsqueeze(cum, 2))  # [B, H, C, C, M]
    causal = b.const(np.tril(np.ones((CHUNK, CHUNK), bool))[:, :, None], bool)
    D = b.op("Mul", b.op("Exp", b.op("Where", causal, pairwise, b.const(NEG_INF, np.float32))),
             b.unsqueeze(s_c, 2))

    # slot logits: the memory at the chunk start plus the chunk's own earlier slot inputs
    from_memory = b.op("Mul", b.op("MatMul", q_c, b.unsqueeze(hk, 2)), decay_from_start)
    qk = b.op("MatMul", q_c, b.unsqueeze(b.transpose(k_c, 0, 1, 3, 2), 2))  # [B, H, G, C, C]
    from_chunk = b.transpose(b.op("MatMul", b.transpose(qk, 0, 1, 3, 2, 4), D), 0, 1, 3, 2, 4)
    slot_logits = b.op("Mul", b.op("Add", from_memory, from_chunk), scale)

    # window logits over keys lo..end-1, where token i is in t's window when t - W < i <= t
    lo = b.op("Max", b.op("Sub", b.op("Add", start, b.const([1])), window), b.const([0]))
    window_k, window_v = (b.slice(x, lo, end, 2) for x in (k_rot, v_heads))
    window_logits = b.op("Mul", b.op("MatMul", q_rot_c,
                                     b.unsqueeze(b.transpose(window_k, 0, 1, 3, 2), 2)), scale)
    t_pos = b.unsqueeze(b.op("Range", b.scalar(start), b.scalar(end), b.const(1)), 1)
    i_pos = b.unsqueeze(b.op("Range", b.scalar(lo), b.scalar(end), b.const(1)), 0)
    in_window = b.op("And", b.op("LessOrEqual", i_pos, t_pos),
                     b.op("Greater", i_pos, b.op("Sub", t_pos, window)))
    window_logits = b.op("Where", in_window, window_logits, b.const(NEG_INF, np.float32))

    p = b.op("Softmax", b.concat(slot_logits, window_logits, axis=4), axis=4)
    p_slot = b.slice(p, b.const([0]), M, 4)
    p_window = b.slice(p, M, b.const([np.iinfo(np.int64).max]), 4)
    o_window = b.op("MatMul", p_window, b.unsqueeze(window_v, 2))
    o_memory = b.op("MatMul", b.op("Mul", p_slot, decay_from_start), b.unsqueeze(hv, 2))
    chunk_weights = b.transpose(b.op("MatMul", b.transpose(p_slot, 0, 1, 3, 2, 4),
                                     b.transpose(D, 0, 1, 2, 4, 3)), 0, 1, 3, 2, 4)
    o_chunk = b.op("MatMul", chunk_weights, b.unsqueeze(v_c, 2))
    o = b.op("Add", b.op("Add", o_window, o_memory), o_chunk)

    # the memories at the chunk's end (padding tokens have k = v = s = g = 0 and change nothing)
    last = b.slice(cum, b.const([CHUNK - 1]), b.const([CHUNK]), 2)  # [B, H, 1, M]
    kept = b.op("Mul", s_c, b.op("Exp", b.op("Sub", last, cum)))  # [B, H, C, M]
    decay = b.op("Exp", last)
    hk_out = b.op("Add", b.op("Mul", hk, decay), b.op("MatMul", b.transpose(k_c, 0, 1, 3, 2), kept))
    hv_out = b.op("Add", b.op("Mul", hv, b.transpose(decay, 0, 1, 3, 2)),
                  b.op("MatMul", b.transpose(kept, 0, 1, 3, 2), v_c))
    cond_out = b.op("Identity", cond)

    def value(name, elem_type, shape=None):
        return helper.make_tensor_value_info(name, elem_type, shape)
    return helper.make_graph(
        b.nodes, "nha_chunk_step",
        [value(i, INT64, []), value(cond, BOOL, []), value(hk, FLOAT), value(hv, FLOAT)],
        [value(cond_out, BOOL, []), value(hk_out, FLOAT), value(hv_out, FLOAT), value(o, FLOAT)])
