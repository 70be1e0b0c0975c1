"""Global-to-shared staging of token rows in 16-byte vectors, shared by the chunked kernels.

A thread's loads all go out before any is used (from clamped rows, so none sits under a
branch); rows out of range are zeroed in registers, and no shared-memory store sits under a
branch, where TVM could not place the barrier a later reuse of the buffer needs. Loading and
storing are separate macros, so a kernel can keep a tile's loads in flight across other work.
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
def load_rows(vec, rows, src, base, hd, width, total, tid):
    """The thread's share of src[base + r, hd, 0:width] for r < rows into the registers ``vec``
    in 16-byte vectors, every load from a clamped row, so a thread's loads are in flight
    together (``store_rows`` zeroes the rows that were out of range)."""
    for j in T.unroll(ceil_div(rows * width // VEC, THREADS)):
        for e in T.vectorized(VEC):
            vec[j * VEC + e] = src[T.max(T.min(base + vector_row(j, tid, rows, width), total - 1), 0), hd,
                                   vector_col(j, tid, rows, width) + e]


@T.macro
def store_rows(tile, row_stride, rows, vec, width, r_min, r_max, tid):
    """What ``load_rows`` left in ``vec`` into tile[r * row_stride + e], rows outside
    r_min <= r < r_max as zeros. The zeros go into the registers here, at the store, not
    after the loads, where overwriting a register would wait for its load."""
    for j in T.unroll(ceil_div(rows * width // VEC, THREADS)):
        if vector_row(j, tid, rows, width) < r_min or vector_row(j, tid, rows, width) >= r_max:
            for e in T.vectorized(VEC):
                vec[j * VEC + e] = T.Cast(vec.dtype, 0)
    for j in T.unroll(ceil_div(rows * width // VEC, THREADS)):
        for e in T.vectorized(VEC):
            tile[vector_row(j, tid, rows, width) * row_stride + vector_col(j, tid, rows, width) + e] = vec[j * VEC + e]


@T.macro
def stage_rows(tile, row_stride, rows, src, base, r_min, r_max, hd, width, total, vec, tid):
    """tile[r * row_stride + e] = src[base + r, hd, e] for r_min <= r < r_max, else 0 (r < rows,
    e < width): ``load_rows`` then ``store_rows``. A kernel with work to do meanwhile calls
    the two apart, so the loads' latency hides behind that work."""
    load_rows(vec, rows, src, base, hd, width, total, tid)
    store_rows(tile, row_stride, rows, vec, width, r_min, r_max, tid)
