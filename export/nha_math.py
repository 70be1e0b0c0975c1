"""Pieces both NHA function bodies share: the write strength s = -expm1(g) and RoPE."""

from dataclasses import dataclass

import numpy as np

from .onnx_builder import FLOAT, INT64, NodeWriter


def write_strength(w: NodeWriter, g: str) -> str:
    """s = 1 - exp(g) for log gates g <= 0, as accurate as torch's -expm1(g).

    1 - exp(g) cancels as g -> 0 (a gate close to 1 writes almost nothing, and the float32
    difference keeps one digit or none). For g > -0.1 the series -g (1 + g/2 (1 + g/3 (1 + g/4
    (1 + g/5)))) is exact to float32; below, 1 - exp(g) is.
    """
    one = w.const(1.0, np.float32)
    series = one
    for n in (5.0, 4.0, 3.0, 2.0):
        series = w.op("Add", one, w.op("Mul", w.op("Div", g, w.const(n, np.float32)), series))
    near_zero = w.op("Mul", w.op("Neg", g), series)
    far = w.op("Sub", one, w.op("Exp", g))
    return w.op("Where", w.op("Greater", g, w.const(-0.1, np.float32)), near_zero, far)


@dataclass
class RotaryTables:
    """Per key dim d: the frequency of its pair (0 with RoPE off), its rotate-half partner
    and the sign of the partner's term."""
    inv_freq: str
    partner: str
    sign: str


def rotary_tables(w: NodeWriter, key_dim: str, rope_theta: str) -> RotaryTables:
    """Tables for rotate-half RoPE over key_dim (shape [1]) with theta ``rope_theta`` (rank 0).

    Pair index i = d mod K/2, angle = position * theta^(-2i/K), as the kernels compute it.
    rope_theta = 0 (no RoPE) makes every frequency 0: cos = 1, sin = 0, and the rotation is the
    identity, exactly, for any K (odd too), so one body serves both settings.
    """
    K = w.scalar(key_dim)
    d = w.op("Range", w.const(0), K, w.const(1))
    half = w.op("Div", K, w.const(2))
    upper = w.op("GreaterOrEqual", d, half)
    pair = w.op("Sub", d, w.op("Mul", half, w.op("Cast", upper, to=INT64)))
    partner = w.op("Where", upper, w.op("Sub", d, half), w.op("Add", d, half))
    sign = w.op("Where", upper, w.const(1.0, np.float32), w.const(-1.0, np.float32))
    exponent = w.op("Div", w.op("Cast", w.op("Mul", pair, w.const(-2)), to=FLOAT),
                    w.op("Cast", K, to=FLOAT))
    rope_on = w.op("Greater", rope_theta, w.const(0.0, np.float32))
    # Where picks the 0: theta^exponent with theta = 0 is inf and never used
    inv_freq = w.op("Where", rope_on, w.op("Pow", rope_theta, exponent), w.const(0.0, np.float32))
    return RotaryTables(inv_freq, partner, sign)


def rotate(w: NodeWriter, x: str, positions: str, tables: RotaryTables) -> str:
    """RoPE of x [..., K] at ``positions`` (float), which broadcast against x's shape without
    its last axis."""
    angle = w.op("Mul", w.unsqueeze(positions, -1), tables.inv_freq)
    partner_term = w.op("Mul", w.op("Gather", x, tables.partner, axis=-1), tables.sign)
    return w.op("Add", w.op("Mul", x, w.op("Cos", angle)),
                w.op("Mul", partner_term, w.op("Sin", angle)))
