"""Prefill output pass (GPU): one thread block per (chunk, query head), all in shared memory.

Per chunk of C tokens, with the chunk-start states S_c [K, M], R_c [M, V] (state pass), the
gate prefix sums G [C, M] and the shifted slot inputs k', v', s' (spec, "Chunked form"):

    A  = (Q S_c) * exp(G)  +  sum_{tau <= t} (Q k'^T)[t, tau] s'[tau] exp(G_t - G_tau)   slot logits
    P  = exp(scale A - max)                                                               one softmax...
    O  = (P * exp(G)) R_c  +  sum_{tau <= t} (sum_m P s'[tau] exp(G_t - G_tau)) v'_tau
    then the window keys (RoPE'd) in tiles of C, folded into the same softmax online      ...over both

Every exponent of the pairwise form is <= 0 (tau <= t and g' <= 0), so nothing overflows at any
gate strength; the factored form below is bounded by a checked limit. The window of a chunk
spans at most C + W - 1 keys, visited in tiles, so W may be any size; no [T, M + W] score
tensor or per-token state ever reaches global memory.

Thread mapping (``layout``): 256 threads as 16 x 16; thread (ty, tx) owns rows t = ty + 16 a of
every [C, *] tile and columns tx + 16 b, so the 16 threads of a row are 16 lanes of one warp
and the softmax statistics of a row are warp shuffles. The loops over keys and slots are
register-blocked: a thread loads a key's (or a slot's) values once for all its rows. Shared
rows that are read down a column (keys, s', G) are padded by one word, so the 16 threads of a
half-warp hit 16 different banks. Results are kept in registers and written to shared memory
in separate loops: TVM plans barriers conservatively across the merged dynamic shared buffer,
and a store between two reads would cost a barrier each. With 16-bit inputs the key and value
matmuls (Q k'^T, X v', the window's Q K^T and P V) run on tensor cores (``warp_mma``: ldmatrix
and mma.sync, accumulators in registers), each warp taking whole 16 x 16 output tiles; in
the window two warps share a row block, each with half the keys of a tile and its own online
softmax on its accumulators, and merge at the end.

With 16-bit inputs the slot path runs there too (``slots_on_tensor_cores``): the chunk-start
states come in the input dtype, so Q S_c and (P exp(G)) R_c are tensor-core matmuls, and the
intra-chunk terms are split by 16-token sub-blocks. For t in sub-block i and tau in an earlier
one, with rho_i = 16 i - 1 the last token before sub-block i (tau <= rho_i < t),

    exp(G_t - G_tau) = exp(G_t - G_rho_i) * exp(G_rho_i - G_tau)        both factors <= 1

so with U_i[tau, m] = s'_tau[m] exp(G_rho_i[m] - G_tau[m]) the logit term is
exp(G_t - G_rho_i) * (X U_i)[t] and the read-out weight is ((P exp(G_t - G_rho_i)) U_i^T)[t, tau]:
matmuls. For the diagonal 16 x 16 blocks (tau in t's own sub-block) the same factoring has
exp(G_rho_i - G_tau) >= 1 and exp(G_t - G_rho_i) <= 1, both bounded by the decay over the
sub-block, D = max over m, i and the real tokens tau of sub-block i of (G_rho_i - G_tau):
while D stays within ``diagonal_decay_limit`` and every |s'| <= 1 (decided per chunk and
head), U_i gets 16 diagonal rows and the matmuls take one more k step with X masked to
tau <= t; past it those tiles are dropped and the diagonal blocks take the pairwise decays on
CUDA cores, which stay finite at any gate strength.
"""

import functools
import math
import operator

from tvm.script import tirx as T

from .layout import LOG2_TX, STATIC_SHARED_LIMIT, THREADS, TX, TY, WARPS, ceil_div
from .rope_rows import rotate_rows, rotates_in_registers
from .staging import (VEC, load_rows, load_state_rows, load_vectors, store_padded_rows, store_rows,
                      vector_lanes, vector_registers)
from .warp_mma import (FRAG_A, FRAG_B, FRAG_C, acc_col, acc_row, check_row_strides, deals_by_rows,
                       load_a, load_b, mma_tile, tile_col, tile_row, tiles_per_warp, warp_matmul, warp_tiles)

STATE_ROWS = 16  # rows of S_c / R_c staged in shared memory at a time
LOG2E = math.log2(math.e)
NEG = -1.0e30  # a masked logit: exp(NEG - max) (or exp2) == 0 without inf - inf


@T.macro
def stage_state_rows(state, src, c, h, first, rows, cols, tid):
    """Rows first .. first + STATE_ROWS of the chunk-start state src[c, h] ([rows, cols]) into
    ``state``, a row after another; rows past the end are clamped to the last and never read."""
    for j in T.unroll(ceil_div(STATE_ROWS * cols, THREADS)):
        state[T.min(j * THREADS + tid, STATE_ROWS * cols - 1)] = src[
            c, h, T.min(first + T.min(j * THREADS + tid, STATE_ROWS * cols - 1) // cols, rows - 1),
            T.min(j * THREADS + tid, STATE_ROWS * cols - 1) % cols]


@T.macro
def state_rows_matmul(acc, lhs, state, src, c, h, n_rows, n_cols, rows, cols, tx, tid):
    """acc[a, b] = sum_r lhs(a, r) src[c, h, r, tx + TX b] on CUDA cores, the chunk-start state
    ([n_rows, n_cols], float32) staged STATE_ROWS rows at a time; lhs(a, r) is the float32
    left operand of the thread's row a."""
    for a in T.unroll(rows):
        for b in T.unroll(cols):
            acc[a, b] = T.float32(0)
    for r0 in T.serial(ceil_div(n_rows, STATE_ROWS)):
        stage_state_rows(state, src, c, h, r0 * STATE_ROWS, n_rows, n_cols, tid)
        for rr in T.serial(STATE_ROWS):
            if r0 * STATE_ROWS + rr < n_rows:
                for a in T.unroll(rows):
                    for b in T.unroll(cols):
                        if tx + TX * b < n_cols:
                            acc[a, b] = acc[a, b] + lhs(a, r0 * STATE_ROWS + rr) * state[rr * n_cols + tx + TX * b]


@T.macro
def key_logits_on_cuda_cores(acc, qs, q_row, ks, key_row, K, rows, cols, ty, tx):
    """acc[a, b] = q[ty + TY a] . k[tx + TX b] over the K dims, register-blocked (fp32 path)."""
    for a in T.unroll(rows):
        for b in T.unroll(cols):
            acc[a, b] = T.float32(0)
    for i in T.serial(K):
        for a in T.unroll(rows):
            for b in T.unroll(cols):
                acc[a, b] = acc[a, b] + T.Cast("float32", qs[(ty + TY * a) * q_row + i]) * ks[(tx + TX * b) * key_row + i]


def sub_block_offset(i):
    """First row of U_i's rows before sub-block i among those of all U_i: 16 * (1 + ... + i-1)."""
    return 8 * i * (i - 1)


def earlier_rows(sub_blocks: int) -> int:
    """Rows of all U_i before their sub-blocks; the diagonal rows (one per token) follow them."""
    return sub_block_offset(sub_blocks)


def u_row_of(i, j, sub_blocks):
    """First row of U_i's 16 rows of sub-block j <= i (j == i: the diagonal rows)."""
    return T.if_then_else(j < i, sub_block_offset(i) + j * 16, earlier_rows(sub_blocks) + i * 16)


@T.macro
def sub_block_rows_matmul(tid, fa, fb, fc, out, out_ld, x, x_ld, u, u_ld, sub_blocks, n_tiles):
    """out[t, n] = sum_{tau < 16 (i + 1)} x[t, tau] U_i[tau, n] for the rows t of each
    sub-block i (x masked to tau <= t)."""
    warp_tiles(tid, fa, fb, fc, out, out_ld, x, x_ld, u, u_ld, "row_major", sub_blocks, n_tiles,
               lambda i, n: i + 1, lambda i, n, kk: u_row_of(i, kk, sub_blocks) * u_ld + n * 16)


@T.macro
def sub_block_pairs_matmul(tid, fa, fb, fc, out, out_ld, pe, pe_ld, u, u_ld, sub_blocks, k_tiles):
    """out[t, tau] = sum_m pe[t, m] U_i[tau, m] for t in sub-block i and tau in sub-block
    j <= i (the 16 x 16 tile (i, j)); tiles with j > i get zeros."""
    warp_tiles(tid, fa, fb, fc, out, out_ld, pe, pe_ld, u, u_ld, "col_major", sub_blocks, sub_blocks,
               lambda i, j: T.if_then_else(j <= i, k_tiles, 0),
               lambda i, j, kk: u_row_of(i, j, sub_blocks) * u_ld + kk * 16)


def diagonal_decay_limit(io_dtype: str) -> float:
    """The largest decay G_rho - G_tau within a 16-token sub-block (and the largest |U| entry,
    e^L) for which the diagonal blocks go through the reference point on tensor cores: U's
    diagonal rows s'_tau exp(G_rho - G_tau) must stay finite in the 16-bit dtype (bf16 keeps
    fp32's range; fp16 ends at 65504 ~ e^11, so a term's product with X has room too), and
    exp(G_t - G_rho) >= e^-L stays a normal number (P times it may still be subnormal in
    fp16: an absolute error below 2^-24 per term of weights <= 1). Stronger gates take the
    pairwise loops."""
    return 60.0 if io_dtype == "bfloat16" else 8.0


def uses_tensor_cores(*, K: int, V: int, C: int, io_dtype: str) -> bool:
    """The key and value matmuls run on tensor cores (mma.sync m16n8k16, fp32 accumulate) for
    16-bit inputs whose [C, C] and [C, V] tiles deal out to the warps by rows
    (``warp_mma.warp_tiles``), two warps to a row of [C, C] tiles (the window's softmax);
    fp32 inputs stay on CUDA cores."""
    return io_dtype in ("bfloat16", "float16") and K % 16 == 0 and V % 16 == 0 \
        and deals_by_rows(C // 16, C // 16) and deals_by_rows(C // 16, V // 16) \
        and C // 16 == 2 * tiles_per_warp(C // 16, C // 16)


def slots_on_tensor_cores(*, K: int, V: int, M: int, C: int, io_dtype: str) -> bool:
    """The slot path runs on tensor cores when the key and value matmuls do and the [C, M]
    tiles deal out to the warps by rows: the chunk-start state matmuls (Q S_c and
    (P exp(G)) R_c, with the states stored in the 16-bit input dtype, ``state_dtype``) and the
    intra-chunk terms through a reference point every 16 tokens (module docstring)."""
    return uses_tensor_cores(K=K, V=V, C=C, io_dtype=io_dtype) and M % 16 == 0 \
        and deals_by_rows(C // 16, M // 16)


def state_dtype(*, K: int, V: int, M: int, C: int, io_dtype: str) -> str:
    """The dtype of the chunk-start states this kernel reads (``chunk_state_scan`` writes them)."""
    return io_dtype if slots_on_tensor_cores(K=K, V=V, M=M, C=C, io_dtype=io_dtype) else "float32"


def tile_layout(*, K: int, V: int, M: int, C: int, io_dtype: str) -> dict:
    """Whether the matmuls use tensor cores, and the row strides (elements) of the shared tiles.

    CUDA cores read keys down their columns: fp32, rows padded by a word. Tensor cores load
    16 x 16 tiles row by row: rows padded by 16 bytes (a multiple of it, as ldmatrix needs) spread
    a tile's 16 rows over all banks. With the states on tensor cores, S_c [K, M] and then R_c
    [M, V] are staged whole in 16 bits (``state_tile`` elements), and P exp(G) is an operand
    tile [C, M] (``pw_row``)."""
    if uses_tensor_cores(K=K, V=V, C=C, io_dtype=io_dtype):
        lay = dict(tensor_cores=True, key_dtype=io_dtype, key_row=K + 8, q_row=K + 8,
                   v_row=V + 8, x_row=C + 4, w_row=C + 8, prod_row=V + 4)
        if slots_on_tensor_cores(K=K, V=V, M=M, C=C, io_dtype=io_dtype):
            # the slot path's products are M wide too
            lay = dict(lay, slots_tc=True, s_row=M + 8, prod_row=max(V, M) + 4,
                       state_tile=max(K * (M + 8), M * (V + 8)), pw_row=M + 8,
                       u_rows=sub_block_rows(C), u_row=M + 8)
        else:
            lay = dict(lay, slots_tc=False, s_row=0, state_tile=0, pw_row=0, u_rows=0, u_row=0)
        operands = ("key_row", "q_row", "v_row", "w_row", "s_row", "pw_row", "u_row")
        check_row_strides(operand_rows=[lay[n] for n in operands if lay[n]],
                          output_rows=[lay["x_row"], lay["prod_row"]])
        return lay
    return dict(tensor_cores=False, slots_tc=False, key_dtype="float32", key_row=K + 1, q_row=K,
                v_row=V, x_row=C, w_row=0, prod_row=0, s_row=0, state_tile=0, pw_row=0,
                u_rows=0, u_row=0)


def key_value_bytes(lay: dict, C: int) -> int:
    """Bytes of the key and value tiles (16-bit, the tensor-core layout)."""
    return C * (lay["key_row"] + lay["v_row"]) * 2


def key_value_scope(lay: dict, *, C: int, M: int) -> str:
    """Where the key and value tiles live. TVM's barrier planner takes every dynamic shared
    buffer for one (they are merged later), so in the window loop the store of a key tile after
    the previous tile's P V read the value tile, and the store of the value tile after Q K^T
    read the keys, cost a barrier each; static buffers it tells apart: two barriers per key
    tile instead of four. Static shared memory is at most 48 KB a block, and TVM's CUDA runtime
    lets a block past 48 KB in all only when its dynamic part alone is 48 KB or more. With the
    slots on tensor cores the Q S_c matmul touches q, the product tile and the state tile, and
    G and s' are read before and after it, so the merged dynamic buffer holds all five apart;
    without, no such bound is known (K = V = 64, M = 16 allocates 44 KB), and the tiles stay
    dynamic (tests/test_cuda_codegen.py checks the sizes TVM allocates)."""
    if not lay["slots_tc"] or key_value_bytes(lay, C) > STATIC_SHARED_LIMIT:
        return "shared.dyn"
    dynamic_at_least = (C * lay["q_row"] * 2 + C * lay["prod_row"] * 4 + lay["state_tile"] * 2
                        + 2 * C * (M + 1) * 4)
    return "shared" if dynamic_at_least >= STATIC_SHARED_LIMIT else "shared.dyn"


def sub_block_rows(C: int) -> int:
    """Rows of all U_i together: U_i has a row per token before sub-block i (16 i), then the
    diagonal rows, one per token of the chunk (U_i's rows of sub-block i)."""
    return earlier_rows(C // 16) + C


def shared_bytes(*, K: int, V: int, M: int, C: int, io_dtype: str) -> int:
    """Shared memory of one block, dynamic and static (the kernel cannot run where this does
    not fit): the sum of its buffers, an upper bound of what TVM's merge of them allocates."""
    io = 4 if io_dtype == "float32" else 2
    lay = tile_layout(K=K, V=V, M=M, C=C, io_dtype=io_dtype)
    key = 4 if lay["key_dtype"] == "float32" else io
    state = lay["state_tile"] * io if lay["slots_tc"] else STATE_ROWS * max(M, V) * 4
    return C * (lay["q_row"] * io + lay["key_row"] * key + lay["v_row"] * io + 2 * (M + 1) * 4
                + M * 4 + lay["x_row"] * 4 + lay["w_row"] * io + lay["prod_row"] * 4
                + lay["pw_row"] * io) + state + lay["u_rows"] * lay["u_row"] * io \
        + (WARPS * 4 if lay["slots_tc"] else 0) + (4 * C * 4 if lay["tensor_cores"] else 0)


def chunk_attend(*, HQ: int, H: int, K: int, V: int, M: int, C: int, io_dtype: str,
                 gate_dtype: str, values_ahead: bool = False, rope_inside: bool = False):
    """Arguments: q, q_rot [total, HQ, K] (q_rot = q with RoPE, or q itself), k, k_rot
    [total, H, K], v [total, H, V], gcum (float32 gate prefix sums inside
    chunks) and s [total, H, M], cu_seqlens and chunk_offsets [N + 1], chunk_seq [NC],
    chunk_k [NC, H, K, M] and chunk_v [NC, H, M, V] (chunk-start states, in ``state_dtype``),
    the output o [total, HQ, V], then the window W, the softmax scale, and RoPE's flag and
    base theta. ``values_ahead``: the window loop loads each value tile a tile ahead in
    registers of its own (for long windows, ``kernel_plan.attend_role``). ``rope_inside``:
    q_rot and k_rot are q and k, rotated here as they are staged when the flag is set (without
    it the flag and theta are unused: q_rot and k_rot come rotated or RoPE is off)."""
    assert C % TY == 0 and C % TX == 0, "the chunk must be a multiple of 16 tokens"
    lay = tile_layout(K=K, V=V, M=M, C=C, io_dtype=io_dtype)
    tensor_cores, key_dtype, slots_tc = lay["tensor_cores"], lay["key_dtype"], lay["slots_tc"]
    assert not rope_inside or (tensor_cores and rotates_in_registers(width=K, rows=C)), \
        "RoPE inside the output pass needs its tensor-core staging, rows of K inside a warp"
    key_row, q_row, v_row, x_row = lay["key_row"], lay["q_row"], lay["v_row"], lay["x_row"]
    w_row, prod_row = max(lay["w_row"], 1), max(lay["prod_row"], 1)
    s_row, pw_row = max(lay["s_row"], 1), max(lay["pw_row"], 1)
    u_rows, u_row = lay["u_rows"], max(lay["u_row"], 1)
    sub_blocks = C // 16
    off_rows = earlier_rows(sub_blocks)
    limit = diagonal_decay_limit(io_dtype)
    kv_scope = key_value_scope(lay, C=C, M=M)
    g_lanes, s_lanes = vector_lanes("float32", M), vector_lanes(gate_dtype, M)

    def sub_block_of(r):
        """The i of U_i whose rows before sub-block i hold row r of them all."""
        return functools.reduce(operator.add, [T.if_then_else(r >= sub_block_offset(i), 1, 0)
                                               for i in range(2, sub_blocks)], T.int32(1))

    def g_before(gs, i, m):
        """G_rho[m] at the last token before sub-block i (0 before the chunk)."""
        return T.if_then_else(i >= 1, gs[T.max(16 * i - 1, 0) * (M + 1) + m], T.float32(0))

    def diagonal_factored(decay):
        """Whether the chunk's diagonal blocks go through the reference points (the block's
        largest decay, or a marker past the limit for an |s'| > 1, is within the limit)."""
        return decay[0] <= T.float32(limit)
    chunk_dtype = state_dtype(K=K, V=V, M=M, C=C, io_dtype=io_dtype)
    # the window on tensor cores: each warp's Q K^T tiles (key_tiles of one row of tiles) and
    # its softmax; two warps share a row block, and the second hands its part to the first
    key_tiles = tiles_per_warp(C // 16, C // 16) if tensor_cores else 1
    v_tiles = tiles_per_warp(C // 16, V // 16) if tensor_cores else 1  # of a warp's [C, V] tiles
    # the window starts from the read-out's accumulators: a warp's rows must be the same in the
    # [C, C] and the [C, V] grid of tiles (as C = 64, which uses_tensor_cores asks for, makes them)
    assert not tensor_cores or all(
        tile_row(32 * w, C // 16, C // 16) == tile_row(32 * w, C // 16, V // 16) for w in range(WARPS))

    def win_row(tid, r2):
        """Row t of the chunk of the lane's accumulators r2 = e // 2 of its window tiles."""
        return 16 * tile_row(tid, C // 16, C // 16) + acc_row(tid, 2 * r2)

    def key_tile_count(window, valid, p0, lo):
        """Tiles of C window keys the chunk's rows see, from the first key any row can see, lo."""
        return T.if_then_else(T.And(window > 0, valid > 0), (p0 + valid - lo + C - 1) // C, 0)

    def win_col(tid, f, e):
        """Key column, within a key tile, of the lane's accumulator e of its window tile f."""
        return 16 * (tile_col(tid, C // 16, C // 16) + f) + acc_col(tid, e // 4, e % 4)
    group = HQ // H
    rows = C // TY
    cols_m, cols_c, cols_v = ceil_div(M, TX), C // TX, ceil_div(V, TX)
    # accumulator fragments per warp: as many as the widest of the [C, *] matmuls needs
    fragments = max([tiles_per_warp(C // 16, n // 16) for n in (C, V) + ((M,) if slots_tc else ())]
                    if tensor_cores else [1])

    @T.prim_func(s_tir=True)
    def func(
        q_h: T.handle, qr_h: T.handle, k_h: T.handle, kr_h: T.handle, v_h: T.handle,
        gcum_h: T.handle, s_h: T.handle, cu_h: T.handle, choff_h: T.handle, chseq_h: T.handle,
        chunk_k_h: T.handle, chunk_v_h: T.handle, o_h: T.handle,
        window: T.int32, scale: T.float32, rope: T.int32, theta: T.float32,
    ):
        T.func_attr({"global_symbol": "chunk_attend_cuda", "tirx.noalias": True,
                     "nha.kernel": "chunk_attend_cuda"})
        total = T.int32()
        bounds = T.int32()  # N + 1
        NC = T.int32()
        q = T.match_buffer(q_h, (total, HQ, K), io_dtype)
        qr = T.match_buffer(qr_h, (total, HQ, K), io_dtype)
        k = T.match_buffer(k_h, (total, H, K), io_dtype)
        kr = T.match_buffer(kr_h, (total, H, K), io_dtype)
        v = T.match_buffer(v_h, (total, H, V), io_dtype)
        gcum = T.match_buffer(gcum_h, (total, H, M), "float32")
        s = T.match_buffer(s_h, (total, H, M), gate_dtype)
        cu = T.match_buffer(cu_h, (bounds,), "int32")
        choff = T.match_buffer(choff_h, (bounds,), "int32")
        chseq = T.match_buffer(chseq_h, (NC,), "int32")
        chunk_k = T.match_buffer(chunk_k_h, (NC, H, K, M), chunk_dtype)
        chunk_v = T.match_buffer(chunk_v_h, (NC, H, M, V), chunk_dtype)
        o = T.match_buffer(o_h, (total, HQ, V), io_dtype)

        for bx in T.thread_binding(NC * HQ, thread="blockIdx.x"):
            for tid in T.thread_binding(THREADS, thread="threadIdx.x"):
                with T.sblock("attend"):
                    T.reads(q[0:total, 0:HQ, 0:K], qr[0:total, 0:HQ, 0:K], k[0:total, 0:H, 0:K],
                            kr[0:total, 0:H, 0:K], v[0:total, 0:H, 0:V], gcum[0:total, 0:H, 0:M],
                            s[0:total, 0:H, 0:M], cu[0:bounds], choff[0:bounds], chseq[0:NC],
                            chunk_k[0:NC, 0:H, 0:K, 0:M], chunk_v[0:NC, 0:H, 0:M, 0:V])
                    T.writes(o[0:total, 0:HQ, 0:V])
                    qs = T.sblock_alloc_buffer((C * q_row,), io_dtype, scope="shared.dyn")
                    # ks, gs and ss are read down their columns: flat, with rows padded by one
                    # word so a half-warp hits 16 banks (a 2-D buffer would be compacted back)
                    ks = T.sblock_alloc_buffer((C * key_row,), key_dtype, scope=kv_scope)
                    vs = T.sblock_alloc_buffer((C * v_row,), io_dtype, scope=kv_scope)
                    gs = T.sblock_alloc_buffer((C * (M + 1),), "float32", scope="shared.dyn")
                    ss = T.sblock_alloc_buffer((C * (M + 1),), "float32", scope="shared.dyn")
                    ps = T.sblock_alloc_buffer((C, M), "float32", scope="shared.dyn")
                    xs = T.sblock_alloc_buffer((C * x_row,), "float32", scope="shared.dyn")
                    # the chunk-start states: rows at a time in fp32 for CUDA cores, or whole in
                    # 16 bits for tensor cores (S_c, then R_c in the same tile)
                    state = T.sblock_alloc_buffer((1,) if slots_tc else (STATE_ROWS * max(M, V),), "float32", scope="shared.dyn")
                    state16 = T.sblock_alloc_buffer((lay["state_tile"],) if slots_tc else (1,), io_dtype, scope="shared.dyn")
                    pw = T.sblock_alloc_buffer((C * pw_row,) if slots_tc else (1,), io_dtype, scope="shared.dyn")
                    u = T.sblock_alloc_buffer((u_rows * u_row,) if slots_tc else (1,), io_dtype, scope="shared.dyn")
                    # each warp's largest decay over a sub-block (see ``diagonal_decay_limit``)
                    warp_decay = T.sblock_alloc_buffer((WARPS,) if slots_tc else (1,), "float32", scope="shared.dyn")
                    # tensor cores: 16-bit weights (P, X) as the A operand, and the product tile
                    weights = T.sblock_alloc_buffer((C * w_row,) if tensor_cores else (1,), io_dtype, scope="shared.dyn")
                    product = T.sblock_alloc_buffer((C * prod_row,) if tensor_cores else (1,), "float32", scope="shared.dyn")
                    # a lane's mma.sync fragments: a and b tiles, and the accumulators of its tiles
                    fa = T.sblock_alloc_buffer((FRAG_A,), io_dtype, scope="local")
                    fb = T.sblock_alloc_buffer((FRAG_B,), io_dtype, scope="local")
                    fc = T.sblock_alloc_buffer((FRAG_C * fragments,), "float32", scope="local")
                    # the window on tensor cores: per lane the output of its rows (wo), their
                    # running max and partial sums, P as A fragments; and the rows' softmax
                    # statistics handed between warps
                    wo = T.sblock_alloc_buffer((FRAG_C * (V // 16) if tensor_cores else 1,), "float32", scope="local")
                    wm = T.sblock_alloc_buffer((2,), "float32", scope="local")
                    wl = T.sblock_alloc_buffer((2,), "float32", scope="local")
                    w_new = T.sblock_alloc_buffer((2,), "float32", scope="local")
                    w_scale = T.sblock_alloc_buffer((2,), "float32", scope="local")
                    w_other = T.sblock_alloc_buffer((2,), "float32", scope="local")
                    fp = T.sblock_alloc_buffer((FRAG_A * key_tiles,), io_dtype, scope="local")
                    fq = T.sblock_alloc_buffer((FRAG_A * (K // 16) if tensor_cores else 1,), io_dtype, scope="local")
                    row_stats = T.sblock_alloc_buffer((4 * C if tensor_cores else 1,), "float32", scope="shared.dyn")
                    # running softmax statistics of the thread's rows (equal across a row's lanes)
                    row_max = T.sblock_alloc_buffer((rows,), "float32", scope="local")
                    row_sum = T.sblock_alloc_buffer((rows,), "float32", scope="local")
                    tile_max = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    tile_sum = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    rescale = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    acc_m = T.sblock_alloc_buffer((rows, cols_m), "float32", scope="local")
                    acc_c = T.sblock_alloc_buffer((rows, cols_c), "float32", scope="local")
                    acc_v = T.sblock_alloc_buffer((rows, cols_v), "float32", scope="local")
                    g_row = T.sblock_alloc_buffer((rows, cols_m), "float32", scope="local")
                    p_row = T.sblock_alloc_buffer((rows,), "float32", scope="local")
                    s_col = T.sblock_alloc_buffer((max(cols_m, cols_c),), "float32", scope="local")
                    g_col = T.sblock_alloc_buffer((max(cols_m, cols_c),), "float32", scope="local")
                    u_vals = T.sblock_alloc_buffer((max(ceil_div(off_rows * M, THREADS), 1),), "float32", scope="local")
                    diag_vals = T.sblock_alloc_buffer((ceil_div(C * M, THREADS),), "float32", scope="local")
                    decay = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    row_decay = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    pe_vals = T.sblock_alloc_buffer((rows, cols_m), "float32", scope="local")
                    # a thread's share of a [C, K or V] tile in 16-byte vectors (tensor cores)
                    # (key_vec takes value tiles too, unless they are loaded ahead into value_vec)
                    key_vec = T.sblock_alloc_buffer((vector_registers(C, max(K, V), VEC),) if tensor_cores else (1,), io_dtype, scope="local")
                    value_vec = T.sblock_alloc_buffer((vector_registers(C, V, VEC),) if tensor_cores else (1,), io_dtype, scope="local")
                    q_vec = T.sblock_alloc_buffer((vector_registers(C, K, VEC),) if tensor_cores else (1,), io_dtype, scope="local")
                    # RoPE inside: a row's partner elements, two 16-bit values to a word as shuffled
                    partner = T.sblock_alloc_buffer((VEC // 2,) if rope_inside else (1,), "uint32", scope="local")
                    g_vec = T.sblock_alloc_buffer((vector_registers(C, M, g_lanes),), "float32", scope="local")
                    s_vec = T.sblock_alloc_buffer((vector_registers(C, M, s_lanes),), gate_dtype, scope="local")
                    state_vec = T.sblock_alloc_buffer((max(vector_registers(K, M, VEC), vector_registers(M, V, VEC)),) if slots_tc else (1,),
                                                      io_dtype, scope="local")
                    # with long windows the later chunks take the longest: run them first, so the
                    # last wave is short ones (with short windows the order costs at W = 64;
                    # BENCHMARKS.md). Spelled NC - 1 - bx // HQ: TVM 0.27 miscompiled
                    # (NC HQ - 1 - bx) // HQ
                    c: T.let[T.int32] = T.if_then_else(window >= 2 * C, NC - 1 - bx // HQ, bx // HQ)
                    hq: T.let[T.int32] = bx % HQ
                    h: T.let[T.int32] = hq // group
                    ty: T.let[T.int32] = tid // TX
                    tx: T.let[T.int32] = tid % TX
                    warp: T.let[T.int32] = tid // 32
                    # a padding chunk (sequence N) computes on zeros and stores nothing:
                    # barriers cannot sit under a branch, so every block runs the same code
                    n: T.let[T.int32] = T.min(chseq[c], bounds - 2)
                    start: T.let[T.int32] = cu[n]
                    p0: T.let[T.int32] = (c - choff[n]) * C  # position of the chunk's first token
                    valid: T.let[T.int32] = T.if_then_else(chseq[c] < bounds - 1, T.min(C, cu[n + 1] - start - p0), 0)

                    # ---- stage q, the shifted k' and v', s', G and S_c ----
                    # (staging loops clamp their index instead of branching: a few threads
                    # store the same value twice, and no store sits under a condition, where
                    # TVM could not place the barrier a later reuse of the buffer needs; all
                    # loads go out before the first store, so the block waits for one latency)
                    if tensor_cores:
                        load_rows(q_vec, C, q, start + p0, hq, K, total, tid)
                        load_rows(key_vec, C, k, start + p0 - window, h, K, total, tid)
                        load_rows(value_vec, C, v, start + p0 - window, h, V, total, tid)
                    load_vectors(g_vec, g_lanes, C, gcum, start + p0, h, M, total, tid)
                    load_vectors(s_vec, s_lanes, C, s, start + p0 - window, h, M, total, tid)
                    if slots_tc:
                        load_state_rows(state_vec, chunk_k, c, h, K, M, tid)
                    if tensor_cores:
                        store_rows(qs, q_row, C, q_vec, K, 0, valid, tid)
                        store_rows(ks, key_row, C, key_vec, K, window - p0, valid, tid)
                        store_rows(vs, v_row, C, value_vec, V, window - p0, valid, tid)
                    else:
                        for j in T.unroll(ceil_div(C * K, THREADS)):
                            r: T.let[T.int32] = T.min(j * THREADS + tid, C * K - 1) // K
                            i: T.let[T.int32] = T.min(j * THREADS + tid, C * K - 1) % K
                            qs[r * q_row + i] = T.if_then_else(r < valid, q[start + p0 + r, hq, i], T.Cast(io_dtype, 0))
                            ks[r * key_row + i] = T.if_then_else(r < valid and p0 + r >= window,
                                                                 T.Cast(key_dtype, k[start + p0 + r - window, h, i]), T.Cast(key_dtype, 0))
                        for j in T.unroll(ceil_div(C * V, THREADS)):
                            r: T.let[T.int32] = T.min(j * THREADS + tid, C * V - 1) // V
                            e: T.let[T.int32] = T.min(j * THREADS + tid, C * V - 1) % V
                            vs[r * v_row + e] = T.if_then_else(r < valid and p0 + r >= window,
                                                      v[start + p0 + r - window, h, e], T.Cast(io_dtype, 0))
                    store_padded_rows(gs, M + 1, C, g_vec, g_lanes, M, 0, valid, tid)
                    store_padded_rows(ss, M + 1, C, s_vec, s_lanes, M, window - p0, valid, tid)
                    if slots_tc:
                        store_rows(state16, s_row, K, state_vec, M, 0, K, tid)

                    # ---- slot logits, inter-chunk part: (Q S_c) * exp(G) ----
                    if slots_tc:
                        # U's diagonal rows, s'_tau exp(G_rho - G_tau) for tau in sub-block i (a
                        # factor >= 1, capped at e^limit), and the chunk's largest decay from a
                        # reference point over its real tokens: within the limit, the diagonal
                        # blocks go through the matmuls too; past it, through the pairwise loops.
                        # (Read before the matmul and stored after it: no barrier of their own.)
                        decay[0] = T.float32(0)
                        for j in T.unroll(ceil_div(C * M, THREADS)):
                            r: T.let[T.int32] = T.min(j * THREADS + tid, C * M - 1) // M
                            m: T.let[T.int32] = T.min(j * THREADS + tid, C * M - 1) % M
                            # the decay of row r from its reference point (none past the last token)
                            row_decay[0] = T.Select(r < valid, g_before(gs, r // 16, m) - gs[r * (M + 1) + m], T.float32(0))
                            diag_vals[j] = ss[r * (M + 1) + m] * T.exp(T.min(row_decay[0], T.float32(limit)))
                            # a row past the limit, or a write strength outside [0, 1] (a caller's
                            # s: large ones lose digits in the 16-bit diagonal terms, and could
                            # take U past e^limit)
                            decay[0] = T.max(decay[0], T.Select(T.fabs(ss[r * (M + 1) + m]) > T.float32(1),
                                                                T.float32(2 * limit), row_decay[0]))
                        for k in T.unroll(5):
                            decay[0] = T.max(decay[0], T.tvm_warp_shuffle(
                                T.tvm_warp_activemask(), decay[0], (tid % 32) ^ (16 >> k), 32, 32))
                        warp_matmul(tid, fa, fb, fc, product, prod_row, qs, q_row, state16, s_row, "row_major", C // 16, M // 16, K // 16)
                        warp_decay[warp] = decay[0]  # every lane stores the same value
                        for j in T.unroll(ceil_div(C * M, THREADS)):
                            # (clamped: past the limit the rows are dropped, and must stay finite)
                            u[(off_rows + T.min(j * THREADS + tid, C * M - 1) // M) * u_row
                              + T.min(j * THREADS + tid, C * M - 1) % M] = T.Cast(io_dtype, T.max(T.min(
                                  diag_vals[j], T.float32(math.exp(limit))), T.float32(-math.exp(limit))))
                        for a in T.unroll(rows):
                            for b in T.unroll(cols_m):
                                acc_m[a, b] = product[(ty + TY * a) * prod_row + tx + TX * b]
                        # R_c takes the tile (stored before the read-out): its loads overlap
                        # the intra-chunk work and the softmax below
                        load_state_rows(state_vec, chunk_v, c, h, M, V, tid)
                    else:
                        state_rows_matmul(acc_m, lambda a, i: T.Cast("float32", qs[(ty + TY * a) * q_row + i]),
                                          state, chunk_k, c, h, K, M, rows, cols_m, tx, tid)
                    # ---- intra-chunk part: X = Q k'^T (read only where tau <= t), then the
                    # pairwise decays ----
                    if tensor_cores:
                        warp_matmul(tid, fa, fb, fc, xs, x_row, qs, q_row, ks, key_row, "col_major", C // 16, C // 16, K // 16)
                    else:
                        key_logits_on_cuda_cores(acc_c, qs, q_row, ks, key_row, K, rows, cols_c, ty, tx)
                        for a in T.unroll(rows):
                            for b in T.unroll(cols_c):
                                xs[(ty + TY * a) * x_row + tx + TX * b] = acc_c[a, b]
                    if slots_tc:
                        # sub-blocks: X in 16 bits (tau <= t; the diagonal blocks zeroed when
                        # the gates are past the limit), and U_i's rows before sub-block i
                        # (whose last token before it is rho_i = 16 i - 1) for the matmuls below
                        # (reads into registers first, stores after: a store between two reads of
                        # the merged dynamic shared memory would cost a barrier each)
                        for a in T.unroll(rows):
                            for b in T.unroll(cols_c):
                                acc_c[a, b] = xs[(ty + TY * a) * x_row + tx + TX * b]
                        for j in T.unroll(ceil_div(off_rows * M, THREADS)):
                            r: T.let[T.int32] = T.min(j * THREADS + tid, off_rows * M - 1) // M
                            m: T.let[T.int32] = T.min(j * THREADS + tid, off_rows * M - 1) % M
                            ib: T.let[T.int32] = sub_block_of(r)
                            tau: T.let[T.int32] = r - sub_block_offset(ib)
                            u_vals[j] = ss[tau * (M + 1) + m] * T.exp(g_before(gs, ib, m) - gs[tau * (M + 1) + m])
                        decay[0] = warp_decay[0]
                        for w in T.unroll(1, WARPS):
                            decay[0] = T.max(decay[0], warp_decay[w])
                        for a in T.unroll(rows):
                            for b in T.unroll(cols_c):
                                weights[(ty + TY * a) * w_row + tx + TX * b] = T.Cast(io_dtype, T.Select(
                                    b < a or (b == a and tx <= ty and diagonal_factored(decay)), acc_c[a, b], T.float32(0)))
                        for j in T.unroll(ceil_div(off_rows * M, THREADS)):
                            u[T.min(j * THREADS + tid, off_rows * M - 1) // M * u_row
                              + T.min(j * THREADS + tid, off_rows * M - 1) % M] = T.Cast(io_dtype, u_vals[j])
                        # A[t] += exp(G_t - G_rho) * sum_{tau <= t} X[t, tau] U_i[tau] for t in sub-block i
                        sub_block_rows_matmul(tid, fa, fb, fc, product, prod_row, weights, w_row, u, u_row, sub_blocks, M // 16)
                    # the pairwise form (on tensor cores: of the diagonal blocks, when the gates
                    # are past the limit), register-blocked: per key tau each thread loads s'_tau
                    # and G_tau of its columns once for all its rows; rows of an earlier 16-token
                    # block than tau's are skipped at compile time (or, with sub-blocks on tensor
                    # cores, taken from the product above), the diagonal block is masked
                    # (columns past M are clamped and never stored)
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_m):
                            g_row[a, b] = gs[(ty + TY * a) * (M + 1) + T.min(tx + TX * b, M - 1)]
                            acc_m[a, b] = acc_m[a, b] * T.exp(g_row[a, b])
                            if slots_tc:
                                acc_m[a, b] = acc_m[a, b] + T.exp(g_row[a, b] - g_before(gs, a, tx + TX * b)) \
                                    * product[(ty + TY * a) * prod_row + tx + TX * b]
                    if not slots_tc or not diagonal_factored(decay):
                        for block in T.unroll(rows):
                            for tt in T.serial(TY):
                                for b in T.unroll(cols_m):
                                    s_col[b] = ss[(block * TY + tt) * (M + 1) + T.min(tx + TX * b, M - 1)]
                                    g_col[b] = gs[(block * TY + tt) * (M + 1) + T.min(tx + TX * b, M - 1)]
                                for a in T.unroll(rows):
                                    if a == block or (a > block and not slots_tc):
                                        for b in T.unroll(cols_m):
                                            # a select, not a branch: the exponent of a masked
                                            # pair may overflow, and is dropped
                                            acc_m[a, b] = acc_m[a, b] + T.Select(
                                                block * TY + tt <= ty + TY * a,
                                                xs[(ty + TY * a) * x_row + block * TY + tt] * s_col[b] * T.exp(g_row[a, b] - g_col[b]),
                                                T.float32(0))
                    # ---- softmax over the M slots (the window joins online below); a row's
                    # 16 threads are 16 lanes of one warp, so its statistics are shuffles ----
                    for a in T.unroll(rows):
                        row_max[a] = T.float32(NEG)
                        for b in T.unroll(cols_m):
                            acc_m[a, b] = T.if_then_else(tx + TX * b < M, acc_m[a, b] * scale, T.float32(NEG))
                            row_max[a] = T.max(row_max[a], acc_m[a, b])
                        for k in T.unroll(LOG2_TX):
                            row_max[a] = T.max(row_max[a], T.tvm_warp_shuffle(
                                T.tvm_warp_activemask(), row_max[a], tx ^ (TX >> (k + 1)), TX, 32))
                        row_sum[a] = T.float32(0)
                        for b in T.unroll(cols_m):
                            acc_m[a, b] = T.exp(acc_m[a, b] - row_max[a])
                            row_sum[a] = row_sum[a] + acc_m[a, b]
                        for k in T.unroll(LOG2_TX):
                            row_sum[a] = row_sum[a] + T.tvm_warp_shuffle(
                                T.tvm_warp_activemask(), row_sum[a], tx ^ (TX >> (k + 1)), TX, 32)
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_m):
                            if tx + TX * b < M:
                                ps[ty + TY * a, tx + TX * b] = acc_m[a, b]

                    # ---- slot read-out: X[t, tau] = sum_m P s'_tau exp(G_t - G_tau) ----
                    if slots_tc:
                        # through the reference points (tau in sub-block j <= i, t's):
                        # X[t, tau] = sum_m (P exp(G_t - G_rho))[t, m] U_i[tau, m]
                        for a in T.unroll(rows):
                            for b in T.unroll(cols_m):
                                pe_vals[a, b] = acc_m[a, b] * T.exp(g_row[a, b] - g_before(gs, a, tx + TX * b))
                        for a in T.unroll(rows):
                            for b in T.unroll(cols_m):
                                pw[(ty + TY * a) * pw_row + tx + TX * b] = T.Cast(io_dtype, pe_vals[a, b])
                        sub_block_pairs_matmul(tid, fa, fb, fc, xs, x_row, pw, pw_row, u, u_row, sub_blocks, M // 16)
                    # the pairwise form, register-blocked over m like the logits: tau = tx + 16 b
                    # <= t = ty + 16 a holds for every b < a, for b == a where tx <= ty, never
                    # for b > a (with sub-blocks on tensor cores only b == a, past the limit)
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_c):
                            acc_c[a, b] = T.float32(0)
                    if not slots_tc or not diagonal_factored(decay):
                        for m in T.serial(M):
                            for a in T.unroll(rows):
                                p_row[a] = ps[ty + TY * a, m]
                                g_row[a, 0] = gs[(ty + TY * a) * (M + 1) + m]
                            for b in T.unroll(cols_c):
                                s_col[b] = ss[(tx + TX * b) * (M + 1) + m]
                                g_col[b] = gs[(tx + TX * b) * (M + 1) + m]
                            for a in T.unroll(rows):
                                for b in T.unroll(cols_c):
                                    if b == a or (b < a and not slots_tc):
                                        acc_c[a, b] = acc_c[a, b] + T.Select(
                                            tx + TX * b <= ty + TY * a,
                                            p_row[a] * s_col[b] * T.exp(g_row[a, 0] - g_col[b]), T.float32(0))
                    if slots_tc:
                        for a in T.unroll(rows):
                            for b in T.unroll(cols_c):
                                if b <= a:
                                    acc_c[a, b] = acc_c[a, b] + T.Select(
                                        b < a or (tx <= ty and diagonal_factored(decay)),
                                        xs[(ty + TY * a) * x_row + tx + TX * b], T.float32(0))
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_c):
                            if tensor_cores:
                                weights[(ty + TY * a) * w_row + tx + TX * b] = T.Cast(io_dtype, acc_c[a, b])
                            else:
                                xs[(ty + TY * a) * x_row + tx + TX * b] = acc_c[a, b]
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_m):
                            if tx + TX * b < M:
                                acc_m[a, b] = acc_m[a, b] * T.exp(gs[(ty + TY * a) * (M + 1) + tx + TX * b])
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_m):
                            if tx + TX * b < M:
                                if slots_tc:
                                    pw[(ty + TY * a) * pw_row + tx + TX * b] = T.Cast(io_dtype, acc_m[a, b])
                                else:
                                    ps[ty + TY * a, tx + TX * b] = acc_m[a, b]
                    if slots_tc:
                        store_rows(state16, v_row, M, state_vec, V, 0, M, tid)
                    lo: T.let[T.int32] = T.max(0, p0 - window + 1)  # first window key any row can see
                    if tensor_cores:
                        # the window's Q (RoPE'd) and first key tile (and value tile, when values
                        # go ahead): loads in flight over the read-out
                        load_rows(q_vec, C, qr, start + p0, hq, K, total, tid)
                        load_rows(key_vec, C, kr, start + lo, h, K, total, tid)
                        if values_ahead:
                            load_rows(value_vec, C, v, start + lo, h, V, total, tid)
                    # O = (P exp(G)) R_c + X v' (on tensor cores one sum of two matmuls)
                    if slots_tc:
                        warp_matmul(tid, fa, fb, fc, product, prod_row, pw, pw_row, state16, v_row, "row_major", C // 16, V // 16, M // 16,
                                    store=False)
                        warp_matmul(tid, fa, fb, fc, product, prod_row, weights, w_row, vs, v_row, "row_major", C // 16, V // 16, C // 16,
                                    fill=False, store=False)
                        # the window's output starts from these accumulators: the warps of a row
                        # block hold its rows in both grids, each the slot part of its own
                        # columns (the window's two parts add up linearly)
                        for nt in T.unroll(V // 16):
                            for e in T.unroll(FRAG_C):
                                wo[FRAG_C * nt + e] = T.Select(
                                    nt // v_tiles == tile_col(tid, C // 16, V // 16) // v_tiles,
                                    fc[FRAG_C * (nt % v_tiles) + e], T.float32(0))
                    else:
                        state_rows_matmul(acc_v, lambda a, m: ps[ty + TY * a, m],
                                          state, chunk_v, c, h, M, V, rows, cols_v, tx, tid)
                        if tensor_cores:
                            warp_matmul(tid, fa, fb, fc, product, prod_row, weights, w_row, vs, v_row, "row_major", C // 16, V // 16, C // 16)
                            for a in T.unroll(rows):
                                for b in T.unroll(cols_v):
                                    acc_v[a, b] = acc_v[a, b] + product[(ty + TY * a) * prod_row + tx + TX * b]
                        else:
                            for tau in T.serial(C):
                                for a in T.unroll(rows):
                                    for b in T.unroll(cols_v):
                                        if tx + TX * b < V:
                                            acc_v[a, b] = acc_v[a, b] + xs[(ty + TY * a) * x_row + tau] * T.Cast("float32", vs[tau * v_row + tx + TX * b])

                    # ---- window keys j in (p_t - W, p_t], RoPE'd, in tiles of C keys, from lo ----
                    if tensor_cores:
                        # Each warp takes the 16 rows of its Q K^T tiles and their key columns of
                        # every key tile, and runs its own online softmax in the mma accumulators:
                        # per row of the lane a running max wm and a partial sum wl (its own
                        # columns), and the rows' output wo [16, V], which P V adds to with P
                        # straight from the accumulators. Both warps of a row block start from
                        # the slot part's max; with the slot path on tensor cores each starts
                        # from the slot part of the columns its read-out tiles held, otherwise
                        # the first from all of it (through shared memory) and the other from
                        # nothing. The second hands its part to the first at the end.
                        for a in T.unroll(rows):
                            if not slots_tc:
                                for b in T.unroll(cols_v):
                                    product[(ty + TY * a) * prod_row + tx + TX * b] = acc_v[a, b]
                            row_stats[ty + TY * a] = row_max[a]  # every lane of the row: the same value
                            row_stats[C + ty + TY * a] = row_sum[a]
                        if rope_inside:
                            if rope != 0 and key_tile_count(window, valid, p0, lo) > 0:  # (block-uniform)
                                rotate_rows(q_vec, partner, C, K, p0, theta, tid)
                        store_rows(qs, q_row, C, q_vec, K, 0, valid, tid)
                        # each tile's loads go out ahead of their use (the first key tile's with
                        # Q's, above). One register buffer, always in flight: a value tile's
                        # before Q K^T and the softmax, the next key tile's before P V. With
                        # values_ahead (long windows) a second: the next key tile's over Q K^T,
                        # the softmax and P V, the next value tile's over P V and the next
                        # tile's Q K^T and softmax (the last tile's next loads are wasted, and
                        # a branch around them lost the gain: BENCHMARKS.md)
                        # the warp's rows of Q stay in registers as A fragments for every key tile
                        for kk in T.unroll(K // 16):
                            load_a(tid, fq, FRAG_A * kk, qs, q_row, 16 * tile_row(tid, C // 16, C // 16) * q_row + 16 * kk)
                        # the window's logits and maxima are in base 2 (scaled by log2 e): each
                        # exponential is then one exp2 (MUFU.EX2), where expf costs a range reduction
                        for r2 in T.unroll(2):
                            wm[r2] = row_stats[win_row(tid, r2)] * T.float32(LOG2E)
                            wl[r2] = T.Select(tile_col(tid, C // 16, C // 16) == 0 and tid % 4 == 0,
                                              row_stats[C + win_row(tid, r2)], T.float32(0))
                        if not slots_tc:  # (with slots_tc, wo holds the slot part already)
                            for nt in T.unroll(V // 16):
                                for e in T.unroll(FRAG_C):
                                    wo[FRAG_C * nt + e] = T.Select(
                                        tile_col(tid, C // 16, C // 16) == 0,
                                        product[win_row(tid, e % 4 // 2) * prod_row + 16 * nt + acc_col(tid, e // 4, e % 4)],
                                        T.float32(0))
                        for kt in T.serial(key_tile_count(window, valid, p0, lo)):
                            if rope_inside:
                                if rope != 0:
                                    rotate_rows(key_vec, partner, C, K, lo + kt * C, theta, tid)
                            store_rows(ks, key_row, C, key_vec, K, 0, p0 + valid - lo - kt * C, tid)
                            if values_ahead:
                                load_rows(key_vec, C, kr, start + lo + (kt + 1) * C, h, K, total, tid)
                            else:
                                load_rows(key_vec, C, v, start + lo + kt * C, h, V, total, tid)
                            # S = Q K^T of the warp's tiles, left in the accumulators
                            for e in T.unroll(FRAG_C * key_tiles):
                                fc[e] = T.float32(0)
                            for kk in T.unroll(K // 16):
                                for f in T.unroll(key_tiles):
                                    load_b(tid, fb, ks, key_row, "col_major", 16 * (tile_col(tid, C // 16, C // 16) + f) * key_row + 16 * kk)
                                    mma_tile(fq, FRAG_A * kk, fb, fc, FRAG_C * f)
                            for f in T.unroll(key_tiles):
                                for e in T.unroll(FRAG_C):
                                    # key position lo + kt C + col is in the window of row t iff
                                    # p_t - W < key <= p_t (and the row is a real token)
                                    fc[FRAG_C * f + e] = T.Select(
                                        lo + kt * C + win_col(tid, f, e) <= p0 + win_row(tid, e % 4 // 2)
                                        and lo + kt * C + win_col(tid, f, e) > p0 + win_row(tid, e % 4 // 2) - window
                                        and win_row(tid, e % 4 // 2) < valid,
                                        fc[FRAG_C * f + e] * (scale * T.float32(LOG2E)), T.float32(NEG))
                            for r2 in T.unroll(2):
                                w_new[r2] = wm[r2]
                            for f in T.unroll(key_tiles):
                                for e in T.unroll(FRAG_C):
                                    w_new[e % 4 // 2] = T.max(w_new[e % 4 // 2], fc[FRAG_C * f + e])
                            for r2 in T.unroll(2):
                                for k in T.unroll(2):  # a row's four lanes
                                    w_new[r2] = T.max(w_new[r2], T.tvm_warp_shuffle(
                                        T.tvm_warp_activemask(), w_new[r2], (tid % 32) ^ (1 << k), 32, 32))
                                w_scale[r2] = T.exp2(wm[r2] - w_new[r2])
                                wm[r2] = w_new[r2]
                                wl[r2] = wl[r2] * w_scale[r2]
                            for f in T.unroll(key_tiles):
                                for e in T.unroll(FRAG_C):
                                    fc[FRAG_C * f + e] = T.exp2(fc[FRAG_C * f + e] - wm[e % 4 // 2])
                                    wl[e % 4 // 2] = wl[e % 4 // 2] + fc[FRAG_C * f + e]
                                    # the accumulators of a tile are the lane's A fragment of it
                                    fp[FRAG_A * f + e] = T.Cast(io_dtype, fc[FRAG_C * f + e])
                            for nt in T.unroll(V // 16):
                                for e in T.unroll(FRAG_C):
                                    wo[FRAG_C * nt + e] = wo[FRAG_C * nt + e] * w_scale[e % 4 // 2]
                            if values_ahead:
                                store_rows(vs, v_row, C, value_vec, V, 0, p0 + valid - lo - kt * C, tid)
                                load_rows(value_vec, C, v, start + lo + (kt + 1) * C, h, V, total, tid)
                            else:
                                store_rows(vs, v_row, C, key_vec, V, 0, p0 + valid - lo - kt * C, tid)
                                load_rows(key_vec, C, kr, start + lo + (kt + 1) * C, h, K, total, tid)
                            # wo += P V over the warp's keys
                            for f in T.unroll(key_tiles):
                                for nt in T.unroll(V // 16):
                                    load_b(tid, fb, vs, v_row, "row_major", 16 * (tile_col(tid, C // 16, C // 16) + f) * v_row + 16 * nt)
                                    mma_tile(fp, FRAG_A * f, fb, wo, FRAG_C * nt)
                        for r2 in T.unroll(2):
                            for k in T.unroll(2):
                                wl[r2] = wl[r2] + T.tvm_warp_shuffle(
                                    T.tvm_warp_activemask(), wl[r2], (tid % 32) ^ (1 << k), 32, 32)
                        # the second warp of each row block hands its part to the first (the
                        # explicit barriers: with no key tile the loop's are not there, and the
                        # hand-over must not be planned inside the branches)
                        T.evaluate(T.tvm_storage_sync("shared"))
                        if tile_col(tid, C // 16, C // 16) != 0:
                            for nt in T.unroll(V // 16):
                                for e in T.unroll(FRAG_C):
                                    product[win_row(tid, e % 4 // 2) * prod_row + 16 * nt + acc_col(tid, e // 4, e % 4)] = wo[FRAG_C * nt + e]
                            for r2 in T.unroll(2):
                                row_stats[2 * C + win_row(tid, r2)] = wm[r2]
                                row_stats[3 * C + win_row(tid, r2)] = wl[r2]
                        T.evaluate(T.tvm_storage_sync("shared"))
                        if tile_col(tid, C // 16, C // 16) == 0:
                            for r2 in T.unroll(2):
                                w_new[r2] = T.max(wm[r2], row_stats[2 * C + win_row(tid, r2)])
                                wl[r2] = wl[r2] * T.exp2(wm[r2] - w_new[r2]) \
                                    + row_stats[3 * C + win_row(tid, r2)] * T.exp2(row_stats[2 * C + win_row(tid, r2)] - w_new[r2])
                                # the weights of this warp's part and of the other's in the output
                                w_scale[r2] = T.exp2(wm[r2] - w_new[r2]) / wl[r2]
                                w_other[r2] = T.exp2(row_stats[2 * C + win_row(tid, r2)] - w_new[r2]) / wl[r2]
                            for nt in T.unroll(V // 16):
                                for hh in T.unroll(2):
                                    for r2 in T.unroll(2):
                                        if win_row(tid, r2) < valid:
                                            for e in T.vectorized(2):
                                                o[start + p0 + win_row(tid, r2), hq, 16 * nt + acc_col(tid, hh, e)] = T.Cast(
                                                    io_dtype, wo[FRAG_C * nt + 4 * hh + 2 * r2 + e] * w_scale[r2]
                                                    + product[win_row(tid, r2) * prod_row + 16 * nt + acc_col(tid, hh, e)] * w_other[r2])
                    else:
                        for j in T.unroll(ceil_div(C * K, THREADS)):
                            r: T.let[T.int32] = T.min(j * THREADS + tid, C * K - 1) // K
                            i: T.let[T.int32] = T.min(j * THREADS + tid, C * K - 1) % K
                            qs[r * q_row + i] = T.if_then_else(r < valid, qr[start + p0 + r, hq, i], T.Cast(io_dtype, 0))
                        for kt in T.serial(key_tile_count(window, valid, p0, lo)):
                            for j in T.unroll(ceil_div(C * K, THREADS)):
                                r: T.let[T.int32] = T.min(j * THREADS + tid, C * K - 1) // K
                                i: T.let[T.int32] = T.min(j * THREADS + tid, C * K - 1) % K
                                ks[r * key_row + i] = T.if_then_else(lo + kt * C + r < p0 + valid,
                                                                     T.Cast(key_dtype, kr[start + lo + kt * C + r, h, i]), T.Cast(key_dtype, 0))
                            for j in T.unroll(ceil_div(C * V, THREADS)):
                                r: T.let[T.int32] = T.min(j * THREADS + tid, C * V - 1) // V
                                e: T.let[T.int32] = T.min(j * THREADS + tid, C * V - 1) % V
                                vs[r * v_row + e] = T.if_then_else(lo + kt * C + r < p0 + valid,
                                                          v[start + lo + kt * C + r, h, e], T.Cast(io_dtype, 0))
                            key_logits_on_cuda_cores(acc_c, qs, q_row, ks, key_row, K, rows, cols_c, ty, tx)
                            for a in T.unroll(rows):
                                for b in T.unroll(cols_c):
                                    # key position lo + kt C + col is in the window of row t iff
                                    # p_t - W < key <= p_t (and the row is a real token)
                                    acc_c[a, b] = T.if_then_else(
                                        lo + kt * C + tx + TX * b <= p0 + ty + TY * a
                                        and lo + kt * C + tx + TX * b > p0 + ty + TY * a - window
                                        and ty + TY * a < valid,
                                        acc_c[a, b] * scale, T.float32(NEG))
                            for a in T.unroll(rows):
                                tile_max[0] = row_max[a]
                                for b in T.unroll(cols_c):
                                    tile_max[0] = T.max(tile_max[0], acc_c[a, b])
                                for k in T.unroll(LOG2_TX):
                                    tile_max[0] = T.max(tile_max[0], T.tvm_warp_shuffle(
                                        T.tvm_warp_activemask(), tile_max[0], tx ^ (TX >> (k + 1)), TX, 32))
                                rescale[0] = T.exp(row_max[a] - tile_max[0])
                                row_max[a] = tile_max[0]
                                tile_sum[0] = T.float32(0)
                                for b in T.unroll(cols_c):
                                    acc_c[a, b] = T.exp(acc_c[a, b] - row_max[a])
                                    tile_sum[0] = tile_sum[0] + acc_c[a, b]
                                for k in T.unroll(LOG2_TX):
                                    tile_sum[0] = tile_sum[0] + T.tvm_warp_shuffle(
                                        T.tvm_warp_activemask(), tile_sum[0], tx ^ (TX >> (k + 1)), TX, 32)
                                row_sum[a] = row_sum[a] * rescale[0] + tile_sum[0]
                                for b in T.unroll(cols_v):
                                    acc_v[a, b] = acc_v[a, b] * rescale[0]
                            for a in T.unroll(rows):
                                for b in T.unroll(cols_c):
                                    xs[(ty + TY * a) * x_row + tx + TX * b] = acc_c[a, b]
                            for col in T.serial(C):
                                for a in T.unroll(rows):
                                    for b in T.unroll(cols_v):
                                        if tx + TX * b < V:
                                            acc_v[a, b] = acc_v[a, b] + xs[(ty + TY * a) * x_row + col] * T.Cast("float32", vs[col * v_row + tx + TX * b])
                        for a in T.unroll(rows):
                            for b in T.unroll(cols_v):
                                if ty + TY * a < valid and tx + TX * b < V:
                                    o[start + p0 + ty + TY * a, hq, tx + TX * b] = T.Cast(io_dtype, acc_v[a, b] / row_sum[a])

    return func
