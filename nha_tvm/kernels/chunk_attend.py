"""Prefill output pass: per chunk and query head, slot logits + window logits, one softmax.

With the slot inputs shifted by W (spec, "Chunked form": k'_t = k_{t-W}, g'_t = g_{t-W}, ...;
zero for positions < W), the slot memory after step t inside a chunk that starts at c0 is the
chunk-start state decayed by exp(G_t) plus the chunk's own tokens, G_t[m] being the running sum
of g'[m] from c0 to t. So each token needs only the chunk-start state (from the state pass) and
the chunk's tokens:

    a_t[m] = scale * (exp(G_t[m]) * q_t . S_c[:, m]
                      + sum_{c0 <= tau <= t} (q_t . k'_tau) * s'_tau[m] * exp(G_t[m] - G_tau[m]))
    o_t    = sum_m p_t[m] * (exp(G_t[m]) * R_c[m, :]
                      + sum_tau s'_tau[m] * exp(G_t[m] - G_tau[m]) * v'_tau)
             + sum_{window keys i} p_t[i] * v_i

All exponents are <= 0 (G decreases along the chunk), so nothing overflows. The window keys
are folded into the slot softmax online, one key at a time, so W may be any size.
"""

from tvm.script import tirx as T


def chunk_attend(*, HQ: int, H: int, K: int, V: int, M: int, C: int, io_dtype: str,
                 gate_dtype: str):
    """Build the output pass; see the module docstring for the math.

    Arguments (packed tokens): q, q_rot [total, HQ, K] (q_rot = q with RoPE, or q itself),
    k, k_rot [total, H, K], v [total, H, V], g and s [total, H, M], cu_seqlens and
    chunk_offsets [N + 1], chunk_seq [NC] (sequence of each global chunk, N for padding
    chunks), chunk_k [NC, H, K, M] and chunk_v [NC, H, M, V] (chunk-start states), the output
    o [total, HQ, V], then the window W and the softmax scale.
    """
    group = HQ // H

    @T.prim_func(s_tir=True)
    def func(
        q_h: T.handle, qr_h: T.handle, k_h: T.handle, kr_h: T.handle, v_h: T.handle,
        g_h: T.handle, s_h: T.handle, cu_h: T.handle, choff_h: T.handle, chseq_h: T.handle,
        chunk_k_h: T.handle, chunk_v_h: T.handle, o_h: T.handle,
        window: T.int32, scale: T.float32,
    ):
        T.func_attr({"global_symbol": "chunk_attend", "tirx.noalias": True,
                     "nha.kernel": "chunk_attend"})
        total = T.int32()
        bounds = T.int32()  # N + 1 for N sequences
        NC = T.int32()
        q = T.match_buffer(q_h, (total, HQ, K), io_dtype)
        qr = T.match_buffer(qr_h, (total, HQ, K), io_dtype)
        k = T.match_buffer(k_h, (total, H, K), io_dtype)
        kr = T.match_buffer(kr_h, (total, H, K), io_dtype)
        v = T.match_buffer(v_h, (total, H, V), io_dtype)
        g = T.match_buffer(g_h, (total, H, M), gate_dtype)
        s = T.match_buffer(s_h, (total, H, M), gate_dtype)
        cu = T.match_buffer(cu_h, (bounds,), "int32")
        choff = T.match_buffer(choff_h, (bounds,), "int32")
        chseq = T.match_buffer(chseq_h, (NC,), "int32")
        chunk_k = T.match_buffer(chunk_k_h, (NC, H, K, M), "float32")
        chunk_v = T.match_buffer(chunk_v_h, (NC, H, M, V), "float32")
        o = T.match_buffer(o_h, (total, HQ, V), io_dtype)

        for c, hq, tt in T.grid(NC, HQ, C):
            with T.sblock("attend"):
                vc, vhq, vtt = T.axis.remap("SSS", [c, hq, tt])
                T.reads(q[0:total, vhq, 0:K], qr[0:total, vhq, 0:K], k[0:total, 0:H, 0:K],
                        kr[0:total, 0:H, 0:K], v[0:total, 0:H, 0:V], g[0:total, 0:H, 0:M],
                        s[0:total, 0:H, 0:M], cu[0:bounds], choff[0:bounds], chseq[vc],
                        chunk_k[vc, 0:H, 0:K, 0:M], chunk_v[vc, 0:H, 0:M, 0:V])
                T.writes(o[0:total, vhq, 0:V])
                qf = T.sblock_alloc_buffer((K,), "float32", scope="local")
                gt = T.sblock_alloc_buffer((M,), "float32", scope="local")
                grun = T.sblock_alloc_buffer((M,), "float32", scope="local")
                p = T.sblock_alloc_buffer((M,), "float32", scope="local")
                acc = T.sblock_alloc_buffer((V,), "float32", scope="local")
                # scalars: 0 running max, 1 denominator, 2 dot product, 3 weight, 4 rescale
                sc = T.sblock_alloc_buffer((5,), "float32", scope="local")
                n: T.let[T.int32] = chseq[vc]
                if n < bounds - 1:
                    start: T.let[T.int32] = cu[n]
                    p0: T.let[T.int32] = (vc - choff[n]) * C  # position of the chunk start
                    t: T.let[T.int32] = start + p0 + vtt
                    if t < cu[n + 1]:
                        h: T.let[T.int32] = vhq // group
                        pos: T.let[T.int32] = p0 + vtt
                        for i in T.serial(K):
                            qf[i] = T.Cast("float32", q[t, vhq, i])
                        # G_t: decay of the shifted gates from the chunk start to t
                        for m in T.serial(M):
                            gt[m] = T.float32(0)
                            grun[m] = T.float32(0)
                        for r in T.serial(vtt + 1):
                            if p0 + r >= window:
                                for m in T.serial(M):
                                    gt[m] = gt[m] + T.Cast("float32", g[start + p0 + r - window, h, m])
                        # slot logits: chunk-start state, then the chunk's own shifted tokens
                        for m in T.serial(M):
                            p[m] = T.float32(0)
                        for i, m in T.grid(K, M):
                            p[m] = p[m] + qf[i] * chunk_k[vc, h, i, m]
                        for m in T.serial(M):
                            p[m] = p[m] * T.exp(gt[m])
                        for r in T.serial(vtt + 1):
                            if p0 + r >= window:
                                sc[2] = T.float32(0)
                                for i in T.serial(K):
                                    sc[2] = sc[2] + qf[i] * T.Cast("float32", k[start + p0 + r - window, h, i])
                                for m in T.serial(M):
                                    grun[m] = grun[m] + T.Cast("float32", g[start + p0 + r - window, h, m])
                                    p[m] = p[m] + sc[2] * T.Cast("float32", s[start + p0 + r - window, h, m]) * T.exp(gt[m] - grun[m])
                        sc[0] = T.float32(-3.0e38)
                        for m in T.serial(M):
                            p[m] = p[m] * scale
                            sc[0] = T.max(sc[0], p[m])
                        sc[1] = T.float32(0)
                        for m in T.serial(M):
                            p[m] = T.exp(p[m] - sc[0])
                            sc[1] = sc[1] + p[m]
                        # slot read-out with the same decomposition
                        for e in T.serial(V):
                            acc[e] = T.float32(0)
                        for m in T.serial(M):
                            sc[3] = p[m] * T.exp(gt[m])
                            for e in T.serial(V):
                                acc[e] = acc[e] + sc[3] * chunk_v[vc, h, m, e]
                        for m in T.serial(M):
                            grun[m] = T.float32(0)
                        for r in T.serial(vtt + 1):
                            if p0 + r >= window:
                                sc[3] = T.float32(0)
                                for m in T.serial(M):
                                    grun[m] = grun[m] + T.Cast("float32", g[start + p0 + r - window, h, m])
                                    sc[3] = sc[3] + p[m] * T.Cast("float32", s[start + p0 + r - window, h, m]) * T.exp(gt[m] - grun[m])
                                for e in T.serial(V):
                                    acc[e] = acc[e] + sc[3] * T.Cast("float32", v[start + p0 + r - window, h, e])
                        # window keys t, t-1, ..., t-W+1 (within the sequence), online softmax
                        for w in T.serial(T.min(window, pos + 1)):
                            sc[2] = T.float32(0)
                            for i in T.serial(K):
                                sc[2] = sc[2] + T.Cast("float32", qr[t, vhq, i]) * T.Cast("float32", kr[t - w, h, i])
                            sc[2] = sc[2] * scale
                            if sc[2] > sc[0]:
                                sc[4] = T.exp(sc[0] - sc[2])
                                sc[1] = sc[1] * sc[4]
                                for e in T.serial(V):
                                    acc[e] = acc[e] * sc[4]
                                sc[0] = sc[2]
                            sc[3] = T.exp(sc[2] - sc[0])
                            sc[1] = sc[1] + sc[3]
                            for e in T.serial(V):
                                acc[e] = acc[e] + sc[3] * T.Cast("float32", v[t - w, h, e])
                        for e in T.serial(V):
                            o[t, vhq, e] = T.Cast(io_dtype, acc[e] / sc[1])

    return func
