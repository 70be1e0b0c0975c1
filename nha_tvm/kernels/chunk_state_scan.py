"""Chunked state pass, second half: carry the slot states across chunks.

The first half (``kernels/cuda/chunk_state_delta.py``) leaves in chunk_k[c] / chunk_v[c] what
chunk c adds to the slot memories, already decayed to the chunk's end:
dS_c = sum_tau outer(k'_tau, s'_tau * exp(G_last - G_tau)) (spec, "Chunked form"). Then
S_{c+1} = S_c * exp(G_last[m]) + dS_c is one scalar recurrence per state element over the T/C
chunks of a sequence; this pass runs it and overwrites each chunk's entry with the state at the
chunk's start (what the output pass reads), in place, and writes the final state.
"""

from tvm.script import tirx as T

# chunks whose loads are issued together: the loads do not depend on the running state, so a
# thread keeps UNROLL of them in flight instead of waiting for each in turn
UNROLL = 8


def chunk_state_scan(*, H: int, K: int, V: int, M: int, C: int):
    """Arguments: gcum [total, H, M] (gate prefix sums inside chunks), cu_seqlens and
    chunk_offsets [N + 1], h0k [N, H, K, M], h0v [N, H, M, V] (initial state), chunk_k
    [NC, H, K, M] and chunk_v [NC, H, M, V] (per-chunk additions in, chunk-start states out),
    then the outputs hk [N, H, K, M], hv [N, H, M, V] (float32)."""

    @T.macro
    def carry(chunk, h0, out, gcum, cu, choff, vn, vh, row, col, vm):
        """One state element [row, col] of sequence vn, head vh (slot vm) across its chunks."""
        acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
        add = T.sblock_alloc_buffer((UNROLL,), "float32", scope="local")
        decay = T.sblock_alloc_buffer((UNROLL,), "float32", scope="local")
        start: T.let[T.int32] = cu[vn]
        length: T.let[T.int32] = cu[vn + 1] - start
        chunks: T.let[T.int32] = (length + C - 1) // C
        acc[0] = h0[vn, vh, row, col]
        for group in T.serial((chunks + UNROLL - 1) // UNROLL):
            for u in T.unroll(UNROLL):
                add[u] = chunk[choff[vn] + T.min(group * UNROLL + u, chunks - 1), vh, row, col]
                decay[u] = gcum[start + T.min((T.min(group * UNROLL + u, chunks - 1) + 1) * C, length) - 1, vh, vm]
            for u in T.unroll(UNROLL):
                if group * UNROLL + u < chunks:
                    chunk[choff[vn] + group * UNROLL + u, vh, row, col] = acc[0]
                    acc[0] = acc[0] * T.exp(decay[u]) + add[u]
        out[vn, vh, row, col] = acc[0]

    @T.prim_func(s_tir=True)
    def func(gcum_h: T.handle, cu_h: T.handle, choff_h: T.handle, h0k_h: T.handle,
             h0v_h: T.handle, chunk_k_h: T.handle, chunk_v_h: T.handle, hk_h: T.handle,
             hv_h: T.handle):
        T.func_attr({"global_symbol": "chunk_state_scan", "tirx.noalias": True,
                     "nha.kernel": "chunk_state_scan"})
        total = T.int32()
        N = T.int32()
        NC = T.int32()
        gcum = T.match_buffer(gcum_h, (total, H, M), "float32")
        cu = T.match_buffer(cu_h, (N + 1,), "int32")
        choff = T.match_buffer(choff_h, (N + 1,), "int32")
        h0k = T.match_buffer(h0k_h, (N, H, K, M), "float32")
        h0v = T.match_buffer(h0v_h, (N, H, M, V), "float32")
        chunk_k = T.match_buffer(chunk_k_h, (NC, H, K, M), "float32")
        chunk_v = T.match_buffer(chunk_v_h, (NC, H, M, V), "float32")
        hk = T.match_buffer(hk_h, (N, H, K, M), "float32")
        hv = T.match_buffer(hv_h, (N, H, M, V), "float32")

        for n, h, i, m in T.grid(N, H, K, M):
            with T.sblock("key_chunks"):
                vn, vh, vi, vm = T.axis.remap("SSSS", [n, h, i, m])
                # chunk_k is read and rewritten element by element by one thread
                T.reads(gcum[0:total, vh, vm], cu[0:N + 1], choff[0:N + 1], h0k[vn, vh, vi, vm])
                T.writes(chunk_k[0:NC, vh, vi, vm], hk[vn, vh, vi, vm])
                carry(chunk_k, h0k, hk, gcum, cu, choff, vn, vh, vi, vm, vm)

        for n, h, m, e in T.grid(N, H, M, V):
            with T.sblock("value_chunks"):
                vn, vh, vm, ve = T.axis.remap("SSSS", [n, h, m, e])
                T.reads(gcum[0:total, vh, vm], cu[0:N + 1], choff[0:N + 1], h0v[vn, vh, vm, ve])
                T.writes(chunk_v[0:NC, vh, vm, ve], hv[vn, vh, vm, ve])
                carry(chunk_v, h0v, hv, gcum, cu, choff, vn, vh, vm, ve, vm)

    return func
