"""One GPU thread per output element, for kernels whose every block is a spatial loop nest.

The state passes are sets of independent serial recurrences (one per state element, over
tokens or over chunks), the gate prefix sums one serial sum per (chunk, head, slot), and RoPE
is elementwise: both just need enough threads, consecutive threads on the innermost
(contiguous) axis so that loads and stores coalesce. Knob: threads per block.
"""

from ..base import ScheduleRule, bind_threads, fused_loops, top_blocks

THREADS = (64, 128, 256, 512, 1024)


class ThreadPerElement(ScheduleRule):
    kernels = ("slot_state_scan", "rope", "chunk_gate_cumsum", "chunk_state_scan")

    def schedule(self, sch, knobs):
        threads = knobs.choose(THREADS, 256)
        for block in top_blocks(sch):
            bind_threads(sch, fused_loops(sch, block), threads)
