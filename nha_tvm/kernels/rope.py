"""Rotary embedding (rotate-half form) for the window path, computed in float32.

For position p and pair index i < K/2: angle = p * theta^(-2i/K),
x'[i] = x[i] cos - x[i + K/2] sin and x'[i + K/2] = x[i + K/2] cos + x[i] sin.
"""

from tvm.script import tirx as T


def rope(*, heads: int, K: int, io_dtype: str):
    """Build RoPE over x [total, heads, K] at positions pos [total] (int32) into out."""
    half = K // 2

    @T.prim_func(s_tir=True)
    def func(x_h: T.handle, pos_h: T.handle, out_h: T.handle, theta: T.float32):
        T.func_attr({"global_symbol": "rope", "tirx.noalias": True, "nha.kernel": "rope"})
        total = T.int32()
        x = T.match_buffer(x_h, (total, heads, K), io_dtype)
        pos = T.match_buffer(pos_h, (total,), "int32")
        out = T.match_buffer(out_h, (total, heads, K), io_dtype)
        # a thread per rotation pair: both halves share one angle, so each pair costs one
        # exp2 (theta^(-2i/K) = 2^(-2i/K log2 theta)) and one sin/cos, not two pow/sin/cos
        for t, h, i in T.grid(total, heads, half):
            with T.sblock("rope"):
                vt, vh, vi = T.axis.remap("SSS", [t, h, i])
                angle: T.let[T.float32] = T.Cast("float32", pos[vt]) * T.exp2(
                    T.Cast("float32", -2 * vi) / T.float32(K) * T.log2(theta))
                first: T.let[T.float32] = T.Cast("float32", x[vt, vh, vi])
                second: T.let[T.float32] = T.Cast("float32", x[vt, vh, vi + half])
                out[vt, vh, vi] = T.Cast(io_dtype, first * T.cos(angle) - second * T.sin(angle))
                out[vt, vh, vi + half] = T.Cast(io_dtype, second * T.cos(angle) + first * T.sin(angle))

    return func
