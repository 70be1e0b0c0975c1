"""Prefill state pass: the slot memories at the start of every chunk.

Per slot m the two slot memories are independent scalar recurrences (spec, "Long-term
memory"): Hk[i, m] = Hk[i, m] * exp(g_j[m]) + k_j[i] * s_j[m] and
Hv[m, e] = Hv[m, e] * exp(g_j[m]) + s_j[m] * v_j[e], where j = t - W is the token that leaves
the window at step t. Every (sequence, kv head, element) is one serial loop over the sequence,
so the pass is parallel over N * H * M * (K + V) elements with no cross-thread reduction.

The loop stores the state before step t whenever t starts a chunk of C tokens, so that the
output pass can read the state at each chunk start, and the state after the last step
(the final state).
"""

from tvm.script import tirx as T


def slot_state_scan(*, H: int, K: int, V: int, M: int, C: int, kv_dtype: str, gate_dtype: str):
    """Build the state pass for H kv heads, head dims K/V, M slots, chunks of C tokens.

    Arguments of the returned function (packed tokens, ``total`` of them in N sequences):
    k [total, H, K], v [total, H, V], g and s [total, H, M], cu_seqlens [N + 1] and
    chunk_offsets [N + 1] (int32; first global chunk of each sequence), h0k [N, H, K, M] and
    h0v [N, H, M, V] (initial state), then the outputs chunk_k [NC, H, K, M],
    chunk_v [NC, H, M, V], hk [N, H, K, M], hv [N, H, M, V] (float32), and the window W.
    """

    @T.prim_func(s_tir=True)
    def func(
        k_h: T.handle, v_h: T.handle, g_h: T.handle, s_h: T.handle,
        cu_h: T.handle, choff_h: T.handle, h0k_h: T.handle, h0v_h: T.handle,
        chunk_k_h: T.handle, chunk_v_h: T.handle, hk_h: T.handle, hv_h: T.handle,
        window: T.int32,
    ):
        T.func_attr({"global_symbol": "slot_state_scan", "tirx.noalias": True,
                     "nha.kernel": "slot_state_scan"})
        total = T.int32()
        N = T.int32()
        NC = T.int32()
        k = T.match_buffer(k_h, (total, H, K), kv_dtype)
        v = T.match_buffer(v_h, (total, H, V), kv_dtype)
        g = T.match_buffer(g_h, (total, H, M), gate_dtype)
        s = T.match_buffer(s_h, (total, H, M), gate_dtype)
        cu = T.match_buffer(cu_h, (N + 1,), "int32")
        choff = T.match_buffer(choff_h, (N + 1,), "int32")
        h0k = T.match_buffer(h0k_h, (N, H, K, M), "float32")
        h0v = T.match_buffer(h0v_h, (N, H, M, V), "float32")
        chunk_k = T.match_buffer(chunk_k_h, (NC, H, K, M), "float32")
        chunk_v = T.match_buffer(chunk_v_h, (NC, H, M, V), "float32")
        hk = T.match_buffer(hk_h, (N, H, K, M), "float32")
        hv = T.match_buffer(hv_h, (N, H, M, V), "float32")

        for n, h, i, m in T.grid(N, H, K, M):
            with T.sblock("key_state"):
                vn, vh, vi, vm = T.axis.remap("SSSS", [n, h, i, m])
                T.reads(k[0:total, vh, vi], g[0:total, vh, vm], s[0:total, vh, vm], cu[0:N + 1],
                        choff[0:N + 1], h0k[vn, vh, vi, vm])
                T.writes(chunk_k[0:NC, vh, vi, vm], hk[vn, vh, vi, vm])
                acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
                start: T.let[T.int32] = cu[vn]
                acc[0] = h0k[vn, vh, vi, vm]
                for t in T.serial(cu[vn + 1] - start):
                    if t % C == 0:
                        chunk_k[choff[vn] + t // C, vh, vi, vm] = acc[0]
                    if t >= window:
                        acc[0] = acc[0] * T.exp(T.Cast("float32", g[start + t - window, vh, vm])) + (
                            T.Cast("float32", k[start + t - window, vh, vi])
                            * T.Cast("float32", s[start + t - window, vh, vm]))
                hk[vn, vh, vi, vm] = acc[0]

        for n, h, m, e in T.grid(N, H, M, V):
            with T.sblock("value_state"):
                vn, vh, vm, ve = T.axis.remap("SSSS", [n, h, m, e])
                T.reads(v[0:total, vh, ve], g[0:total, vh, vm], s[0:total, vh, vm], cu[0:N + 1],
                        choff[0:N + 1], h0v[vn, vh, vm, ve])
                T.writes(chunk_v[0:NC, vh, vm, ve], hv[vn, vh, vm, ve])
                acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
                start: T.let[T.int32] = cu[vn]
                acc[0] = h0v[vn, vh, vm, ve]
                for t in T.serial(cu[vn + 1] - start):
                    if t % C == 0:
                        chunk_v[choff[vn] + t // C, vh, vm, ve] = acc[0]
                    if t >= window:
                        acc[0] = acc[0] * T.exp(T.Cast("float32", g[start + t - window, vh, vm])) + (
                            T.Cast("float32", s[start + t - window, vh, vm])
                            * T.Cast("float32", v[start + t - window, vh, ve]))
                hv[vn, vh, vm, ve] = acc[0]

    return func
