"""Prefill output pass: a thread per token of a chunk, one or more query heads per block.

All threads of a block read the same chunk-start state and the same shifted chunk tokens in
the same order, so those loads are warp-wide broadcasts served from L1. Knobs: query heads per
thread block (threadIdx.y), and how far the constant-extent inner loops (over K, M, V) unroll,
which decides whether the per-thread vectors live in registers or in local memory.
"""

from ..base import ScheduleRule, unroll

HEADS_PER_BLOCK = (1, 2, 4, 8)
UNROLL = (0, 16, 64, 256)


class ChunkAttend(ScheduleRule):
    kernels = ("chunk_attend",)

    def schedule(self, sch, knobs):
        block = sch.get_sblock("attend")
        chunk, head, token = sch.get_loops(block)
        heads = int(sch.get(head).extent)
        per_block = knobs.choose([h for h in HEADS_PER_BLOCK if heads % h == 0], 1)
        head_outer, head_inner = sch.split(head, [None, per_block])
        outer = sch.fuse(chunk, head_outer)
        sch.bind(outer, "blockIdx.x")
        sch.bind(head_inner, "threadIdx.y")
        sch.bind(token, "threadIdx.x")
        unroll(sch, outer, knobs.choose(UNROLL, 0))
