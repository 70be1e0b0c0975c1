"""Tensor-core matmuls of shared-memory tiles (WMMA 16 x 16 x 16, fp32 accumulate), used by the
chunk read-out: the output tiles are dealt out evenly to the warps of the block."""

from tvm.script import tirx as T

from .layout import WARPS


@T.macro
def warp_tiles(warp, fa, fb, fc, out, out_ld, a, a_ld, b, b_ld, b_layout, m_tiles, n_tiles,
               k_count, b_offset):
    """out[16 i + r, 16 n + c] = sum_{kk < k_count(i, n)} (a tile (i, kk)) (b tile (kk, n)) for
    the m_tiles x n_tiles grid of output tiles (i, n), m_tiles * n_tiles a multiple of the
    warps. ``b_offset(i, n, kk)`` is the element offset of the b tile, read ``b_layout`` with
    rows b_ld apart (col_major: b given transposed, ``fb`` declared col_major); a tile (i, kk)
    starts at a[16 i, 16 kk]. Row strides are in elements."""
    for f in T.serial(m_tiles * n_tiles // WARPS):
        T.tvm_fill_fragment(fc.data, 16, 16, 16, 0, T.float32(0))
        for kk in T.serial(k_count((warp * (m_tiles * n_tiles // WARPS) + f) // n_tiles,
                                   (warp * (m_tiles * n_tiles // WARPS) + f) % n_tiles)):
            T.tvm_load_matrix_sync(
                fa.data, 16, 16, 16, 0,
                T.tvm_access_ptr(T.type_annotation(a.dtype), a.data,
                                 ((warp * (m_tiles * n_tiles // WARPS) + f) // n_tiles) * 16 * a_ld + kk * 16, 16 * a_ld, 1),
                a_ld, "row_major")
            T.tvm_load_matrix_sync(
                fb.data, 16, 16, 16, 0,
                T.tvm_access_ptr(T.type_annotation(b.dtype), b.data,
                                 b_offset((warp * (m_tiles * n_tiles // WARPS) + f) // n_tiles,
                                          (warp * (m_tiles * n_tiles // WARPS) + f) % n_tiles, kk), 16 * b_ld, 1),
                b_ld, b_layout)
            T.tvm_mma_sync(fc.data, 0, fa.data, 0, fb.data, 0, fc.data, 0)
        T.tvm_store_matrix_sync(
            fc.data, 16, 16, 16, 0,
            T.tvm_access_ptr(T.type_annotation("float32"), out.data,
                             ((warp * (m_tiles * n_tiles // WARPS) + f) // n_tiles) * 16 * out_ld
                             + ((warp * (m_tiles * n_tiles // WARPS) + f) % n_tiles) * 16, 16 * out_ld, 2),
            out_ld, "row_major")


@T.macro
def warp_matmul(warp, fa, fb, fc, out, out_ld, a, a_ld, b, b_ld, b_layout, m_tiles, n_tiles,
                k_tiles):
    """out = a b over k_tiles 16-wide steps for an m_tiles x n_tiles grid of 16 x 16 tiles.
    When ``b_layout`` is col_major, b is given transposed ([n, k])."""
    warp_tiles(warp, fa, fb, fc, out, out_ld, a, a_ld, b, b_ld, b_layout, m_tiles, n_tiles,
               lambda i, n: k_tiles,
               (lambda i, n, kk: n * 16 * b_ld + kk * 16) if b_layout == "col_major"
               else (lambda i, n, kk: kk * 16 * b_ld + n * 16))
