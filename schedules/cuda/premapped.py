"""Kernels written with their thread mapping (``nha_tvm/kernels/cuda``): nothing to schedule.

Their tile sizes are fixed by the definitions, so they offer the tuner no knobs
(``tunable = False``: ``nha-tune`` skips them). They are compiled without TVM's storage
rewrite: in chunk_attend_cuda it would fold the 16-bit tensor-core operand tiles into fp32
buffers of the same shared memory, which the tensor-core loads (16-bit pointers) cannot
address (seen with WMMA); chunk_state_delta, chunk_state_fused and decode_step_cuda were
checked on the GPU built the same way.
"""

from ..base import ScheduleRule


class PreMapped(ScheduleRule):
    kernels = ("chunk_state_delta", "chunk_state_fused", "chunk_attend_cuda", "decode_step_cuda")
    tunable = False
    pass_config = {"tirx.disable_storage_rewrite": True}

    def schedule(self, sch, knobs):
        pass
