"""Chunked state pass, first half (GPU): what each chunk adds to the slot memories.

Per chunk c and kv head h, with w[tau, m] = s'_tau[m] * exp(G_last[m] - G_tau[m]) (the write
strength of token tau decayed to the chunk's last token; spec, "Chunked form"):

    dS_c = k'^T w      [K, M]        dR_c = w^T v'      [M, V]

Both are small matmuls over the C tokens of the chunk, and every chunk is independent, so this
half runs one thread block per (chunk, kv head) with the chunk's k', v' and w staged in shared
memory. ``chunk_state_scan`` then carries the states from chunk to chunk.

Written with its thread mapping, like TVM's own LLM kernels. With bfloat16 inputs
(``on_tensor_cores``) both products are tensor-core matmuls (``warp_mma.warp_tiles``, the left
operands read transposed from the token-major tiles) whose register accumulators go straight to
global memory.
Otherwise the 256 threads are a 16 x 16 grid, each owning a tile of consecutive rows
(ty * rows + a) and columns (tx * cols + b) of the output, so that per token a thread reads its
rows and its columns as one vector load each (the loads, not the multiply-adds, bounded the
kernel when each element was a load), and stores them in 16-byte vectors where it can.
"""

from tvm.script import tirx as T

from .layout import THREADS, TX, TY, ceil_div
from .staging import VEC, stage_rows, vector_registers
from .warp_mma import FRAG_A, FRAG_B, FRAG_C, deals_by_rows, tiles_per_warp, warp_matmul, warp_store


@T.macro
def stage_shifted(tile, src, width, row, start, p0, valid, window, h, tid):
    """The chunk's shifted tokens src_{tau - W} ([C, width]) into ``tile`` (flat [C, row]):
    zeros before W, past the chunk's end and in the padding columns (read by the vector loads
    below), an element a thread at a time."""
    for j in T.unroll(ceil_div(tile.shape[0], THREADS)):
        if j * THREADS + tid < tile.shape[0]:
            if (j * THREADS + tid) // row < valid and p0 + (j * THREADS + tid) // row >= window and (j * THREADS + tid) % row < width:
                tile[j * THREADS + tid] = src[start + p0 + (j * THREADS + tid) // row - window, h, (j * THREADS + tid) % row]
            else:
                tile[j * THREADS + tid] = T.Cast(tile.dtype, 0)


def vector_or_unrolled(lanes: int, dtype: str):
    """A thread's run of ``lanes`` consecutive shared-memory elements is read as one vector
    load where CUDA has that vector type (2, 4 or 8 lanes of at most 16 bytes), else element
    by element (TVM rejects odd 16-bit and wide float32 vectors)."""
    size = 4 if dtype == "float32" else 2
    return T.vectorized if lanes in (2, 4, 8) and lanes * size <= 16 else T.unroll


@T.macro
def store_tile(out, tile, c, h, row0, col0, n_rows, n_cols, rows, cols, valid):
    """out[c, h, row0 + a, col0 + b] = tile[a, b] (float32) where the chunk has tokens. When
    the thread tiles cover the output exactly, each row goes out in 16-byte vectors (the
    stores are most of the kernel's traffic), else element by element, bounds checked."""
    if valid > 0:
        if n_rows == rows * TY and n_cols == cols * TX and cols % 4 == 0:
            for a in T.unroll(rows):
                for b0 in T.unroll(cols // 4):
                    for b1 in T.vectorized(4):
                        out[c, h, row0 + a, col0 + b0 * 4 + b1] = tile[a, b0 * 4 + b1]
        else:
            for a in T.unroll(rows):
                for b in T.unroll(cols):
                    if row0 + a < n_rows and col0 + b < n_cols:
                        out[c, h, row0 + a, col0 + b] = tile[a, b]


def on_tensor_cores(*, K: int, V: int, M: int, kv_dtype: str) -> bool:
    """bfloat16 inputs whose [K, M] and [M, V] products deal out to the warps in whole 16 x 16
    tiles run on tensor cores (mma.sync, fp32 accumulate, w rounded to bfloat16); the rest on CUDA
    cores in float32. Not float16: w = s' exp(G_last - G) of a weakly writing slot falls below
    float16's normal range (6e-5), where the final states lost 1.5 % (H200 test, s ~ 1e-6)."""
    return kv_dtype == "bfloat16" and K % 16 == 0 and V % 16 == 0 and M % 16 == 0 \
        and deals_by_rows(K // 16, M // 16) and deals_by_rows(M // 16, V // 16)


def chunk_state_delta(*, H: int, K: int, V: int, M: int, C: int, kv_dtype: str, gate_dtype: str):
    """Arguments: k [total, H, K], v [total, H, V], s [total, H, M], gcum [total, H, M]
    (float32 gate prefix sums inside chunks), cu_seqlens and chunk_offsets [N + 1], chunk_seq
    [NC], the outputs chunk_k [NC, H, K, M] and chunk_v [NC, H, M, V] (float32: what each chunk
    adds, ``chunk_state_scan``'s delta_k and delta_v), the window."""
    rows_k, rows_m, cols_m, cols_v = ceil_div(K, TY), ceil_div(M, TY), ceil_div(M, TX), ceil_div(V, TX)
    tensor_cores = on_tensor_cores(K=K, V=V, M=M, kv_dtype=kv_dtype)
    if tensor_cores:  # ldmatrix tiles, rows padded by 16 bytes so a tile's rows spread over the banks
        k_row, v_row, w16_row = K + 8, V + 8, M + 8
        w_row = 1
        fragments = max(tiles_per_warp(K // 16, M // 16), tiles_per_warp(M // 16, V // 16))
    else:  # shared rows padded to whole vectors, so every thread's vector stays in bounds
        k_row, v_row, w16_row = TY * rows_k, TX * cols_v, 1
        w_row = max(TX * cols_m, TY * rows_m)
        fragments = 1
    # 16-bit rows are staged in 16-byte vectors (``staging``) where a row is whole vectors
    vector_staging = kv_dtype in ("bfloat16", "float16") and K % VEC == 0 and V % VEC == 0 \
        and (tensor_cores or (k_row == K and v_row == V))
    k_loop, w_loop_m, w_loop_r, v_loop = (vector_or_unrolled(n, dtype) for n, dtype in (
        (rows_k, kv_dtype), (cols_m, "float32"), (rows_m, "float32"), (cols_v, kv_dtype)))

    @T.prim_func(s_tir=True)
    def func(k_h: T.handle, v_h: T.handle, s_h: T.handle, gcum_h: T.handle, cu_h: T.handle,
             choff_h: T.handle, chseq_h: T.handle, chunk_k_h: T.handle, chunk_v_h: T.handle,
             window: T.int32):
        T.func_attr({"global_symbol": "chunk_state_delta", "tirx.noalias": True,
                     "nha.kernel": "chunk_state_delta"})
        total = T.int32()
        bounds = T.int32()  # N + 1
        NC = T.int32()
        k = T.match_buffer(k_h, (total, H, K), kv_dtype)
        v = T.match_buffer(v_h, (total, H, V), kv_dtype)
        s = T.match_buffer(s_h, (total, H, M), gate_dtype)
        gcum = T.match_buffer(gcum_h, (total, H, M), "float32")
        cu = T.match_buffer(cu_h, (bounds,), "int32")
        choff = T.match_buffer(choff_h, (bounds,), "int32")
        chseq = T.match_buffer(chseq_h, (NC,), "int32")
        chunk_k = T.match_buffer(chunk_k_h, (NC, H, K, M), "float32")
        chunk_v = T.match_buffer(chunk_v_h, (NC, H, M, V), "float32")

        for bx in T.thread_binding(NC * H, thread="blockIdx.x"):
            for tid in T.thread_binding(THREADS, thread="threadIdx.x"):
                with T.sblock("chunk_delta"):
                    T.reads(k[0:total, 0:H, 0:K], v[0:total, 0:H, 0:V], s[0:total, 0:H, 0:M],
                            gcum[0:total, 0:H, 0:M], cu[0:bounds], choff[0:bounds], chseq[0:NC])
                    T.writes(chunk_k[0:NC, 0:H, 0:K, 0:M], chunk_v[0:NC, 0:H, 0:M, 0:V])
                    ks = T.sblock_alloc_buffer((C * k_row,), kv_dtype, scope="shared.dyn")
                    vs = T.sblock_alloc_buffer((C * v_row,), kv_dtype, scope="shared.dyn")
                    stage_vec = T.sblock_alloc_buffer((vector_registers(C, max(K, V), VEC),) if vector_staging else (1,), kv_dtype, scope="local")
                    w = T.sblock_alloc_buffer((1, 1) if tensor_cores else (C, w_row), "float32", scope="shared.dyn")
                    w16 = T.sblock_alloc_buffer((C * w16_row,), kv_dtype, scope="shared.dyn")
                    # a lane's mma.sync fragments: a and b tiles, and the accumulators of its tiles
                    fa_t = T.sblock_alloc_buffer((FRAG_A,), kv_dtype, scope="local")
                    fb = T.sblock_alloc_buffer((FRAG_B,), kv_dtype, scope="local")
                    fc = T.sblock_alloc_buffer((FRAG_C * fragments,), "float32", scope="local")
                    dk = T.sblock_alloc_buffer((rows_k, cols_m), "float32", scope="local")
                    dv = T.sblock_alloc_buffer((rows_m, cols_v), "float32", scope="local")
                    k_vec = T.sblock_alloc_buffer((rows_k,), kv_dtype, scope="local")
                    w_vec = T.sblock_alloc_buffer((max(cols_m, rows_m),), "float32", scope="local")
                    v_vec = T.sblock_alloc_buffer((cols_v,), kv_dtype, scope="local")
                    c: T.let[T.int32] = bx // H
                    h: T.let[T.int32] = bx % H
                    ty: T.let[T.int32] = tid // TX
                    tx: T.let[T.int32] = tid % TX
                    # a padding chunk (sequence N) stages zeros and stores nothing: barriers
                    # cannot sit under a branch, so every block runs the same code
                    n: T.let[T.int32] = T.min(chseq[c], bounds - 2)
                    start: T.let[T.int32] = cu[n]
                    p0: T.let[T.int32] = (c - choff[n]) * C
                    valid: T.let[T.int32] = T.if_then_else(chseq[c] < bounds - 1, T.min(C, cu[n + 1] - start - p0), 0)
                    last: T.let[T.int32] = start + p0 + T.max(valid, 1) - 1
                    # stage the shifted tokens k'_tau = k_{tau - W} (zero before W / past the end;
                    # on CUDA cores the padding columns are zeros too: its vector loads read them)
                    if vector_staging:
                        stage_rows(ks, k_row, C, k, start + p0 - window, window - p0, valid, h, K, total, stage_vec, tid)
                        stage_rows(vs, v_row, C, v, start + p0 - window, window - p0, valid, h, V, total, stage_vec, tid)
                    else:
                        stage_shifted(ks, k, K, k_row, start, p0, valid, window, h, tid)
                        stage_shifted(vs, v, V, v_row, start, p0, valid, window, h, tid)
                    if tensor_cores:
                        # the additions as flat arrays: the accumulators go to them in pairs of elements
                        flat_k = T.decl_buffer((NC * H * K * M,), "float32", data=chunk_k.data)
                        flat_v = T.decl_buffer((NC * H * M * V,), "float32", data=chunk_v.data)
                        # w in the input dtype (in [0, 1]) as the tensor cores' operand; both
                        # products accumulate in float32 and go from the fragments straight
                        # to global memory
                        for j in T.unroll(ceil_div(C * M, THREADS)):
                            r: T.let[T.int32] = T.min(j * THREADS + tid, C * M - 1) // M
                            m: T.let[T.int32] = T.min(j * THREADS + tid, C * M - 1) % M
                            w16[r * w16_row + m] = T.Cast(kv_dtype, T.if_then_else(
                                r < valid and p0 + r >= window,
                                T.Cast("float32", s[start + p0 + r - window, h, m]) * T.exp(gcum[last, h, m] - gcum[start + p0 + r, h, m]),
                                T.float32(0)))
                        # dS = k'^T w ([K, M]) and dR = w^T v' ([M, V]): the left operands read
                        # transposed (column major) from the token-major tiles
                        warp_matmul(tid, fa_t, fb, fc, flat_k, M, ks, k_row, w16, w16_row, "row_major", K // 16, M // 16, C // 16,
                                    store=False, a_layout="col_major")
                        if valid > 0:
                            warp_store(tid, fc, flat_k, (c * H + h) * K * M, M, K // 16, M // 16)
                        warp_matmul(tid, fa_t, fb, fc, flat_v, V, w16, w16_row, vs, v_row, "row_major", M // 16, V // 16, C // 16,
                                    store=False, a_layout="col_major")
                        if valid > 0:
                            warp_store(tid, fc, flat_v, (c * H + h) * M * V, V, M // 16, V // 16)
                    else:
                        for j in T.unroll(ceil_div(C * w_row, THREADS)):
                            if j * THREADS + tid < C * w_row:
                                r: T.let[T.int32] = (j * THREADS + tid) // w_row
                                m: T.let[T.int32] = (j * THREADS + tid) % w_row
                                if r < valid and p0 + r >= window and m < M:
                                    # exponent <= 0: G decreases along the chunk
                                    w[r, m] = T.Cast("float32", s[start + p0 + r - window, h, m]) * T.exp(
                                        gcum[last, h, m] - gcum[start + p0 + r, h, m])
                                else:
                                    w[r, m] = T.float32(0)
                        # dS = k'^T w: rows i = ty * rows_k + a, columns m = tx * cols_m + b
                        for a in T.unroll(rows_k):
                            for b in T.unroll(cols_m):
                                dk[a, b] = T.float32(0)
                        for tau in T.serial(C):
                            for a in k_loop(rows_k):
                                k_vec[a] = ks[tau * k_row + ty * rows_k + a]
                            for b in w_loop_m(cols_m):
                                w_vec[b] = w[tau, tx * cols_m + b]
                            for a in T.unroll(rows_k):
                                for b in T.unroll(cols_m):
                                    dk[a, b] = dk[a, b] + T.Cast("float32", k_vec[a]) * w_vec[b]
                        store_tile(chunk_k, dk, c, h, ty * rows_k, tx * cols_m, K, M, rows_k, cols_m, valid)
                        # dR = w^T v': rows m = ty * rows_m + a, columns e = tx * cols_v + b
                        for a in T.unroll(rows_m):
                            for b in T.unroll(cols_v):
                                dv[a, b] = T.float32(0)
                        for tau in T.serial(C):
                            for a in w_loop_r(rows_m):
                                w_vec[a] = w[tau, ty * rows_m + a]
                            for b in v_loop(cols_v):
                                v_vec[b] = vs[tau * v_row + tx * cols_v + b]
                            for a in T.unroll(rows_m):
                                for b in T.unroll(cols_v):
                                    dv[a, b] = dv[a, b] + w_vec[a] * T.Cast("float32", v_vec[b])
                        store_tile(chunk_v, dv, c, h, ty * rows_m, tx * cols_v, M, V, rows_m, cols_v, valid)

    return func
