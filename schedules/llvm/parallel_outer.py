"""CPU: the outer spatial loops of every block, fused, run on a parallel thread pool.

Every NHA kernel is a spatial loop nest around serial work (a recurrence, a token's read-out),
so parallel outer loops are the whole CPU schedule. The innermost spatial loop of the state
pass and of RoPE stays serial inside each task, which keeps the tasks large. Knob: how far the
constant-extent inner loops unroll.
"""

from ..base import ScheduleRule, fused_loops, top_blocks, unroll

# Loops fused into the parallel loop, per kernel and block; the rest run serially per task.
PARALLEL_DEPTH = {
    "slot_state_scan": {"key_state": 3, "value_state": 3},
    "chunk_attend": {"attend": 2},
    "rope": {"rope": 1},
    "chunk_gate_cumsum": {"cumsum": 2},
    "chunk_state_scan": {"key_chunks": 3, "value_chunks": 3},
    "decode_step": {"key_update": 2, "value_update": 2, "ring_write_k": 2, "ring_write_v": 2,
                    "ring_write_gate": 2, "attend": 2, "advance": 1},
}
UNROLL = (0, 8, 32, 128)


class ParallelOuter(ScheduleRule):
    kernels = tuple(PARALLEL_DEPTH)

    def schedule(self, sch, knobs):
        depths = PARALLEL_DEPTH[str(sch.mod["main"].attrs["nha.kernel"])]
        max_step = knobs.choose(UNROLL, 0)
        for block in top_blocks(sch):
            outer = fused_loops(sch, block, depths[sch.get(block).name_hint])
            sch.parallel(outer)
            unroll(sch, outer, max_step)
