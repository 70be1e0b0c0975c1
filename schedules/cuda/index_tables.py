"""The prefill's index tables (``chunk_layout``): a thread per table entry.

Each entry is a short search or sum over cu_seqlens, and the whole kernel moves a few bytes
per token, so there is nothing worth tuning (``tunable = False``: ``nha-tune`` skips it).
"""

from ..base import ScheduleRule, bind_threads, top_blocks

THREADS = 256


class IndexTables(ScheduleRule):
    kernels = ("chunk_layout",)
    tunable = False

    def schedule(self, sch, knobs):
        for block in top_blocks(sch):
            bind_threads(sch, sch.get_loops(block)[0], THREADS)
