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
        for t, h, d in T.grid(total, heads, K):
            with T.sblock("rope"):
                vt, vh, vd = T.axis.remap("SSS", [t, h, d])
                pair: T.let[T.int32] = vd % half
                angle: T.let[T.float32] = T.Cast("float32", pos[vt]) * T.pow(
                    theta, T.Cast("float32", -2 * pair) / T.float32(K))
                # rotate_half(x)[d] = -x[d + K/2] for d < K/2, else x[d - K/2]
                partner: T.let[T.float32] = T.Cast("float32", x[vt, vh, (vd + half) % K]) * T.if_then_else(
                    vd < half, T.float32(-1), T.float32(1))
                out[vt, vh, vd] = T.Cast(
                    io_dtype, T.Cast("float32", x[vt, vh, vd]) * T.cos(angle) + partner * T.sin(angle))

    return func
