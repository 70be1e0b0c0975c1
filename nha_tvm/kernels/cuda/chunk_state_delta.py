"""Chunked state pass, first half (GPU): what each chunk adds to the slot memories.

Per chunk c and kv head h, with w[tau, m] = s'_tau[m] * exp(G_last[m] - G_tau[m]) (the write
strength of token tau decayed to the chunk's last token; spec, "Chunked form"):

    dS_c = k'^T w      [K, M]        dR_c = w^T v'      [M, V]

Both are small matmuls over the C tokens of the chunk, and every chunk is independent, so this
half runs one thread block per (chunk, kv head) with the chunk's k', v' and w staged in shared
memory. ``chunk_state_scan`` then carries the states from chunk to chunk.

Written with its thread mapping, like TVM's own LLM kernels: 256 threads as a 16 x 16 grid,
each owning a few rows (ty + 16 a) and columns (tx + 16 b) of the output, so that the
column reads of a warp hit consecutive shared-memory words and the row reads are broadcasts.
"""

from tvm.script import tirx as T

from .layout import THREADS, TX, TY, ceil_div


def chunk_state_delta(*, H: int, K: int, V: int, M: int, C: int, kv_dtype: str, gate_dtype: str):
    """Arguments: k [total, H, K], v [total, H, V], s [total, H, M], gcum [total, H, M]
    (float32 gate prefix sums inside chunks), cu_seqlens and chunk_offsets [N + 1], chunk_seq
    [NC], the outputs chunk_k [NC, H, K, M] and chunk_v [NC, H, M, V] (float32), the window."""
    rows_k, rows_m, cols_m, cols_v = ceil_div(K, TY), ceil_div(M, TY), ceil_div(M, TX), ceil_div(V, TX)

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
                    ks = T.sblock_alloc_buffer((C, K), kv_dtype, scope="shared.dyn")
                    vs = T.sblock_alloc_buffer((C, V), kv_dtype, scope="shared.dyn")
                    w = T.sblock_alloc_buffer((C, M), "float32", scope="shared.dyn")
                    dk = T.sblock_alloc_buffer((rows_k, cols_m), "float32", scope="local")
                    dv = T.sblock_alloc_buffer((rows_m, cols_v), "float32", scope="local")
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
                    # stage the shifted tokens k'_tau = k_{tau - W} (zero before W / past the end)
                    for j in T.unroll(ceil_div(C * K, THREADS)):
                        if j * THREADS + tid < C * K:
                            r: T.let[T.int32] = (j * THREADS + tid) // K
                            if r < valid and p0 + r >= window:
                                ks[r, (j * THREADS + tid) % K] = k[start + p0 + r - window, h, (j * THREADS + tid) % K]
                            else:
                                ks[r, (j * THREADS + tid) % K] = T.Cast(kv_dtype, 0)
                    for j in T.unroll(ceil_div(C * V, THREADS)):
                        if j * THREADS + tid < C * V:
                            r: T.let[T.int32] = (j * THREADS + tid) // V
                            if r < valid and p0 + r >= window:
                                vs[r, (j * THREADS + tid) % V] = v[start + p0 + r - window, h, (j * THREADS + tid) % V]
                            else:
                                vs[r, (j * THREADS + tid) % V] = T.Cast(kv_dtype, 0)
                    for j in T.unroll(ceil_div(C * M, THREADS)):
                        if j * THREADS + tid < C * M:
                            r: T.let[T.int32] = (j * THREADS + tid) // M
                            m: T.let[T.int32] = (j * THREADS + tid) % M
                            if r < valid and p0 + r >= window:
                                # exponent <= 0: G decreases along the chunk
                                w[r, m] = T.Cast("float32", s[start + p0 + r - window, h, m]) * T.exp(
                                    gcum[last, h, m] - gcum[start + p0 + r, h, m])
                            else:
                                w[r, m] = T.float32(0)
                    # dS = k'^T w: rows i = ty + 16 a, columns m = tx + 16 b
                    for a in T.unroll(rows_k):
                        for b in T.unroll(cols_m):
                            dk[a, b] = T.float32(0)
                    for tau in T.serial(C):
                        for a in T.unroll(rows_k):
                            for b in T.unroll(cols_m):
                                if ty + TY * a < K and tx + TX * b < M:
                                    dk[a, b] = dk[a, b] + T.Cast("float32", ks[tau, ty + TY * a]) * w[tau, tx + TX * b]
                    for a in T.unroll(rows_k):
                        for b in T.unroll(cols_m):
                            if ty + TY * a < K and tx + TX * b < M:
                                if valid > 0:
                                    chunk_k[c, h, ty + TY * a, tx + TX * b] = dk[a, b]
                    # dR = w^T v': rows m = ty + 16 a, columns e = tx + 16 b
                    for a in T.unroll(rows_m):
                        for b in T.unroll(cols_v):
                            dv[a, b] = T.float32(0)
                    for tau in T.serial(C):
                        for a in T.unroll(rows_m):
                            for b in T.unroll(cols_v):
                                if ty + TY * a < M and tx + TX * b < V:
                                    dv[a, b] = dv[a, b] + w[tau, ty + TY * a] * T.Cast("float32", vs[tau, tx + TX * b])
                    for a in T.unroll(rows_m):
                        for b in T.unroll(cols_v):
                            if ty + TY * a < M and tx + TX * b < V:
                                if valid > 0:
                                    chunk_v[c, h, ty + TY * a, tx + TX * b] = dv[a, b]

    return func
