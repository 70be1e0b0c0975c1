"""The default write strength s = 1 - exp(g), computed where a kernel reads s.

When the caller gives no s, it passes g's buffer in s's place with ``s_from_g`` set, and no
tensor of s is made (a [T, H, M] tensor per prefill, a kernel launch per decode step).
"""

from tvm.script import tirx as T


def write_strength(raw, s_from_g):
    """A token's write strength in float32 from ``raw``, the float32 value read from s's
    buffer: raw itself, or with ``s_from_g`` the default s = 1 - exp(g) of the log gate
    g = raw, as accurate as -expm1(g): the float32 difference 1 - exp(g) cancels as g -> 0, so
    for g > -0.1 the series -g (1 + g/2 (1 + g/3 (1 + g/4 (1 + g/5)))) is used, exact to
    float32 there (the ONNX export computes it the same way, ``export/nha_math.py``).

    ``raw`` must be a variable (``x: T.let[T.float32] = ...``), not a load: TVM turns a select
    whose operands load memory into a branch, and a branch on a loaded value holds each later
    load of the thread until that one has arrived (the state additions took 1.5x as long).
    """
    series = -raw * (T.float32(1) + raw * T.float32(1 / 2) * (T.float32(1) + raw * T.float32(1 / 3) * (
        T.float32(1) + raw * T.float32(1 / 4) * (T.float32(1) + raw * T.float32(1 / 5)))))
    return T.Select(s_from_g != 0, T.Select(raw > T.float32(-0.1), series, T.float32(1) - T.exp(raw)), raw)
