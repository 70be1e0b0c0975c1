"""Global-to-shared staging of token rows in 16-byte vectors, shared by the chunked kernels.

A thread's loads all go out before any is used (from clamped rows, so none sits under a
branch); rows out of range are zeroed in registers, and no shared-memory store sits under a
branch, where TVM could not place the barrier a later reuse of the buffer needs.
"""

from tvm.script import tirx as T

from .layout import THREADS, ceil_div

VEC = 8  # 16-bit elements per 16-byte vector load


def vector_row(j, tid, rows, width):
    """The row of the j-th vector a thread stages of a [rows, width] tile (clamped: threads
    past the end repeat the last vector)."""
    return T.min(j * THREADS + tid, rows * width // VEC - 1) // (width // VEC)


def vector_col(j, tid, rows, width):
    """The first column of that vector."""
    return T.min(j * THREADS + tid, rows * width // VEC - 1) % (width // VEC) * VEC


@T.macro
def stage_rows(tile, row_stride, rows, src, base, r_min, r_max, hd, width, total, vec, tid):
    """tile[r * row_stride + e] = src[base + r, hd, e] for r_min <= r < r_max, else 0 (r < rows,
    e < width), in 16-byte vectors: every load first, from a clamped row into the registers
    ``vec``, so a thread's loads are in flight together; rows out of range are zeroed in
    registers, and no shared-memory store sits under a branch."""
    for j in T.unroll(ceil_div(rows * width // VEC, THREADS)):
        for e in T.vectorized(VEC):
            vec[j * VEC + e] = src[T.max(T.min(base + vector_row(j, tid, rows, width), total - 1), 0), hd,
                                   vector_col(j, tid, rows, width) + e]
    for j in T.unroll(ceil_div(rows * width // VEC, THREADS)):
        if vector_row(j, tid, rows, width) < r_min or vector_row(j, tid, rows, width) >= r_max:
            for e in T.vectorized(VEC):
                vec[j * VEC + e] = T.Cast(vec.dtype, 0)
    for j in T.unroll(ceil_div(rows * width // VEC, THREADS)):
        for e in T.vectorized(VEC):
            tile[vector_row(j, tid, rows, width) * row_stride + vector_col(j, tid, rows, width) + e] = vec[j * VEC + e]
