"""Where every chunk and token of a packed batch sits: the index tables of a prefill.

From cu_seqlens [N + 1] alone: per sequence the index of its first chunk (chunk_offsets, the
prefix sums of ceil(len_n / C)), per chunk its sequence (chunk_seq; N for the padding chunks
of the upper bound total // C + N that the host allocates without reading cu_seqlens), and per
token its position inside its sequence (RoPE's angle). One launch per table on the device, so
a prefill makes no host sync and few launches for its bookkeeping.
"""

from tvm.script import tirx as T


@T.macro
def last_at_most(table, count, value, lo, hi):
    """lo[0] = the largest i < count with table[i] <= value (table ascending, table[0] <= value)."""
    lo[0] = 0
    hi[0] = count - 1
    while lo[0] < hi[0]:
        if table[(lo[0] + hi[0] + 1) // 2] <= value:
            lo[0] = (lo[0] + hi[0] + 1) // 2
        else:
            hi[0] = (lo[0] + hi[0] + 1) // 2 - 1


def chunk_layout(*, C: int):
    """Arguments: cu_seqlens [N + 1] (int32), then the outputs chunk_offsets [N + 1],
    chunk_seq [NC] and positions [total] (int32)."""

    @T.prim_func(s_tir=True)
    def func(cu_h: T.handle, choff_h: T.handle, chseq_h: T.handle, pos_h: T.handle):
        T.func_attr({"global_symbol": "chunk_layout", "tirx.noalias": True,
                     "nha.kernel": "chunk_layout"})
        total = T.int32()
        bounds = T.int32()  # N + 1
        NC = T.int32()
        cu = T.match_buffer(cu_h, (bounds,), "int32")
        choff = T.match_buffer(choff_h, (bounds,), "int32")
        chseq = T.match_buffer(chseq_h, (NC,), "int32")
        pos = T.match_buffer(pos_h, (total,), "int32")

        for n in T.serial(bounds):
            with T.sblock("chunk_offsets"):
                vn = T.axis.spatial(bounds, n)
                T.reads(cu[0:bounds])
                T.writes(choff[vn])
                acc = T.sblock_alloc_buffer((1,), "int32", scope="local")
                # a sum over the sequences before: O(N) per entry, O(N^2) in all (small next
                # to the prefill for batches of few sequences; very many would want a scan)
                acc[0] = 0
                for j in T.serial(vn):
                    acc[0] = acc[0] + (cu[j + 1] - cu[j] + C - 1) // C
                choff[vn] = acc[0]
        for c in T.serial(NC):
            with T.sblock("chunk_seq"):
                vc = T.axis.spatial(NC, c)
                T.reads(choff[0:bounds])
                T.writes(chseq[vc])
                lo = T.sblock_alloc_buffer((1,), "int32", scope="local")
                hi = T.sblock_alloc_buffer((1,), "int32", scope="local")
                # the last sequence whose chunks start at or before c (empty sequences own no
                # chunk and are passed over; chunks past the last sequence's get N)
                last_at_most(choff, bounds, vc, lo, hi)
                chseq[vc] = lo[0]
        for t in T.serial(total):
            with T.sblock("positions"):
                vt = T.axis.spatial(total, t)
                T.reads(cu[0:bounds])
                T.writes(pos[vt])
                lo = T.sblock_alloc_buffer((1,), "int32", scope="local")
                hi = T.sblock_alloc_buffer((1,), "int32", scope="local")
                last_at_most(cu, bounds, vt, lo, hi)  # the sequence holding token t
                pos[vt] = vt - cu[lo[0]]

    return func
