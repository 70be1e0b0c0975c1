"""The write strength of a token entering the slots (spec: s, default 1 - exp(g)), shared by
the kernels that make the default themselves: the gate prefix sums of a prefill and the
decode steps.
"""

from tvm.script import tirx as T


def default_write_strength(g_value):
    """1 - exp(g) in float32 as -expm1(g): gates near 1 keep their digits (1 - exp(g) keeps
    about one at g ~ -1e-6)."""
    return -T.call_pure_extern("float32", "expm1f", T.Cast("float32", g_value))


def write_strength(s_value, g_value, s_from_g):
    """s as given, or the default when ``s_from_g`` is nonzero (the caller then passes g's
    buffer as s, and no tensor of s is made)."""
    return T.if_then_else(s_from_g != 0, default_write_strength(g_value), T.Cast("float32", s_value))
