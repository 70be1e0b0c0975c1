"""Gate prefix sums inside each chunk, for the chunked prefill on GPUs.

With the slot inputs shifted by W (spec, "Chunked form": g'_t = g_{t-W}, zero for positions
< W), every chunked pass needs G_t[m] = sum of g'[m] from the chunk start to t. The state pass
and the output pass both read it, so it is computed once: a serial sum over the C tokens of a
chunk per (chunk, kv head, slot), parallel over everything else. The same pass, reading g
anyway, writes the default write strength s = 1 - exp(g) of every token when the caller gave
none (``write_s``; ``write_strength``).

``grouped``: a thread loads the gates of GROUP tokens at a time, from clamped addresses and
none behind a branch, before it sums them, so that they are in flight together. Where the
launch fills the GPU once at most, the plain loop (a load per step of the sum) waits on each
load in turn; where it fills it several times over, the plain loop's many more warps keep
memory busy (the H200's figures and the choice: ``kernel_plan.gates_role``).
"""

from tvm.script import tirx as T

from .write_strength import default_write_strength

GROUP = 32  # tokens whose gates a thread of the grouped variant loads together (128 registers)


def chunk_gate_cumsum(*, H: int, M: int, C: int, gate_dtype: str, grouped: bool = False):
    """Arguments: g [total, H, M], cu_seqlens and chunk_offsets [N + 1], chunk_seq [NC]
    (sequence of each global chunk, N for padding chunks), the outputs gcum [total, H, M]
    (float32) and s [total, H, M] (gate dtype; written only where ``write_s`` is nonzero: the
    caller passes its own s there otherwise), then the window W and write_s."""
    assert not grouped or C % GROUP == 0, "the grouped variant takes whole groups of GROUP tokens"

    @T.prim_func(s_tir=True)
    def func(g_h: T.handle, cu_h: T.handle, choff_h: T.handle, chseq_h: T.handle,
             gcum_h: T.handle, s_h: T.handle, window: T.int32, write_s: T.int32):
        T.func_attr({"global_symbol": "chunk_gate_cumsum", "tirx.noalias": True,
                     "nha.kernel": "chunk_gate_cumsum"})
        total = T.int32()
        bounds = T.int32()  # N + 1
        NC = T.int32()
        g = T.match_buffer(g_h, (total, H, M), gate_dtype)
        cu = T.match_buffer(cu_h, (bounds,), "int32")
        choff = T.match_buffer(choff_h, (bounds,), "int32")
        chseq = T.match_buffer(chseq_h, (NC,), "int32")
        gcum = T.match_buffer(gcum_h, (total, H, M), "float32")
        s = T.match_buffer(s_h, (total, H, M), gate_dtype)

        for c, h, m in T.grid(NC, H, M):
            with T.sblock("cumsum"):
                vc, vh, vm = T.axis.remap("SSS", [c, h, m])
                T.reads(g[0:total, vh, vm], cu[0:bounds], choff[0:bounds], chseq[vc])
                T.writes(gcum[0:total, vh, vm], s[0:total, vh, vm])
                acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
                if grouped:
                    shifted = T.sblock_alloc_buffer((GROUP,), "float32", scope="local")
                    own = T.sblock_alloc_buffer((GROUP,), gate_dtype, scope="local")
                n: T.let[T.int32] = chseq[vc]
                if n < bounds - 1:
                    start: T.let[T.int32] = cu[n]
                    p0: T.let[T.int32] = (vc - choff[n]) * C
                    if grouped:
                        count: T.let[T.int32] = T.min(C, cu[n + 1] - start - p0)
                        acc[0] = T.float32(0)
                        for r0 in T.serial(C // GROUP):
                            for r in T.unroll(GROUP):
                                shifted[r] = T.Cast("float32", g[T.max(T.min(start + p0 + r0 * GROUP + r - window, total - 1), 0), vh, vm])
                            if write_s != 0:  # of the token itself, not the shifted one
                                for r in T.unroll(GROUP):
                                    own[r] = g[T.min(start + p0 + r0 * GROUP + r, total - 1), vh, vm]
                            for r in T.unroll(GROUP):
                                acc[0] = acc[0] + T.if_then_else(p0 + r0 * GROUP + r >= window, shifted[r], T.float32(0))
                                if r0 * GROUP + r < count:
                                    gcum[start + p0 + r0 * GROUP + r, vh, vm] = acc[0]
                            if write_s != 0:
                                for r in T.unroll(GROUP):
                                    if r0 * GROUP + r < count:
                                        s[start + p0 + r0 * GROUP + r, vh, vm] = T.Cast(gate_dtype, default_write_strength(own[r]))
                    else:
                        acc[0] = T.float32(0)
                        for r in T.serial(T.min(C, cu[n + 1] - start - p0)):
                            if p0 + r >= window:
                                acc[0] = acc[0] + T.Cast("float32", g[start + p0 + r - window, vh, vm])
                            gcum[start + p0 + r, vh, vm] = acc[0]
                            if write_s != 0:  # of the token itself, not the shifted one
                                s[start + p0 + r, vh, vm] = T.Cast(gate_dtype, default_write_strength(g[start + p0 + r, vh, vm]))

    return func
