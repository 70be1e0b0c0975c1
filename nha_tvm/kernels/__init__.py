"""Kernel definitions: unscheduled TensorIR for each phase of NHA.

Each module holds one kernel: a function that takes the static parameters (head counts, head
dims, slots, chunk size, dtypes) and returns a ``PrimFunc`` whose lengths (tokens, sequences,
chunks, batch) stay symbolic, so one compiled module serves every sequence length and batch.
Schedules for each target live in ``nha_tvm.schedules``; nothing here knows about threads.
"""

from .chunk_attend import chunk_attend
from .decode_step import decode_step
from .rope import rope
from .slot_state_scan import slot_state_scan

KERNELS = {
    "slot_state_scan": slot_state_scan,
    "chunk_attend": chunk_attend,
    "rope": rope,
    "decode_step": decode_step,
}

__all__ = ["KERNELS", "chunk_attend", "decode_step", "rope", "slot_state_scan"]
