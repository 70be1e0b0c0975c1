"""Chunked state pass in one kernel (GPU): the additions and the carry over chunks together.

``chunk_state_delta`` + ``chunk_state_scan`` write each chunk's float32 addition to global memory
and read it back (about 1.07 GB at T = 32768, H = 16, K = V = 128, M = 64). Here one thread block
owns one 16-slot tile of one state of one (sequence, kv head) and walks that sequence's chunks in
order, the running state in its mma accumulators:

    keys:   S [K, 16]  <- S * exp(G_last) (per slot, a column)  + k'^T w
    values: R [16, V]  <- R * exp(G_last) (per slot, a row)     + w^T v'

with w[tau, m] = s'_tau[m] exp(G_last[m] - G_tau[m]) over the chunk's C tokens (spec, "Chunked
form"). Before each chunk's addition the block stores the chunk-start state (``state_dtype``,
what the output pass reads); after the last, the float32 final state. The chunks go in pairs:
both tiles in shared memory at once, the two additions side by side (independent mma chains,
two barriers a pair), and the next pair's tiles and gates in flight in registers meanwhile
(the gates of w in vectors of neighbouring slots: issuing the scalar loads took a fifth of the
pass's stall samples, by ncu on an H200). The decays exp(G_last) of the state's slots need no
loads of their own: G_last of every slot is among w's gates, and warp shuffles bring each
accumulator its slot's.

Blocks: sequences x kv heads x M / 16 slot tiles x 2 (keys, values). Keys and values run the
same code up to the matmul and the stores (barriers cannot sit under a branch). Needs 16-bit
inputs on tensor cores with K = V, and [K, 16] dealing out to the 8 warps by rows.
"""

from tvm.script import tirx as T

from .layout import THREADS, WARPS
from .staging import VEC, load_rows, store_rows, vector_col, vector_registers, vector_row
from .warp_mma import (FRAG_A, FRAG_B, FRAG_C, acc_col, acc_row, check_row_strides, tile_col, tile_row,
                       warp_matmul)

SLOTS = 16  # slots of a block's state tile
# neighbouring slots of w a thread stages as one vector load of each gate input: 4, or single
# slots under launch bounds of two blocks an SM (H200, B = 8, T = 4096: vectors made that
# variant 25 % slower, 0.496 against 0.398 ms, within its 128 registers; B = 1 takes 4)
GATE_LANES = 4


def fused_state_applies(*, K: int, V: int, M: int, kv_dtype: str) -> bool:
    """Whether ``chunk_state_fused`` can take a shape: bfloat16 inputs (w rounded to them, as the
    state additions on tensor cores do), K = V (keys and values share the code) of one 16 x 16
    tile per warp, whole 16-slot tiles."""
    return kv_dtype == "bfloat16" and K == V == 16 * WARPS and M % SLOTS == 0


def fused_state_blocks(*, N: int, H: int, M: int) -> int:
    """Blocks of a launch: one per sequence, kv head, state tile of SLOTS slots, keys or values."""
    return N * H * (M // SLOTS) * 2


def chunk_state_fused(*, H: int, K: int, V: int, M: int, C: int, kv_dtype: str, gate_dtype: str,
                      state_dtype: str, blocks_per_sm: int = 1):
    """Arguments: k [total, H, K], v [total, H, V], s [total, H, M], gcum [total, H, M] (float32
    gate prefix sums inside chunks), cu_seqlens and chunk_offsets [N + 1], h0k [N, H, K, M],
    h0v [N, H, M, V] (float32 initial states), the outputs start_k [NC, H, K, M] and start_v
    [NC, H, M, V] (chunk-start states, ``state_dtype``), hk [N, H, K, M] and hv [N, H, M, V]
    (float32 final states), then the window W. ``blocks_per_sm``: the launch bounds' blocks
    per SM (2: at most 128 registers a thread, for batches with blocks to share an SM)."""
    if not fused_state_applies(K=K, V=V, M=M, kv_dtype=kv_dtype):
        raise ValueError(f"chunk_state_fused does not take K={K}, V={V}, M={M}, {kv_dtype}")
    assert C % 16 == 0, "the chunk must be whole 16-token k steps"
    D = K  # = V: the width of a block's token tile
    x_row, w_row = D + 8, SLOTS + 8  # ldmatrix rows padded by 16 bytes: a tile's rows on all banks
    check_row_strides(operand_rows=[x_row, w_row], output_rows=[])
    tiles = M // SLOTS
    lanes = GATE_LANES if blocks_per_sm == 1 else 1
    assert C * SLOTS % (THREADS * lanes) == 0, "w of a chunk: whole vectors of slots for every thread"
    w_vectors = C * SLOTS // (THREADS * lanes)  # of a thread

    # where the lane's accumulator e sits: keys' tiles [K, 16] are a column of the [K / 16, 1]
    # grid (the slot is the column), values' [16, V] a row of the [1, V / 16] grid (the slot is
    # the row); e = 4 h + 2 r + e2 is row acc_row(2 r), column acc_col(h, e2) of the warp's tile
    def key_dim(tid, e):
        return 16 * tile_row(tid, K // 16, 1) + acc_row(tid, e % 4)

    def key_slot(tid, e):
        return acc_col(tid, e // 4, e % 4)

    def value_slot(tid, e):
        return acc_row(tid, e % 4)

    def value_dim(tid, e):
        return 16 * tile_col(tid, 1, V // 16) + acc_col(tid, e // 4, e % 4)

    def w_token(j, tid):
        """The token (row of w) of the thread's j-th vector of slots from ``w_slot``: w [C, SLOTS]
        dealt out as ``staging`` deals a tile."""
        return vector_row(j, tid, C, SLOTS, lanes)

    def w_slot(j, tid):
        return vector_col(j, tid, C, SLOTS, lanes)

    def sent_element(lane):
        """The element of its first vector of last gate sums that ``lane`` sends (``sent``)."""
        return lane // (SLOTS // lanes) % lanes

    def decay_source(slot):
        """The lane whose ``sent`` value is the last gate sum of ``slot``: w's vectors deal a
        token's SLOTS slots to SLOTS / lanes neighbouring lanes (``w_slot``), so the lanes that
        hold slot m are those = m // lanes modulo SLOTS / lanes, at element m % lanes."""
        return slot % lanes * (SLOTS // lanes) + slot // lanes

    # the first lanes' first vectors of w hold every slot (vector_col at j = 0), and each such
    # lane sends the element that decay_source expects of it
    assert all(decay_source(m) < 32 and decay_source(m) % (SLOTS // lanes) * lanes
               + sent_element(decay_source(m)) == m for m in range(SLOTS))

    def last_of(i, start, length, total):
        """The position of chunk i's last token (clamped to the sequence, and to the batch)."""
        return T.max(T.min(start + T.min((i + 1) * C, length) - 1, total - 1), 0)

    @T.macro
    def load_chunk(i, k, v, s, gcum, stage_vec, s_next, g_next, g_last_next,
                   start, length, h, m0, kind, window, total, tid):
        """Chunk i's loads into registers (clamped: past the last chunk they go unused): its
        token rows x_{tau - W} (k for keys, v for values), and for its elements of w (vectors of
        slots of a token) the write strengths, the gate sums and the chunk's last gate sums."""
        if kind == 0:
            load_rows(stage_vec, C, k, start + i * C - window, h, K, total, tid)
        else:
            load_rows(stage_vec, C, v, start + i * C - window, h, V, total, tid)
        for j in T.unroll(w_vectors):
            for e in T.vectorized(lanes):
                s_next[j * lanes + e] = s[T.max(T.min(start + i * C + w_token(j, tid) - window, total - 1), 0), h,
                                          m0 + w_slot(j, tid) + e]
            for e in T.vectorized(lanes):
                g_next[j * lanes + e] = gcum[T.min(start + i * C + w_token(j, tid), total - 1), h, m0 + w_slot(j, tid) + e]
            for e in T.vectorized(lanes):
                g_last_next[j * lanes + e] = gcum[last_of(i, start, length, total), h, m0 + w_slot(j, tid) + e]

    @T.macro
    def store_tile(kind, fc, out_k, out_v, row, h, m0, tid):
        """The running state's tile into out_k[row, h, :, m0:m0 + 16] (keys) or
        out_v[row, h, m0:m0 + 16, :] (values), in the outputs' dtype, a lane's neighbouring
        columns as one store."""
        if kind == 0:
            for hh in T.unroll(2):
                for r in T.unroll(2):
                    for e in T.vectorized(2):
                        out_k[row, h, key_dim(tid, 4 * hh + 2 * r + e), m0 + key_slot(tid, 4 * hh + 2 * r + e)] = \
                            T.Cast(out_k.dtype, fc[4 * hh + 2 * r + e])
        else:
            for hh in T.unroll(2):
                for r in T.unroll(2):
                    for e in T.vectorized(2):
                        out_v[row, h, m0 + value_slot(tid, 4 * hh + 2 * r + e), value_dim(tid, 4 * hh + 2 * r + e)] = \
                            T.Cast(out_v.dtype, fc[4 * hh + 2 * r + e])

    @T.macro
    def stage_chunk(i, xs, ws, stage_vec, s_next, g_next, g_last_next, w_vec, sent, decay,
                    kind, window, length, chunks, tid):
        """Chunk i's tile x'_tau = x_{tau - W} (zero before W) and w from its loads in registers
        into shared memory, and its decays (past the sequence's last chunk: zeros, so that it
        adds nothing and keeps the state), each accumulator's slot's last gate sum taken by a
        shuffle from a lane that loaded it for w (``decay_source``)."""
        store_rows(xs, x_row, C, stage_vec, D, window - i * C, T.min(C, length - i * C), tid)
        for j in T.unroll(w_vectors):
            for e in T.unroll(lanes):
                w_vec[e] = T.Cast(kv_dtype, T.if_then_else(
                    w_token(j, tid) < T.min(C, length - i * C) and i * C + w_token(j, tid) >= window,
                    T.Cast("float32", s_next[j * lanes + e]) * T.exp(g_last_next[j * lanes + e] - g_next[j * lanes + e]),
                    T.float32(0)))
            for e in T.vectorized(lanes):
                ws[w_token(j, tid) * w_row + w_slot(j, tid) + e] = w_vec[e]
        sent[0] = g_last_next[0]
        for e in T.unroll(1, lanes):  # a select per element, not an indexed register array
            sent[0] = T.if_then_else(sent_element(tid % 32) == e, g_last_next[e], sent[0])
        for e in T.unroll(FRAG_C):
            decay[e] = T.if_then_else(i < chunks, T.tvm_warp_shuffle(
                T.tvm_warp_activemask(), sent[0],
                decay_source(T.if_then_else(kind == 0, key_slot(tid, e), value_slot(tid, e))), 32, 32),
                T.float32(0))

    @T.macro
    def add_pair(fa, fb, fc, xs, ws, fa_b, fb_b, fc_b, xs_b, ws_b, kind, tid):
        """fc += the first chunk's addition, fc_b = the second's, from their tiles in shared
        memory: both matmuls in one branch, so that their mma chains can interleave."""
        if kind == 0:  # S += x'^T w: x' read transposed from its token-major tile
            warp_matmul(tid, fa_b, fb_b, fc_b, xs_b, x_row, xs_b, x_row, ws_b, w_row, "row_major", K // 16, 1,
                        C // 16, fill=True, store=False, a_layout="col_major")
            warp_matmul(tid, fa, fb, fc, xs, x_row, xs, x_row, ws, w_row, "row_major", K // 16, 1, C // 16,
                        fill=False, store=False, a_layout="col_major")
        else:  # R += w^T x'
            warp_matmul(tid, fa_b, fb_b, fc_b, xs_b, x_row, ws_b, w_row, xs_b, x_row, "row_major", 1, V // 16,
                        C // 16, fill=True, store=False, a_layout="col_major")
            warp_matmul(tid, fa, fb, fc, xs, x_row, ws, w_row, xs, x_row, "row_major", 1, V // 16, C // 16,
                        fill=False, store=False, a_layout="col_major")

    @T.prim_func(s_tir=True)
    def func(k_h: T.handle, v_h: T.handle, s_h: T.handle, gcum_h: T.handle, cu_h: T.handle,
             choff_h: T.handle, h0k_h: T.handle, h0v_h: T.handle, start_k_h: T.handle,
             start_v_h: T.handle, hk_h: T.handle, hv_h: T.handle, window: T.int32):
        T.func_attr({"global_symbol": "chunk_state_fused", "tirx.noalias": True,
                     "nha.kernel": "chunk_state_fused"})
        total = T.int32()
        N = T.int32()
        NC = T.int32()
        k = T.match_buffer(k_h, (total, H, K), kv_dtype)
        v = T.match_buffer(v_h, (total, H, V), kv_dtype)
        s = T.match_buffer(s_h, (total, H, M), gate_dtype)
        gcum = T.match_buffer(gcum_h, (total, H, M), "float32")
        cu = T.match_buffer(cu_h, (N + 1,), "int32")
        choff = T.match_buffer(choff_h, (N + 1,), "int32")
        h0k = T.match_buffer(h0k_h, (N, H, K, M), "float32")
        h0v = T.match_buffer(h0v_h, (N, H, M, V), "float32")
        start_k = T.match_buffer(start_k_h, (NC, H, K, M), state_dtype)
        start_v = T.match_buffer(start_v_h, (NC, H, M, V), state_dtype)
        hk = T.match_buffer(hk_h, (N, H, K, M), "float32")
        hv = T.match_buffer(hv_h, (N, H, M, V), "float32")

        for bx in T.thread_binding(N * H * tiles * 2, thread="blockIdx.x"):
            for tid in T.thread_binding(THREADS, thread="threadIdx.x"):
                if blocks_per_sm > 1:  # (no attribute at all by default: ptxas takes an explicit 1 otherwise)
                    T.attr({"tirx.launch_bounds_min_blocks_per_sm": blocks_per_sm})
                with T.sblock("state_fused"):
                    T.reads(k[0:total, 0:H, 0:K], v[0:total, 0:H, 0:V], s[0:total, 0:H, 0:M],
                            gcum[0:total, 0:H, 0:M], cu[0:N + 1], choff[0:N + 1],
                            h0k[0:N, 0:H, 0:K, 0:M], h0v[0:N, 0:H, 0:M, 0:V])
                    T.writes(start_k[0:NC, 0:H, 0:K, 0:M], start_v[0:NC, 0:H, 0:M, 0:V],
                             hk[0:N, 0:H, 0:K, 0:M], hv[0:N, 0:H, 0:M, 0:V])
                    # a pair of chunks' tiles
                    xs = T.sblock_alloc_buffer((C * x_row,), kv_dtype, scope="shared.dyn")
                    ws = T.sblock_alloc_buffer((C * w_row,), kv_dtype, scope="shared.dyn")
                    xs_b = T.sblock_alloc_buffer((C * x_row,), kv_dtype, scope="shared.dyn")
                    ws_b = T.sblock_alloc_buffer((C * w_row,), kv_dtype, scope="shared.dyn")
                    # two register sets of a chunk's loads: its token rows, and per element of w
                    # the write strength, gate sum and last gate sum
                    stage_a = T.sblock_alloc_buffer((vector_registers(C, D, VEC),), kv_dtype, scope="local")
                    stage_b = T.sblock_alloc_buffer((vector_registers(C, D, VEC),), kv_dtype, scope="local")
                    s_a = T.sblock_alloc_buffer((w_vectors * lanes,), gate_dtype, scope="local")
                    s_b = T.sblock_alloc_buffer((w_vectors * lanes,), gate_dtype, scope="local")
                    g_a = T.sblock_alloc_buffer((w_vectors * lanes,), "float32", scope="local")
                    g_b = T.sblock_alloc_buffer((w_vectors * lanes,), "float32", scope="local")
                    g_last_a = T.sblock_alloc_buffer((w_vectors * lanes,), "float32", scope="local")
                    g_last_b = T.sblock_alloc_buffer((w_vectors * lanes,), "float32", scope="local")
                    w_vec = T.sblock_alloc_buffer((lanes,), kv_dtype, scope="local")
                    sent = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    decay = T.sblock_alloc_buffer((FRAG_C,), "float32", scope="local")
                    decay_next_chunk = T.sblock_alloc_buffer((FRAG_C,), "float32", scope="local")
                    fa = T.sblock_alloc_buffer((FRAG_A,), kv_dtype, scope="local")
                    fb = T.sblock_alloc_buffer((FRAG_B,), kv_dtype, scope="local")
                    fc = T.sblock_alloc_buffer((FRAG_C,), "float32", scope="local")
                    # the second chunk's fragments and addition
                    fa_b = T.sblock_alloc_buffer((FRAG_A,), kv_dtype, scope="local")
                    fb_b = T.sblock_alloc_buffer((FRAG_B,), kv_dtype, scope="local")
                    fc_b = T.sblock_alloc_buffer((FRAG_C,), "float32", scope="local")
                    n: T.let[T.int32] = bx // (H * tiles * 2)
                    h: T.let[T.int32] = bx // (tiles * 2) % H
                    m0: T.let[T.int32] = bx // 2 % tiles * SLOTS
                    kind: T.let[T.int32] = bx % 2  # 0: keys, 1: values
                    start: T.let[T.int32] = cu[n]
                    length: T.let[T.int32] = cu[n + 1] - start
                    chunks: T.let[T.int32] = (length + C - 1) // C
                    first: T.let[T.int32] = choff[n]

                    # the running state from the initial state
                    for e in T.unroll(FRAG_C):
                        fc[e] = T.if_then_else(kind == 0, h0k[n, h, key_dim(tid, e), m0 + key_slot(tid, e)],
                                               h0v[n, h, m0 + value_slot(tid, e), value_dim(tid, e)])
                    # a pair of chunks' loads in flight: its chunks alternate register sets
                    load_chunk(0, k, v, s, gcum, stage_a, s_a, g_a, g_last_a,
                               start, length, h, m0, kind, window, total, tid)
                    load_chunk(1, k, v, s, gcum, stage_b, s_b, g_b, g_last_b,
                               start, length, h, m0, kind, window, total, tid)
                    # chunks i and i + 1 (past the sequence's last chunk they add zeros and store
                    # nothing): both tiles and w into shared memory, the next pair's loads into the
                    # registers (in flight through this pair's work), then the two additions side
                    # by side, chunk i + 1's into accumulators of its own (independent mma chains),
                    # and the carry S_{i+1} = S_i exp(G_last,i) + D_i, S_{i+2} = S_{i+1}
                    # exp(G_last,i+1) + D_{i+1}, each chunk-start state stored (what the output
                    # pass reads)
                    for pair in T.serial((chunks + 1) // 2):
                        stage_chunk(2 * pair, xs, ws, stage_a, s_a, g_a, g_last_a, w_vec, sent, decay,
                                    kind, window, length, chunks, tid)
                        stage_chunk(2 * pair + 1, xs_b, ws_b, stage_b, s_b, g_b, g_last_b, w_vec, sent,
                                    decay_next_chunk, kind, window, length, chunks, tid)
                        load_chunk(2 * pair + 2, k, v, s, gcum, stage_a, s_a, g_a, g_last_a,
                                   start, length, h, m0, kind, window, total, tid)
                        load_chunk(2 * pair + 3, k, v, s, gcum, stage_b, s_b, g_b, g_last_b,
                                   start, length, h, m0, kind, window, total, tid)
                        if 2 * pair < chunks:
                            store_tile(kind, fc, start_k, start_v, first + 2 * pair, h, m0, tid)
                        for e in T.unroll(FRAG_C):
                            fc[e] = fc[e] * T.exp(decay[e])
                        add_pair(fa, fb, fc, xs, ws, fa_b, fb_b, fc_b, xs_b, ws_b, kind, tid)
                        if 2 * pair + 1 < chunks:
                            store_tile(kind, fc, start_k, start_v, first + 2 * pair + 1, h, m0, tid)
                        for e in T.unroll(FRAG_C):
                            fc[e] = fc[e] * T.exp(decay_next_chunk[e]) + fc_b[e]
                    store_tile(kind, fc, hk, hv, n, h, m0, tid)

    return func
