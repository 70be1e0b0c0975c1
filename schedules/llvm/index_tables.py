"""The prefill's index tables (``chunk_layout``) on CPU: each table's entries in parallel.

A few bytes per token, so there is nothing worth tuning (``tunable = False``).
"""

from ..base import ScheduleRule, top_blocks


class IndexTables(ScheduleRule):
    kernels = ("chunk_layout",)
    tunable = False

    def schedule(self, sch, knobs):
        for block in top_blocks(sch):
            sch.parallel(sch.get_loops(block)[0])
