"""Tensor-core matmul of shared-memory tiles (WMMA 16 x 16 x 16, fp32 accumulate), used by the
chunk read-out: the output tiles are dealt out evenly to the warps of the block."""

from tvm.script import tirx as T

from .layout import WARPS


@T.macro
def warp_matmul(warp, fa, fb, fc, out, out_ld, a, a_ld, b, b_ld, b_layout, m_tiles, n_tiles,
                k_tiles):
    """out[m * out_ld + n] = sum_k a[m, k] b[k, n] for an m_tiles x n_tiles grid of 16 x 16
    tiles (m_tiles * n_tiles a multiple of the warps). When ``b_layout`` is col_major, b is
    given transposed ([n, k]) and ``fb`` is a fragment declared col_major; the row strides are
    in elements."""
    for f in T.serial(m_tiles * n_tiles // WARPS):
        T.tvm_fill_fragment(fc.data, 16, 16, 16, 0, T.float32(0))
        for kk in T.serial(k_tiles):
            T.tvm_load_matrix_sync(
                fa.data, 16, 16, 16, 0,
                T.tvm_access_ptr(T.type_annotation(a.dtype), a.data,
                                 ((warp * (m_tiles * n_tiles // WARPS) + f) // n_tiles) * 16 * a_ld + kk * 16, 16 * a_ld, 1),
                a_ld, "row_major")
            if b_layout == "col_major":
                T.tvm_load_matrix_sync(
                    fb.data, 16, 16, 16, 0,
                    T.tvm_access_ptr(T.type_annotation(b.dtype), b.data,
                                     ((warp * (m_tiles * n_tiles // WARPS) + f) % n_tiles) * 16 * b_ld + kk * 16, 16 * b_ld, 1),
                    b_ld, "col_major")
            else:
                T.tvm_load_matrix_sync(
                    fb.data, 16, 16, 16, 0,
                    T.tvm_access_ptr(T.type_annotation(b.dtype), b.data,
                                     kk * 16 * b_ld + ((warp * (m_tiles * n_tiles // WARPS) + f) % n_tiles) * 16, 16 * b_ld, 1),
                    b_ld, "row_major")
            T.tvm_mma_sync(fc.data, 0, fa.data, 0, fb.data, 0, fc.data, 0)
        T.tvm_store_matrix_sync(
            fc.data, 16, 16, 16, 0,
            T.tvm_access_ptr(T.type_annotation("float32"), out.data,
                             ((warp * (m_tiles * n_tiles // WARPS) + f) // n_tiles) * 16 * out_ld
                             + ((warp * (m_tiles * n_tiles // WARPS) + f) % n_tiles) * 16, 16 * out_ld, 2),
            out_ld, "row_major")
