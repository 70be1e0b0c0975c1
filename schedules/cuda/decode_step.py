"""Decode step: a thread per state element for the slot update and the ring write, a thread
per (sequence, query head) for the read-out; the blocks stay in order, one kernel each."""

from tvm.s_tir import Schedule

from ..base import ScheduleRule, bind_threads, fused_loops, top_blocks


class DecodeStep(ScheduleRule):
    kernels = ("decode_step",)

    def __init__(self, threads: int = 256, readout_threads: int = 32):
        self.threads = threads
        self.readout_threads = readout_threads

    def apply(self, func, target) -> Schedule | None:
        if not self.handles(func):
            return None
        sch = Schedule(func)
        for block in top_blocks(sch):
            name = sch.get(block).name_hint
            threads = self.readout_threads if name in ("attend", "advance") else self.threads
            bind_threads(sch, fused_loops(sch, block), threads)
        return sch
