"""Chunked state pass, second half: carry the slot states across chunks.

The first half (``kernels/cuda/chunk_state_delta.py``) leaves in delta_k[c] / delta_v[c] what
chunk c adds to the slot memories, already decayed to the chunk's end:
dS_c = sum_tau outer(k'_tau, s'_tau * exp(G_last - G_tau)) (spec, "Chunked form"). Then
S_{c+1} = S_c * exp(G_last[m]) + dS_c is one scalar recurrence per state element over the T/C
chunks of a sequence; this pass runs it in float32, writes the state at each chunk's start
(what the output pass reads) into start_k[c] / start_v[c], and writes the final state.

The chunk-start states may be stored in 16 bits (``state_dtype``): the output pass then reads
them as tensor-core operands, and they cost half the traffic. The recurrence itself and the
final state stay float32, so no rounding accumulates from chunk to chunk.
"""

from tvm.script import tirx as T

# chunks whose loads are issued together: the loads do not depend on the running state, so a
# thread keeps UNROLL of them in flight instead of waiting for each in turn (of 8, 16 and 32,
# 32 measured fastest on an H200; BENCHMARKS.md)
UNROLL = 32


def chunk_state_scan(*, H: int, K: int, V: int, M: int, C: int, state_dtype: str):
    """Arguments: gcum [total, H, M] (gate prefix sums inside chunks), cu_seqlens and
    chunk_offsets [N + 1], h0k [N, H, K, M], h0v [N, H, M, V] (initial state), delta_k
    [NC, H, K, M] and delta_v [NC, H, M, V] (float32 per-chunk additions), then the outputs
    start_k [NC, H, K, M] and start_v [NC, H, M, V] (chunk-start states, ``state_dtype``),
    hk [N, H, K, M] and hv [N, H, M, V] (float32 final states)."""

    @T.macro
    def carry(delta, start_state, h0, out, gcum, cu, choff, vn, vh, row, col, vm):
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
                add[u] = delta[choff[vn] + T.min(group * UNROLL + u, chunks - 1), vh, row, col]
                decay[u] = gcum[start + T.min((T.min(group * UNROLL + u, chunks - 1) + 1) * C, length) - 1, vh, vm]
            for u in T.unroll(UNROLL):
                if group * UNROLL + u < chunks:
                    start_state[choff[vn] + group * UNROLL + u, vh, row, col] = T.Cast(state_dtype, acc[0])
                    acc[0] = acc[0] * T.exp(decay[u]) + add[u]
        out[vn, vh, row, col] = acc[0]

    @T.prim_func(s_tir=True)
    def func(gcum_h: T.handle, cu_h: T.handle, choff_h: T.handle, h0k_h: T.handle,
             h0v_h: T.handle, delta_k_h: T.handle, delta_v_h: T.handle, start_k_h: T.handle,
             start_v_h: T.handle, hk_h: T.handle, hv_h: T.handle):
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
        delta_k = T.match_buffer(delta_k_h, (NC, H, K, M), "float32")
        delta_v = T.match_buffer(delta_v_h, (NC, H, M, V), "float32")
        start_k = T.match_buffer(start_k_h, (NC, H, K, M), state_dtype)
        start_v = T.match_buffer(start_v_h, (NC, H, M, V), state_dtype)
        hk = T.match_buffer(hk_h, (N, H, K, M), "float32")
        hv = T.match_buffer(hv_h, (N, H, M, V), "float32")

        for n, h, i, m in T.grid(N, H, K, M):
            with T.sblock("key_chunks"):
                vn, vh, vi, vm = T.axis.remap("SSSS", [n, h, i, m])
                T.reads(gcum[0:total, vh, vm], cu[0:N + 1], choff[0:N + 1], h0k[vn, vh, vi, vm],
                        delta_k[0:NC, vh, vi, vm])
                T.writes(start_k[0:NC, vh, vi, vm], hk[vn, vh, vi, vm])
                carry(delta_k, start_k, h0k, hk, gcum, cu, choff, vn, vh, vi, vm, vm)

        for n, h, m, e in T.grid(N, H, M, V):
            with T.sblock("value_chunks"):
                vn, vh, vm, ve = T.axis.remap("SSSS", [n, h, m, e])
                T.reads(gcum[0:total, vh, vm], cu[0:N + 1], choff[0:N + 1], h0v[vn, vh, vm, ve],
                        delta_v[0:NC, vh, vm, ve])
                T.writes(start_v[0:NC, vh, vm, ve], hv[vn, vh, vm, ve])
                carry(delta_v, start_v, h0v, hv, gcum, cu, choff, vn, vh, vm, ve, vm)

    return func
