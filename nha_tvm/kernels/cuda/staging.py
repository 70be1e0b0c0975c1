"""Global-to-shared staging of token rows in 16-byte vectors, shared by the chunked kernels.

A thread's loads all go out before any is used (from clamped rows, so none sits under a
branch); rows out of range are zeroed in registers, and no shared-memory store sits under a
branch, where TVM could not place the barrier a later reuse of the buffer needs. Loading and
storing are separate macros, so a kernel can keep a tile's loads in flight across other work.
"""

from tvm.script import tirx as T

from .layout import THREADS, ceil_div

VEC = 8  # 16-bit elements per 16-byte vector load


def vector_row(j, tid, rows, width, lanes=VEC):
    """The row of the j-th vector (of ``lanes`` elements) a thread stages of a [rows, width]
    tile (clamped: threads past the end repeat the last vector)."""
    return T.min(j * THREADS + tid, rows * width // lanes - 1) // (width // lanes)


def vector_col(j, tid, rows, width, lanes=VEC):
    """The first column of that vector."""
    return T.min(j * THREADS + tid, rows * width // lanes - 1) % (width // lanes) * lanes


def vector_lanes(dtype: str, width: int) -> int:
    """Elements of ``dtype`` in a 16-byte vector, halved until they divide a row of ``width``."""
    lanes = 16 // (4 if dtype == "float32" else 2)
    while width % lanes:
        lanes //= 2
    return lanes


def vector_registers(rows: int, width: int, lanes: int) -> int:
    """Elements of the register buffer of a thread's share of a [rows, width] tile."""
    return ceil_div(rows * width // lanes, THREADS) * lanes


@T.macro
def load_vectors(vec, lanes, rows, src, base, hd, width, total, tid):
    """The thread's share of src[base + r, hd, 0:width] for r < rows into the registers ``vec``
    in vectors of ``lanes`` elements, every load from a clamped row, so a thread's loads are in
    flight together (the stores zero the rows that were out of range)."""
    for j in T.unroll(ceil_div(rows * width // lanes, THREADS)):
        for e in T.vectorized(lanes):
            vec[j * lanes + e] = src[T.max(T.min(base + vector_row(j, tid, rows, width, lanes), total - 1), 0), hd,
                                     vector_col(j, tid, rows, width, lanes) + e]


@T.macro
def load_rows(vec, rows, src, base, hd, width, total, tid):
    """``load_vectors`` in 16-byte vectors of 16-bit elements, for ``store_rows``."""
    load_vectors(vec, VEC, rows, src, base, hd, width, total, tid)


@T.macro
def store_padded_rows(tile, row_stride, rows, vec, lanes, width, r_min, r_max, tid):
    """What ``load_vectors`` left in ``vec`` into tile[r * row_stride + e] one element at a
    time (for tiles whose shared rows are padded off the 16-byte grid), converted to the tile's
    dtype, rows outside r_min <= r < r_max as zeros."""
    for j in T.unroll(ceil_div(rows * width // lanes, THREADS)):
        for e in T.unroll(lanes):
            tile[vector_row(j, tid, rows, width, lanes) * row_stride + vector_col(j, tid, rows, width, lanes) + e] = T.Select(
                vector_row(j, tid, rows, width, lanes) >= r_min and vector_row(j, tid, rows, width, lanes) < r_max,
                T.Cast(tile.dtype, vec[j * lanes + e]), T.Cast(tile.dtype, 0))


@T.macro
def load_state_rows(vec, src, c, h, rows, width, tid):
    """A thread's share of the chunk-start state src[c, h] ([rows, width]) into ``vec`` in
    16-byte vectors (``store_rows`` with r_min = 0, r_max = rows puts it in shared memory)."""
    for j in T.unroll(ceil_div(rows * width // VEC, THREADS)):
        for e in T.vectorized(VEC):
            vec[j * VEC + e] = src[c, h, vector_row(j, tid, rows, width), vector_col(j, tid, rows, width) + e]


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
