"""One GPU thread per output element, for kernels whose every block is a spatial loop nest.

The state pass is a set of independent serial recurrences (one per state element) and RoPE
is elementwise: both just need enough threads, consecutive threads on the innermost
(contiguous) axis so that loads and stores coalesce.
"""

from tvm.s_tir import Schedule

from ..base import ScheduleRule, bind_threads, fused_loops, top_blocks


class ThreadPerElement(ScheduleRule):
    kernels = ("slot_state_scan", "rope")

    def __init__(self, threads: int = 256):
        self.threads = threads

    def apply(self, func, target) -> Schedule | None:
        if not self.handles(func):
            return None
        sch = Schedule(func)
        for block in top_blocks(sch):
            bind_threads(sch, fused_loops(sch, block), self.threads)
        return sch
