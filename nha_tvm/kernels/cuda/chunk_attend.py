"""Prefill output pass (GPU): one thread block per (chunk, query head), all in shared memory.

Per chunk of C tokens, with the chunk-start states S_c [K, M], R_c [M, V] (state pass), the
gate prefix sums G [C, M] and the shifted slot inputs k', v', s' (spec, "Chunked form"):

    A  = (Q S_c) * exp(G)  +  sum_{tau <= t} (Q k'^T)[t, tau] s'[tau] exp(G_t - G_tau)   slot logits
    P  = exp(scale A - max)                                                               one softmax...
    O  = (P * exp(G)) R_c  +  sum_{tau <= t} (sum_m P s'[tau] exp(G_t - G_tau)) v'_tau
    then the window keys (RoPE'd) in tiles of C, folded into the same softmax online      ...over both

Every exponent is <= 0 (tau <= t and g' <= 0), so nothing overflows at any gate strength. The
window of a chunk spans at most C + W - 1 keys, visited in tiles, so W may be any size; no
[T, M + W] score tensor or per-token state ever reaches global memory.

Thread mapping (``layout``): 256 threads as 16 x 16; thread (ty, tx) owns rows t = ty + 16 a of
every [C, *] tile and columns tx + 16 b. Rows that need a serial pass (softmax statistics) take
one thread each. Shared rows that are read down a column (keys, s', G) are padded by one word,
so the 16 threads of a half-warp hit 16 different banks. Results are kept in registers and
written to shared memory in separate loops: TVM plans barriers conservatively across the merged
dynamic shared buffer, and a store between two reads would cost a barrier each.
"""

from tvm.script import tirx as T

from .layout import THREADS, TX, TY, ceil_div

STATE_ROWS = 16  # rows of S_c / R_c staged in shared memory at a time
NEG = -1.0e30  # a masked logit: exp(NEG - max) == 0 without inf - inf


def shared_bytes(*, K: int, V: int, M: int, C: int, io_dtype: str) -> int:
    """Dynamic shared memory of one block (the kernel cannot run where this does not fit)."""
    io = 4 if io_dtype == "float32" else 2
    return (C * K * io + C * (K + 1) * 4 + C * V * io + 2 * C * (M + 1) * 4 + C * M * 4 + C * C * 4
            + STATE_ROWS * max(M, V) * 4)


def chunk_attend(*, HQ: int, H: int, K: int, V: int, M: int, C: int, io_dtype: str,
                 gate_dtype: str):
    """Arguments: q, q_rot [total, HQ, K] (q_rot = q with RoPE, or q itself), k_rot
    [total, H, K], k [total, H, K], v [total, H, V], gcum (float32 gate prefix sums inside
    chunks) and s [total, H, M], cu_seqlens and chunk_offsets [N + 1], chunk_seq [NC],
    chunk_k [NC, H, K, M] and chunk_v [NC, H, M, V] (chunk-start states), the output
    o [total, HQ, V], then the window W and the softmax scale."""
    assert C % TY == 0 and C % TX == 0, "the chunk must be a multiple of 16 tokens"
    group = HQ // H
    rows = C // TY
    cols_m, cols_c, cols_v = ceil_div(M, TX), C // TX, ceil_div(V, TX)

    @T.prim_func(s_tir=True)
    def func(
        q_h: T.handle, qr_h: T.handle, k_h: T.handle, kr_h: T.handle, v_h: T.handle,
        gcum_h: T.handle, s_h: T.handle, cu_h: T.handle, choff_h: T.handle, chseq_h: T.handle,
        chunk_k_h: T.handle, chunk_v_h: T.handle, o_h: T.handle,
        window: T.int32, scale: T.float32,
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
        chunk_k = T.match_buffer(chunk_k_h, (NC, H, K, M), "float32")
        chunk_v = T.match_buffer(chunk_v_h, (NC, H, M, V), "float32")
        o = T.match_buffer(o_h, (total, HQ, V), io_dtype)

        for bx in T.thread_binding(NC * HQ, thread="blockIdx.x"):
            for tid in T.thread_binding(THREADS, thread="threadIdx.x"):
                with T.sblock("attend"):
                    T.reads(q[0:total, 0:HQ, 0:K], qr[0:total, 0:HQ, 0:K], k[0:total, 0:H, 0:K],
                            kr[0:total, 0:H, 0:K], v[0:total, 0:H, 0:V], gcum[0:total, 0:H, 0:M],
                            s[0:total, 0:H, 0:M], cu[0:bounds], choff[0:bounds], chseq[0:NC],
                            chunk_k[0:NC, 0:H, 0:K, 0:M], chunk_v[0:NC, 0:H, 0:M, 0:V])
                    T.writes(o[0:total, 0:HQ, 0:V])
                    qs = T.sblock_alloc_buffer((C, K), io_dtype, scope="shared.dyn")
                    # ks, gs and ss are read down their columns: flat, with rows padded by one
                    # word so a half-warp hits 16 banks (a 2-D buffer would be compacted back)
                    ks = T.sblock_alloc_buffer((C * (K + 1),), "float32", scope="shared.dyn")
                    vs = T.sblock_alloc_buffer((C, V), io_dtype, scope="shared.dyn")
                    gs = T.sblock_alloc_buffer((C * (M + 1),), "float32", scope="shared.dyn")
                    ss = T.sblock_alloc_buffer((C * (M + 1),), "float32", scope="shared.dyn")
                    ps = T.sblock_alloc_buffer((C, M), "float32", scope="shared.dyn")
                    xs = T.sblock_alloc_buffer((C, C), "float32", scope="shared.dyn")
                    state = T.sblock_alloc_buffer((STATE_ROWS * max(M, V),), "float32", scope="shared.dyn")
                    # the row statistics are written under `if tid < C`; kept out of the merged
                    # dynamic buffer, so TVM's barrier planner sees they don't alias the tiles
                    row_max = T.sblock_alloc_buffer((C,), "float32", scope="shared")
                    row_sum = T.sblock_alloc_buffer((C,), "float32", scope="shared")
                    row_rescale = T.sblock_alloc_buffer((C,), "float32", scope="shared")
                    acc_m = T.sblock_alloc_buffer((rows, cols_m), "float32", scope="local")
                    acc_c = T.sblock_alloc_buffer((rows, cols_c), "float32", scope="local")
                    acc_v = T.sblock_alloc_buffer((rows, cols_v), "float32", scope="local")
                    red = T.sblock_alloc_buffer((2,), "float32", scope="local")
                    c: T.let[T.int32] = bx // HQ
                    hq: T.let[T.int32] = bx % HQ
                    h: T.let[T.int32] = hq // group
                    ty: T.let[T.int32] = tid // TX
                    tx: T.let[T.int32] = tid % TX
                    # a padding chunk (sequence N) computes on zeros and stores nothing:
                    # barriers cannot sit under a branch, so every block runs the same code
                    n: T.let[T.int32] = T.min(chseq[c], bounds - 2)
                    start: T.let[T.int32] = cu[n]
                    p0: T.let[T.int32] = (c - choff[n]) * C  # position of the chunk's first token
                    valid: T.let[T.int32] = T.if_then_else(chseq[c] < bounds - 1, T.min(C, cu[n + 1] - start - p0), 0)

                    # ---- stage q, the shifted k' and v', s' and G ----
                    # (staging loops clamp their index instead of branching: a few threads
                    # store the same value twice, and no store sits under a condition, where
                    # TVM could not place the barrier a later reuse of the buffer needs)
                    for j in T.serial(ceil_div(C * K, THREADS)):
                        r: T.let[T.int32] = T.min(j * THREADS + tid, C * K - 1) // K
                        i: T.let[T.int32] = T.min(j * THREADS + tid, C * K - 1) % K
                        qs[r, i] = T.if_then_else(r < valid, q[start + p0 + r, hq, i], T.Cast(io_dtype, 0))
                        ks[r * (K + 1) + i] = T.if_then_else(r < valid and p0 + r >= window,
                                                  T.Cast("float32", k[start + p0 + r - window, h, i]), T.float32(0))
                    for j in T.serial(ceil_div(C * V, THREADS)):
                        r: T.let[T.int32] = T.min(j * THREADS + tid, C * V - 1) // V
                        e: T.let[T.int32] = T.min(j * THREADS + tid, C * V - 1) % V
                        vs[r, e] = T.if_then_else(r < valid and p0 + r >= window,
                                                  v[start + p0 + r - window, h, e], T.Cast(io_dtype, 0))
                    for j in T.serial(ceil_div(C * M, THREADS)):
                        r: T.let[T.int32] = T.min(j * THREADS + tid, C * M - 1) // M
                        m: T.let[T.int32] = T.min(j * THREADS + tid, C * M - 1) % M
                        gs[r * (M + 1) + m] = T.if_then_else(r < valid, gcum[start + p0 + r, h, m], T.float32(0))
                        ss[r * (M + 1) + m] = T.if_then_else(r < valid and p0 + r >= window,
                                                  T.Cast("float32", s[start + p0 + r - window, h, m]), T.float32(0))

                    # ---- slot logits, inter-chunk part: (Q S_c) * exp(G) ----
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_m):
                            acc_m[a, b] = T.float32(0)
                    for i0 in T.serial(ceil_div(K, STATE_ROWS)):
                        for j in T.serial(ceil_div(STATE_ROWS * M, THREADS)):
                            # rows past K are clamped to K - 1 and never read
                            state[T.min(j * THREADS + tid, STATE_ROWS * M - 1)] = chunk_k[
                                c, h, T.min(i0 * STATE_ROWS + T.min(j * THREADS + tid, STATE_ROWS * M - 1) // M, K - 1),
                                T.min(j * THREADS + tid, STATE_ROWS * M - 1) % M]
                        for ii in T.serial(STATE_ROWS):
                            if i0 * STATE_ROWS + ii < K:
                                for a in T.unroll(rows):
                                    for b in T.unroll(cols_m):
                                        if tx + TX * b < M:
                                            acc_m[a, b] = acc_m[a, b] + T.Cast("float32", qs[ty + TY * a, i0 * STATE_ROWS + ii]) * state[ii * M + tx + TX * b]
                    # ---- intra-chunk part: X = Q k'^T (causal), then the pairwise decays ----
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_c):
                            acc_c[a, b] = T.float32(0)
                    for i in T.serial(K):
                        for a in T.unroll(rows):
                            for b in T.unroll(cols_c):
                                acc_c[a, b] = acc_c[a, b] + T.Cast("float32", qs[ty + TY * a, i]) * ks[(tx + TX * b) * (K + 1) + i]
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_c):
                            xs[ty + TY * a, tx + TX * b] = T.if_then_else(tx + TX * b <= ty + TY * a, acc_c[a, b], T.float32(0))
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_m):
                            if tx + TX * b < M:
                                acc_m[a, b] = acc_m[a, b] * T.exp(gs[(ty + TY * a) * (M + 1) + tx + TX * b])
                                for tau in T.serial(ty + TY * a + 1):
                                    acc_m[a, b] = acc_m[a, b] + xs[ty + TY * a, tau] * ss[tau * (M + 1) + tx + TX * b] * T.exp(
                                        gs[(ty + TY * a) * (M + 1) + tx + TX * b] - gs[tau * (M + 1) + tx + TX * b])
                                acc_m[a, b] = acc_m[a, b] * scale
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_m):
                            if tx + TX * b < M:
                                ps[ty + TY * a, tx + TX * b] = acc_m[a, b]

                    # ---- softmax over the M slots (the window joins online below) ----
                    if tid < C:
                        red[0] = T.float32(NEG)
                        for m in T.serial(M):
                            red[0] = T.max(red[0], ps[tid, m])
                        red[1] = T.float32(0)
                        for m in T.serial(M):
                            red[1] = red[1] + T.exp(ps[tid, m] - red[0])
                        row_max[tid] = red[0]
                        row_sum[tid] = red[1]
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_m):
                            acc_m[a, b] = T.exp(acc_m[a, b] - row_max[ty + TY * a])
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_m):
                            if tx + TX * b < M:
                                ps[ty + TY * a, tx + TX * b] = acc_m[a, b]

                    # ---- slot read-out: X[t, tau] = sum_m P s'_tau exp(G_t - G_tau) ----
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_c):
                            acc_c[a, b] = T.float32(0)
                            if tx + TX * b <= ty + TY * a:
                                for m in T.serial(M):
                                    acc_c[a, b] = acc_c[a, b] + ps[ty + TY * a, m] * ss[(tx + TX * b) * (M + 1) + m] * T.exp(
                                        gs[(ty + TY * a) * (M + 1) + m] - gs[(tx + TX * b) * (M + 1) + m])
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_c):
                            xs[ty + TY * a, tx + TX * b] = acc_c[a, b]
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_m):
                            if tx + TX * b < M:
                                acc_m[a, b] = acc_m[a, b] * T.exp(gs[(ty + TY * a) * (M + 1) + tx + TX * b])
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_m):
                            if tx + TX * b < M:
                                ps[ty + TY * a, tx + TX * b] = acc_m[a, b]
                    # O = (P exp(G)) R_c + X v'
                    for a in T.unroll(rows):
                        for b in T.unroll(cols_v):
                            acc_v[a, b] = T.float32(0)
                    for m0 in T.serial(ceil_div(M, STATE_ROWS)):
                        for j in T.serial(ceil_div(STATE_ROWS * V, THREADS)):
                            state[T.min(j * THREADS + tid, STATE_ROWS * V - 1)] = chunk_v[
                                c, h, T.min(m0 * STATE_ROWS + T.min(j * THREADS + tid, STATE_ROWS * V - 1) // V, M - 1),
                                T.min(j * THREADS + tid, STATE_ROWS * V - 1) % V]
                        for mm in T.serial(STATE_ROWS):
                            if m0 * STATE_ROWS + mm < M:
                                for a in T.unroll(rows):
                                    for b in T.unroll(cols_v):
                                        if tx + TX * b < V:
                                            acc_v[a, b] = acc_v[a, b] + ps[ty + TY * a, m0 * STATE_ROWS + mm] * state[mm * V + tx + TX * b]
                    for tau in T.serial(C):
                        for a in T.unroll(rows):
                            for b in T.unroll(cols_v):
                                if tx + TX * b < V:
                                    acc_v[a, b] = acc_v[a, b] + xs[ty + TY * a, tau] * T.Cast("float32", vs[tau, tx + TX * b])

                    # ---- window keys j in (p_t - W, p_t], RoPE'd, in tiles of C keys ----
                    for j in T.serial(ceil_div(C * K, THREADS)):
                        r: T.let[T.int32] = T.min(j * THREADS + tid, C * K - 1) // K
                        i: T.let[T.int32] = T.min(j * THREADS + tid, C * K - 1) % K
                        qs[r, i] = T.if_then_else(r < valid, qr[start + p0 + r, hq, i], T.Cast(io_dtype, 0))
                    lo: T.let[T.int32] = T.max(0, p0 - window + 1)  # first key any row can see
                    for kt in T.serial(T.if_then_else(window > 0 and valid > 0, (p0 + valid - lo + C - 1) // C, 0)):
                        for j in T.serial(ceil_div(C * K, THREADS)):
                            r: T.let[T.int32] = T.min(j * THREADS + tid, C * K - 1) // K
                            i: T.let[T.int32] = T.min(j * THREADS + tid, C * K - 1) % K
                            ks[r * (K + 1) + i] = T.if_then_else(lo + kt * C + r < p0 + valid,
                                                      T.Cast("float32", kr[start + lo + kt * C + r, h, i]), T.float32(0))
                        for j in T.serial(ceil_div(C * V, THREADS)):
                            r: T.let[T.int32] = T.min(j * THREADS + tid, C * V - 1) // V
                            e: T.let[T.int32] = T.min(j * THREADS + tid, C * V - 1) % V
                            vs[r, e] = T.if_then_else(lo + kt * C + r < p0 + valid,
                                                      v[start + lo + kt * C + r, h, e], T.Cast(io_dtype, 0))
                        for a in T.unroll(rows):
                            for b in T.unroll(cols_c):
                                acc_c[a, b] = T.float32(0)
                        for i in T.serial(K):
                            for a in T.unroll(rows):
                                for b in T.unroll(cols_c):
                                    acc_c[a, b] = acc_c[a, b] + T.Cast("float32", qs[ty + TY * a, i]) * ks[(tx + TX * b) * (K + 1) + i]
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
                            for b in T.unroll(cols_c):
                                xs[ty + TY * a, tx + TX * b] = acc_c[a, b]
                        if tid < C:
                            red[0] = row_max[tid]
                            for col in T.serial(C):
                                red[0] = T.max(red[0], xs[tid, col])
                            red[1] = row_sum[tid] * T.exp(row_max[tid] - red[0])
                            for col in T.serial(C):
                                red[1] = red[1] + T.exp(xs[tid, col] - red[0])
                            row_rescale[tid] = T.exp(row_max[tid] - red[0])
                            row_max[tid] = red[0]
                            row_sum[tid] = red[1]
                        for a in T.unroll(rows):
                            for b in T.unroll(cols_c):
                                acc_c[a, b] = T.exp(acc_c[a, b] - row_max[ty + TY * a])
                        for a in T.unroll(rows):
                            for b in T.unroll(cols_c):
                                xs[ty + TY * a, tx + TX * b] = acc_c[a, b]
                        for a in T.unroll(rows):
                            for b in T.unroll(cols_v):
                                acc_v[a, b] = acc_v[a, b] * row_rescale[ty + TY * a]
                        for col in T.serial(C):
                            for a in T.unroll(rows):
                                for b in T.unroll(cols_v):
                                    if tx + TX * b < V:
                                        acc_v[a, b] = acc_v[a, b] + xs[ty + TY * a, col] * T.Cast("float32", vs[col, tx + TX * b])

                    for a in T.unroll(rows):
                        for b in T.unroll(cols_v):
                            if ty + TY * a < valid and tx + TX * b < V:
                                o[start + p0 + ty + TY * a, hq, tx + TX * b] = T.Cast(io_dtype, acc_v[a, b] / row_sum[ty + TY * a])

    return func
