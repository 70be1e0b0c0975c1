"""Rotary embedding (rotate-half form) for the window path, computed in float32.

For position p and pair index i < K/2: angle = p * theta^(-2i/K),
x'[i] = x[i] cos - x[i + K/2] sin and x'[i + K/2] = x[i + K/2] cos + x[i] sin.
"""

from tvm.script import tirx as T


def rope_angle(position, pair, K: int, theta):
    """The float32 angle of rotation pair ``pair`` at ``position``: position * theta^(-2 pair / K),
    the power as 2^(-2 pair / K log2 theta). The output pass's in-register RoPE
    (``cuda/rope_rows.py``) uses it too, so that both rotate by the same float32 angle."""
    return T.Cast("float32", position) * T.exp2(T.Cast("float32", -2 * pair) / T.float32(K) * T.log2(theta))


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
        # a thread per (token, rotation pair), over every head: the angle depends on the
        # position and the pair alone, so each costs one exp2 (theta^(-2i/K) =
        # 2^(-2i/K log2 theta)) and one sin/cos for all the heads, and the kernel is bound
        # by memory, not by the accurate sin/cos of large angles. The sin/cos are kept in a
        # register buffer: TVM substitutes let-bound values at their uses, and nvcc then
        # calls sinf/cosf again for every head
        for t, i in T.grid(total, half):
            with T.sblock("rope"):
                vt, vi = T.axis.remap("SS", [t, i])
                T.reads(x[vt, 0:heads, vi:vi + half + 1], pos[vt])
                T.writes(out[vt, 0:heads, vi:vi + half + 1])
                trig = T.sblock_alloc_buffer((2,), "float32", scope="local")  # cos, sin
                angle: T.let[T.float32] = rope_angle(pos[vt], vi, K, theta)
                trig[0] = T.cos(angle)
                trig[1] = T.sin(angle)
                for h in T.unroll(heads):  # every head's loads in flight together
                    out[vt, h, vi] = T.Cast(io_dtype, T.Cast("float32", x[vt, h, vi]) * trig[0]
                                            - T.Cast("float32", x[vt, h, vi + half]) * trig[1])
                    out[vt, h, vi + half] = T.Cast(io_dtype, T.Cast("float32", x[vt, h, vi + half]) * trig[0]
                                                   + T.Cast("float32", x[vt, h, vi]) * trig[1])

    return func
