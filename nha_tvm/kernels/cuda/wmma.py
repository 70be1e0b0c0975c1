"""Tensor-core matmuls of shared-memory tiles (WMMA 16 x 16 x 16, fp32 accumulate), used by the
chunk read-out and the chunk state additions: the output tiles are dealt out evenly to the
warps of the block."""

from tvm.script import tirx as T

from .layout import WARPS


def deals_by_rows(m_tiles: int, n_tiles: int) -> bool:
    """Whether an m_tiles x n_tiles grid deals out evenly to the warps, each warp's tiles in
    one row (what ``warp_tiles`` needs)."""
    per_warp = m_tiles * n_tiles // WARPS
    return per_warp >= 1 and per_warp * WARPS == m_tiles * n_tiles and n_tiles % per_warp == 0


def tiles_per_warp(m_tiles: int, n_tiles: int) -> int:
    """Output tiles each warp owns: a warp takes consecutive tiles of one row of the grid, so
    the left operand of a k step is loaded once for all of them."""
    assert deals_by_rows(m_tiles, n_tiles), \
        f"a {m_tiles} x {n_tiles} grid of tiles does not deal out by rows to {WARPS} warps"
    return m_tiles * n_tiles // WARPS


def tile_row(warp, m_tiles, n_tiles):
    """The row i of the output tiles that ``warp`` owns."""
    return warp * tiles_per_warp(m_tiles, n_tiles) // n_tiles


def tile_col(warp, m_tiles, n_tiles):
    """The column n of the first output tile that ``warp`` owns."""
    return warp * tiles_per_warp(m_tiles, n_tiles) % n_tiles


@T.macro
def warp_store(warp, fc, out, out_base, out_ld, m_tiles, n_tiles):
    """The fragments of ``warp_tiles`` into out[out_base + (16 i + r) out_ld + 16 n + c] (float32,
    shared or global memory)."""
    for f in T.unroll(tiles_per_warp(m_tiles, n_tiles)):
        T.tvm_store_matrix_sync(
            fc.data, 16, 16, 16, f,
            T.tvm_access_ptr(T.type_annotation("float32"), out.data,
                             out_base + tile_row(warp, m_tiles, n_tiles) * 16 * out_ld
                             + (tile_col(warp, m_tiles, n_tiles) + f) * 16, 16 * out_ld, 2),
            out_ld, "row_major")


@T.macro
def warp_tiles(warp, fa, fb, fc, out, out_ld, a, a_ld, b, b_ld, b_layout, m_tiles, n_tiles,
               k_count, b_offset, fill=True, store=True, a_layout="row_major"):
    """out[16 i + r, 16 n + c] = sum_{kk < k_count(i, n)} (a tile (i, kk)) (b tile (kk, n)) for
    the m_tiles x n_tiles grid of output tiles (i, n); k_count must not grow along a row.
    Each warp owns ``tiles_per_warp`` consecutive tiles of a row i, accumulated in as many
    fragments of ``fc`` side by side: independent mma chains, one load of the a tile per k
    step, and two barriers per matmul rather than two per tile. ``fill=False`` adds to the
    fragments of the previous call, ``store=False`` leaves them to the next: a sum of matmuls
    with the same output grid goes through shared memory once. ``b_offset(i, n, kk)`` is the
    element offset of the b tile, read ``b_layout`` with rows b_ld apart (col_major: b given
    transposed, ``fb`` declared col_major); a tile (i, kk) starts at a[16 i, 16 kk], or with
    ``a_layout`` col_major (a given transposed, ``fa`` declared col_major) at a[16 kk, 16 i].
    Row strides are in elements."""
    if fill:
        for f in T.unroll(tiles_per_warp(m_tiles, n_tiles)):
            T.tvm_fill_fragment(fc.data, 16, 16, 16, f, T.float32(0))
    for kk in T.serial(k_count(tile_row(warp, m_tiles, n_tiles), tile_col(warp, m_tiles, n_tiles))):
        T.tvm_load_matrix_sync(
            fa.data, 16, 16, 16, 0,
            T.tvm_access_ptr(T.type_annotation(a.dtype), a.data,
                             tile_row(warp, m_tiles, n_tiles) * 16 * a_ld + kk * 16
                             if a_layout == "row_major" else
                             kk * 16 * a_ld + tile_row(warp, m_tiles, n_tiles) * 16, 16 * a_ld, 1),
            a_ld, a_layout)
        for f in T.unroll(tiles_per_warp(m_tiles, n_tiles)):
            if kk < k_count(tile_row(warp, m_tiles, n_tiles), tile_col(warp, m_tiles, n_tiles) + f):
                T.tvm_load_matrix_sync(
                    fb.data, 16, 16, 16, 0,
                    T.tvm_access_ptr(T.type_annotation(b.dtype), b.data,
                                     b_offset(tile_row(warp, m_tiles, n_tiles),
                                              tile_col(warp, m_tiles, n_tiles) + f, kk), 16 * b_ld, 1),
                    b_ld, b_layout)
                T.tvm_mma_sync(fc.data, f, fa.data, 0, fb.data, 0, fc.data, f)
    if store:
        warp_store(warp, fc, out, 0, out_ld, m_tiles, n_tiles)


@T.macro
def warp_matmul(warp, fa, fb, fc, out, out_ld, a, a_ld, b, b_ld, b_layout, m_tiles, n_tiles,
                k_tiles, fill=True, store=True, a_layout="row_major"):
    """out = a b over k_tiles 16-wide steps for an m_tiles x n_tiles grid of 16 x 16 tiles.
    When ``b_layout`` is col_major, b is given transposed ([n, k]); fill, store and a_layout
    as in ``warp_tiles``."""
    warp_tiles(warp, fa, fb, fc, out, out_ld, a, a_ld, b, b_ld, b_layout, m_tiles, n_tiles,
               lambda i, n: k_tiles,
               (lambda i, n, kk: n * 16 * b_ld + kk * 16) if b_layout == "col_major"
               else (lambda i, n, kk: kk * 16 * b_ld + n * 16), fill, store, a_layout)
