"""Kernels written with their thread mapping (``nha_tvm/kernels/cuda``): nothing to schedule.

Their tile sizes are fixed by the definitions, so they offer the tuner no knobs
(``tunable = False``: ``nha-tune`` skips them).
"""

from ..base import ScheduleRule


class PreMapped(ScheduleRule):
    kernels = ("chunk_state_delta", "chunk_attend_cuda")
    tunable = False

    def schedule(self, sch, knobs):
        pass
