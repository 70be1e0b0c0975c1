"""Decode step: a thread per state element for the slot update and the ring write, a thread
per (sequence, query head) for the read-out; the blocks stay in order, one kernel each.
Knobs: threads per block of the element-wise kernels and of the read-out, read-out unroll."""

from ..base import ScheduleRule, bind_threads, fused_loops, top_blocks, unroll

THREADS = (64, 128, 256, 512, 1024)
READOUT_THREADS = (16, 32, 64, 128)
UNROLL = (0, 16, 64, 256)


class DecodeStep(ScheduleRule):
    kernels = ("decode_step",)

    def schedule(self, sch, knobs):
        threads = knobs.choose(THREADS, 256)
        readout_threads = knobs.choose(READOUT_THREADS, 32)
        readout_unroll = knobs.choose(UNROLL, 0)
        for block in top_blocks(sch):
            name = sch.get(block).name_hint
            if name == "attend":
                thread_loop = bind_threads(sch, fused_loops(sch, block), readout_threads)
                unroll(sch, thread_loop, readout_unroll)
            else:
                bind_threads(sch, fused_loops(sch, block), 32 if name == "advance" else threads)
