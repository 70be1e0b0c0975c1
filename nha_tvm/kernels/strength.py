"""The default write strength s = 1 - exp(g), computed where a kernel reads s.

When the caller gives no s, it passes g's buffer in s's place with ``s_from_g`` set, and no
tensor of s is made (a [T, H, M] tensor per prefill, a kernel launch per decode step).
"""

from tvm.script import tirx as T


def write_strength(value, s_from_g):
    """A token's write strength in float32: ``value`` itself, or with ``s_from_g`` the default
    s = 1 - exp(g) of the log gate g = ``value``, as accurate as -expm1(g): the float32
    difference 1 - exp(g) cancels as g -> 0, so for g > -0.1 the series
    -g (1 + g/2 (1 + g/3 (1 + g/4 (1 + g/5)))) is used, exact to float32 there (the ONNX
    export computes it the same way, ``export/nha_math.py``)."""
    g = T.Cast("float32", value)
    series = -g * (T.float32(1) + g / T.float32(2) * (T.float32(1) + g / T.float32(3) * (
        T.float32(1) + g / T.float32(4) * (T.float32(1) + g / T.float32(5)))))
    return T.if_then_else(s_from_g != 0, T.if_then_else(g > T.float32(-0.1), series, T.float32(1) - T.exp(g)), g)
