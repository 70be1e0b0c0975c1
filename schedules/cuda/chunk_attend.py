"""Prefill output pass: a thread block per (chunk, query head), a thread per token.

All threads of a block read the same chunk-start state and the same shifted chunk tokens in
the same order, so those loads are warp-wide broadcasts served from L1.
"""

from tvm.s_tir import Schedule

from ..base import ScheduleRule, fused_loops


class ChunkAttend(ScheduleRule):
    kernels = ("chunk_attend",)

    def apply(self, func, target) -> Schedule | None:
        if not self.handles(func):
            return None
        sch = Schedule(func)
        block = sch.get_sblock("attend")
        chunk_head = fused_loops(sch, block, 2)
        token = sch.get_loops(block)[1]
        sch.bind(chunk_head, "blockIdx.x")
        sch.bind(token, "threadIdx.x")
        return sch
