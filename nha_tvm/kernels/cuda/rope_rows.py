"""RoPE of token rows in registers, between ``staging.load_rows`` and ``store_rows``.

The output pass can rotate its window's queries and keys as it stages them, instead of reading
copies the RoPE kernel wrote. ``load_rows`` deals a [rows, width] tile to the threads in 16-byte
vectors, a row's width / VEC vectors to consecutive lanes. Where that count divides 32 a row
sits inside one warp, and the partner of element i (i +- width / 2, the rotate-half form of
``kernels/rope.py``) is in the lane width / (2 VEC) away: one 32-bit shuffle moves the partners
of two neighbouring elements, and the rotation's sign is flipped into the partner's sign bits
there (no multiply). Each value takes the RoPE kernel's float32 angle (``rope.rope_angle``);
on the H200 the output came out bit for bit that of the single-element shuffles and the sign
as a float factor, on the six shapes of BENCHMARKS' A/B.
"""

from tvm.script import tirx as T

from ..rope import rope_angle
from .layout import THREADS
from .staging import VEC


def rotates_in_registers(*, width: int, rows: int) -> bool:
    """Whether a [rows, width] tile of 16-bit elements can be rotated by ``rotate_rows``: every
    row inside one warp (width / VEC divides 32, a power of two) and every thread holding whole
    vectors of its own (no clamped repeats, whose partner lanes would be wrong)."""
    vectors = width // VEC
    return width % (2 * VEC) == 0 and 32 % vectors == 0 and rows * vectors % THREADS == 0


def rotated(x, partner, col, position, width, theta):
    """Element ``col`` of a row at ``position`` after RoPE, from its value x and its partner's
    with the rotation's sign (``kernels/rope.py``: x[i] cos - x[i + half] sin,
    x[i + half] cos + x[i] sin: the partner of the first half comes negated)."""
    angle = rope_angle(position, col % (width // 2), width, theta)
    return x * T.cos(angle) + partner * T.sin(angle)


@T.macro
def rotate_rows(vec, partner, rows, width, first, theta, tid):
    """RoPE of what ``load_rows`` left in ``vec`` (a thread's share of a [rows, width] tile),
    row r at position first + r, with base ``theta``. ``partner`` is a uint32 register buffer
    of VEC / 2 words: the partners of two 16-bit elements move as one 32-bit shuffle. Every
    lane runs every shuffle (no branch inside)."""
    words = T.decl_buffer((vec.shape[0] // 2,), "uint32", data=vec.data, scope="local")
    partner_halves = T.decl_buffer((VEC,), vec.dtype, data=partner.data, scope="local")
    for j in T.unroll(rows * width // VEC // THREADS):
        for w in T.unroll(VEC // 2):
            # both 16-bit sign bits flipped for a vector in the row's first half: a negation
            # without a multiply (a vector never straddles the half, width % 2 VEC == 0)
            partner[w] = T.bitwise_xor(T.tvm_warp_shuffle(
                T.tvm_warp_activemask(), words[j * (VEC // 2) + w],
                (tid % 32) ^ (width // VEC // 2), 32, 32),
                T.Cast("uint32", 1 - (j * THREADS + tid) % (width // VEC) * VEC // (width // 2)) * T.uint32(0x80008000))
        for e in T.unroll(VEC):
            vec[j * VEC + e] = T.Cast(vec.dtype, rotated(
                T.Cast("float32", vec[j * VEC + e]), T.Cast("float32", partner_halves[e]),
                (j * THREADS + tid) % (width // VEC) * VEC + e,
                first + (j * THREADS + tid) // (width // VEC), width, theta))
