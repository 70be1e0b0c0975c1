"""RoPE of token rows in registers, between ``staging.load_rows`` and ``store_rows``.

The output pass can rotate its window's queries and keys as it stages them, instead of reading
copies the RoPE kernel wrote. ``load_rows`` deals a [rows, width] tile to the threads in 16-byte
vectors, a row's width / VEC vectors to consecutive lanes. Where that count divides 32 a row
sits inside one warp, and the partner of element i (i +- width / 2, the rotate-half form of
``kernels/rope.py``) is in the lane width / (2 VEC) away: one shuffle per element. Each value
is computed as the RoPE kernel computes it (its angle, ``rope.rope_angle``, and the same float32
products), so the rotated tile is the one it would have read.
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
    (``kernels/rope.py``: x[i] cos - x[i + half] sin, x[i + half] cos + x[i] sin)."""
    half = width // 2
    angle = rope_angle(position, col % half, width, theta)
    # the sign as a factor, not a select: TVM lowers a select of two calls to a branch, and
    # the lanes of a warp, on both sides of it, would take the sin and cos twice
    sign = T.Cast("float32", 1 - 2 * (col // half))
    return x * T.cos(angle) - sign * partner * T.sin(angle)


@T.macro
def rotate_rows(vec, partner, rows, width, first, theta, tid):
    """RoPE of what ``load_rows`` left in ``vec`` (a thread's share of a [rows, width] tile),
    row r at position first + r, with base ``theta``. ``partner`` is a float32 register
    buffer of VEC elements. Every lane runs every shuffle (no branch inside)."""
    for j in T.unroll(rows * width // VEC // THREADS):
        for e in T.unroll(VEC):
            partner[e] = T.tvm_warp_shuffle(
                T.tvm_warp_activemask(), T.Cast("float32", vec[j * VEC + e]),
                (tid % 32) ^ (width // VEC // 2), 32, 32)
        for e in T.unroll(VEC):
            vec[j * VEC + e] = T.Cast(vec.dtype, rotated(
                T.Cast("float32", vec[j * VEC + e]), partner[e],
                (j * THREADS + tid) % (width // VEC) * VEC + e,
                first + (j * THREADS + tid) // (width // VEC), width, theta))
