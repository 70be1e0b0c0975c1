"""Tensor-core matmuls of shared-memory tiles (ldmatrix + mma.sync m16n8k16, fp32 accumulate in
registers), used by the chunk read-out and the chunk state additions: the output tiles are
dealt out evenly to the warps of the block."""

from tvm.script import tirx as T

from .layout import WARPS


def deals_by_rows(m_tiles: int, n_tiles: int) -> bool:
    """Whether an m_tiles x n_tiles grid deals out evenly to the warps, each warp's tiles in
    one row (what ``warp_tiles`` needs)."""
    per_warp = m_tiles * n_tiles // WARPS
    return per_warp >= 1 and per_warp * WARPS == m_tiles * n_tiles and n_tiles % per_warp == 0


def check_row_strides(*, operand_rows, output_rows) -> None:
    """The row strides (elements) of a kernel's tiles suit these matmuls: ldmatrix reads 16-byte
    rows of the 16-bit operands (a multiple of 8 elements), the accumulators go out as 8-byte
    pairs of float32 (a multiple of 2)."""
    bad = [r for r in operand_rows if r % 8] + [r for r in output_rows if r % 2]
    if bad:
        raise ValueError(f"tile row strides {bad} are not 16-byte (operands) or 8-byte (outputs) multiples")


def tiles_per_warp(m_tiles: int, n_tiles: int) -> int:
    """Output tiles each warp owns: a warp takes consecutive tiles of one row of the grid, so
    the left operand of a k step is loaded once for all of them."""
    assert deals_by_rows(m_tiles, n_tiles), \
        f"a {m_tiles} x {n_tiles} grid of tiles does not deal out by rows to {WARPS} warps"
    return m_tiles * n_tiles // WARPS


# mma.sync m16n8k16 fragments (PTX ISA, "Matrix fragments for mma.m16n8k16"): lane l holds
# A[l/4 + 8 (j%2 for pairs 1, 3)][2 (l%4) + 8 (pairs 2, 3)], B[2 (l%4) + 8 j][l/4] and
# C[l/4 + 8 (elements 2, 3)][2 (l%4) + (0, 1)]. ldmatrix x4 loads four 8 x 8 blocks, lanes 8 j ..
# 8 j + 7 giving the row addresses of block j; the block order below makes its four registers
# exactly a fragment (A), or the two n8 halves of a 16 x 16 B tile.
FRAG_A = 8  # 16-bit elements a lane holds of a 16 x 16 A tile
FRAG_B = 8  # of a 16 x 16 B tile (two n8 halves)
FRAG_C = 8  # float32 accumulators of a 16 x 16 output tile (two n8 halves)


def tile_row(tid, m_tiles, n_tiles):
    """The row i of the output tiles of the calling thread's warp."""
    return (tid // 32) * tiles_per_warp(m_tiles, n_tiles) // n_tiles


def tile_col(tid, m_tiles, n_tiles):
    """The first column n of the output tiles of the calling thread's warp."""
    return (tid // 32) * tiles_per_warp(m_tiles, n_tiles) % n_tiles


def _lane_offset(tid, ld, blocks_down_first):
    """Element offset, within a stored 16 x 16 tile with rows ld apart, of the row address the
    calling lane gives ldmatrix x4: blocks down the rows first (block 0 rows 0-7, 1 rows 8-15,
    2 and 3 the same at columns 8-15), or across the columns first (0 columns 0-7, 1 columns
    8-15, 2 and 3 the same at rows 8-15)."""
    lane = tid % 32
    if blocks_down_first:
        return (lane % 16) * ld + 8 * (lane // 16)
    return (lane % 8 + 8 * (lane // 16)) * ld + 8 * ((lane // 8) % 2)


def _ptx_type(dtype) -> str:
    return {"bfloat16": "bf16", "float16": "fp16"}[str(dtype)]


def acc_row(tid, e):
    """Row, within its 16 x 16 tile, of accumulator 4 h + e (e < 4) of the calling lane."""
    return (tid % 32) // 4 + 8 * (e // 2)


def acc_col(tid, h, e):
    """Column, within its 16 x 16 tile, of accumulator 4 h + e of the calling lane (the n8
    half h). The accumulators of a 16 x 16 tile in this order are also the lane's A fragment
    of that tile (mma.m16n8k16): a product can feed the next matmul without leaving registers."""
    return 8 * h + 2 * (tid % 4) + e % 2


@T.macro
def load_a(tid, fa, a_first, a, a_ld, offset):
    """The 16 x 16 row-major a tile at element ``offset`` of a (rows a_ld apart) into the
    lane's fragment fa[a_first:a_first + FRAG_A]; no transpose (its blocks go down first)."""
    T.ptx_legacy.ldmatrix(
        False, 4, ".b16", fa.data, a_first,
        T.tvm_access_ptr(T.type_annotation(a.dtype), a.data, offset, 16 * a_ld, 1),
        _lane_offset(tid, a_ld, True), dtype=a.dtype)


@T.macro
def load_b(tid, fb, b, b_ld, b_layout, offset):
    """The 16 x 16 b tile at element ``offset`` of b (rows b_ld apart, ``b_layout`` as in
    ``warp_tiles``) into the lane's fragment ``fb``."""
    # b given [n][k] (col_major) is already the mma's "col" operand; [k][n] is transposed
    T.ptx_legacy.ldmatrix(
        b_layout == "row_major", 4, ".b16", fb.data, 0,
        T.tvm_access_ptr(T.type_annotation(b.dtype), b.data, offset, 16 * b_ld, 1),
        _lane_offset(tid, b_ld, b_layout == "row_major"), dtype=b.dtype)


@T.macro
def mma_tile(fa, a_first, fb, fc, c_first):
    """fc[c_first:c_first + FRAG_C] += (A fragment fa[a_first:]) (B fragment fb): one 16-wide k
    step of a 16 x 16 output tile, as two mma.sync m16n8k16."""
    for h in T.unroll(2):
        T.ptx_legacy.mma(
            "m16n8k16", "row", "col", _ptx_type(fa.dtype), _ptx_type(fb.dtype), "fp32",
            fa.data, a_first, fb.data, 4 * h, fc.data, c_first + 4 * h, False, dtype="float32")


@T.macro
def warp_store(tid, fc, out, out_base, out_ld, m_tiles, n_tiles):
    """The accumulators of ``warp_tiles`` into out[out_base + (16 i + r) out_ld + 16 n + c]
    (float32, shared or global memory)."""
    for f in T.unroll(tiles_per_warp(m_tiles, n_tiles)):
        for h in T.unroll(2):
            for r in T.unroll(2):
                # a lane's two neighbouring columns as one 8-byte store
                for e in T.vectorized(2):
                    out[out_base + (tile_row(tid, m_tiles, n_tiles) * 16 + acc_row(tid, 2 * r)) * out_ld
                        + (tile_col(tid, m_tiles, n_tiles) + f) * 16 + acc_col(tid, h, e)] = fc[FRAG_C * f + 4 * h + 2 * r + e]


@T.macro
def warp_tiles(tid, fa, fb, fc, out, out_ld, a, a_ld, b, b_ld, b_layout, m_tiles, n_tiles,
               k_count, b_offset, fill=True, store=True, a_layout="row_major"):
    """out[16 i + r, 16 n + c] = sum_{kk < k_count(i, n)} (a tile (i, kk)) (b tile (kk, n)) for
    the m_tiles x n_tiles grid of output tiles (i, n); k_count must not grow along a row.
    Each warp owns ``tiles_per_warp`` consecutive tiles of a row i, accumulated in registers
    (``fc``: FRAG_C floats per tile) by mma.sync m16n8k16: one ldmatrix of the a tile per k
    step and one per b tile. ``fill=False`` adds to the accumulators of the previous call,
    ``store=False`` leaves them to the next: a sum of matmuls with the same output grid is
    stored once. ``b_offset(i, n, kk)`` is the element offset of the b tile, read ``b_layout``
    with rows b_ld apart (col_major: b given transposed); a tile (i, kk) starts at a[16 i, 16 kk],
    or with ``a_layout`` col_major (a given transposed) at a[16 kk, 16 i]. ``fa`` and ``fb``
    hold the lane's fragments (FRAG_A and FRAG_B elements of the operands' dtype). Row strides
    are in elements and keep every row 16-byte aligned (ldmatrix)."""
    if fill:
        for e in T.unroll(FRAG_C * tiles_per_warp(m_tiles, n_tiles)):
            fc[e] = T.float32(0)
    for kk in T.serial(k_count(tile_row(tid, m_tiles, n_tiles), tile_col(tid, m_tiles, n_tiles))):
        if a_layout == "row_major":
            load_a(tid, fa, 0, a, a_ld, tile_row(tid, m_tiles, n_tiles) * 16 * a_ld + kk * 16)
        else:  # a given [k][m]: transposed (its blocks go across first)
            T.ptx_legacy.ldmatrix(
                True, 4, ".b16", fa.data, 0,
                T.tvm_access_ptr(T.type_annotation(a.dtype), a.data,
                                 kk * 16 * a_ld + tile_row(tid, m_tiles, n_tiles) * 16, 16 * a_ld, 1),
                _lane_offset(tid, a_ld, False), dtype=a.dtype)
        for f in T.unroll(tiles_per_warp(m_tiles, n_tiles)):
            if kk < k_count(tile_row(tid, m_tiles, n_tiles), tile_col(tid, m_tiles, n_tiles) + f):
                load_b(tid, fb, b, b_ld, b_layout,
                       b_offset(tile_row(tid, m_tiles, n_tiles), tile_col(tid, m_tiles, n_tiles) + f, kk))
                mma_tile(fa, 0, fb, fc, FRAG_C * f)
    if store:
        warp_store(tid, fc, out, 0, out_ld, m_tiles, n_tiles)


@T.macro
def warp_matmul(tid, fa, fb, fc, out, out_ld, a, a_ld, b, b_ld, b_layout, m_tiles, n_tiles,
                k_tiles, fill=True, store=True, a_layout="row_major"):
    """out = a b over k_tiles 16-wide steps for an m_tiles x n_tiles grid of 16 x 16 tiles.
    When ``b_layout`` is col_major, b is given transposed ([n, k]); fill, store and a_layout
    as in ``warp_tiles``."""
    warp_tiles(tid, fa, fb, fc, out, out_ld, a, a_ld, b, b_ld, b_layout, m_tiles, n_tiles,
               lambda i, n: k_tiles,
               (lambda i, n, kk: n * 16 * b_ld + kk * 16) if b_layout == "col_major"
               else (lambda i, n, kk: kk * 16 * b_ld + n * 16), fill, store, a_layout)
