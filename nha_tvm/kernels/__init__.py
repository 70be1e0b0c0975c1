"""Kernel definitions: unscheduled TensorIR for each phase of NHA.

Each module holds one kernel: a function that takes the static parameters (head counts, head
dims, slots, chunk size, dtypes) and returns a ``PrimFunc`` whose lengths (tokens, sequences,
chunks, batch) stay symbolic, so one compiled module serves every sequence length and batch.
Schedules for each target live in ``nha_tvm.schedules``; nothing here knows about threads,
except the fused GPU kernels of ``kernels/cuda``, which are written with their thread mapping.
"""

from .chunk_attend import chunk_attend
from .chunk_gates import chunk_gate_cumsum
from .chunk_layout import chunk_layout
from .chunk_state_scan import chunk_state_scan
from .cuda.chunk_attend import chunk_attend as chunk_attend_cuda
from .cuda.chunk_state_delta import chunk_state_delta
from .cuda.chunk_state_fused import chunk_state_fused
from .cuda.decode_step import decode_step_cuda
from .decode_step import decode_step
from .rope import rope
from .slot_state_scan import slot_state_scan

KERNELS = {
    "slot_state_scan": slot_state_scan,
    "chunk_attend": chunk_attend,
    "rope": rope,
    "decode_step": decode_step,
    "chunk_gate_cumsum": chunk_gate_cumsum,
    "chunk_layout": chunk_layout,
    "chunk_state_scan": chunk_state_scan,
    "chunk_state_delta": chunk_state_delta,
    "chunk_state_fused": chunk_state_fused,
    "chunk_attend_cuda": chunk_attend_cuda,
    "decode_step_cuda": decode_step_cuda,
}

__all__ = ["KERNELS"]
