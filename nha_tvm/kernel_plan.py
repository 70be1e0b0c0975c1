"""Which compiled kernels, with which static parameters, serve a model shape on an arch.

The torch ops request exactly these; ``nha-tune`` tunes them and ``nha-build`` packages them,
so all three agree by construction. A prefill plan is one of two algorithms, told apart by
its roles:

- ``chunked`` (CUDA): gate prefix sums per chunk, the per-chunk state additions (a block per
  chunk and kv head), a scan of the states over chunks, and the output pass with a thread
  block per chunk and query head (kernels/cuda), in a variant for long windows;
- ``portable`` (CPU, and GPUs whose shared memory cannot hold the output pass's tiles): the
  state pass as a serial recurrence per state element, and an output pass with a thread per
  token.

A decode step is likewise the fused CUDA kernel or the portable one.
"""

import functools
import logging
import math
from collections.abc import Mapping
from types import MappingProxyType

from tvm.s_tir import Schedule

from nha_tvm.schedules import CHUNK_SIZE

from .kernels.cuda.chunk_attend import shared_bytes, state_dtype, uses_tensor_cores
from .kernels.cuda.chunk_state_fused import fused_state_applies, fused_state_blocks
from .kernels.cuda.decode_step import decode_step_cuda
from .kernels.cuda.layout import STATIC_SHARED_LIMIT, ceil_div
from .kernels.cuda.rope_rows import rotates_in_registers
from .targets import max_shared_bytes

log = logging.getLogger(__name__)

LONG_WINDOW_CHUNKS = 4  # windows of this many chunks or more take the output pass's attend_long


@functools.lru_cache(maxsize=None)
def prefill_algorithm(*, arch: str, K: int, V: int, M: int, io_dtype: str) -> str:
    if arch == "cpu":
        return "portable"
    needed = shared_bytes(K=K, V=V, M=M, C=CHUNK_SIZE, io_dtype=io_dtype)
    if needed > max_shared_bytes(arch):
        log.info("nha_tvm: the chunked prefill needs %d bytes of shared memory per block at K=%d, "
                 "V=%d, M=%d, %s; %s offers %d: portable kernels", needed, K, V, M, io_dtype, arch,
                 max_shared_bytes(arch))
        return "portable"
    return "chunked"


@functools.lru_cache(maxsize=None)
def prefill_kernels(*, HQ: int, H: int, K: int, V: int, M: int, io_dtype: str,
                    gate_dtype: str, arch: str) -> Mapping[str, tuple[str, dict]]:
    """Role -> (kernel, static params) for a prefill on ``arch``. Both algorithms start with
    the index tables of the packed batch (``chunk_layout``); the RoPE kernels rotate the queries
    and the keys when RoPE is on and the output pass does not rotate them itself (``rope_inside``).
    Memoized (every prefill call asks, and the answer took 6 us to build), hence read-only,
    the params dicts inside it too: callers copy before they change one."""
    return MappingProxyType(_prefill_kernels(HQ=HQ, H=H, K=K, V=V, M=M, io_dtype=io_dtype,
                                             gate_dtype=gate_dtype, arch=arch))


def _prefill_kernels(*, HQ, H, K, V, M, io_dtype, gate_dtype, arch) -> dict[str, tuple[str, dict]]:
    C = CHUNK_SIZE
    layout = {"layout": ("chunk_layout", dict(C=C))}
    rope = {"rope_q": ("rope", dict(heads=HQ, K=K, io_dtype=io_dtype)),
            "rope_k": ("rope", dict(heads=H, K=K, io_dtype=io_dtype))}
    if prefill_algorithm(arch=arch, K=K, V=V, M=M, io_dtype=io_dtype) == "portable":
        return {
            **layout,
            "state": ("slot_state_scan", dict(H=H, K=K, V=V, M=M, C=C, kv_dtype=io_dtype,
                                              gate_dtype=gate_dtype)),
            **rope,
            "attend": ("chunk_attend", dict(HQ=HQ, H=H, K=K, V=V, M=M, C=C, io_dtype=io_dtype,
                                            gate_dtype=gate_dtype)),
        }
    start_dtype = state_dtype(K=K, V=V, M=M, C=C, io_dtype=io_dtype)
    # the additions and the carry in one pass (no float32 additions through global memory),
    # where the output pass reads 16-bit chunk-start states (its slots on tensor cores, e.g.
    # not M = 16 or 48): the fused pass has not run with float32 ones
    if fused_state_applies(K=K, V=V, M=M, kv_dtype=io_dtype) and start_dtype == io_dtype:
        fused = dict(H=H, K=K, V=V, M=M, C=C, kv_dtype=io_dtype, gate_dtype=gate_dtype, state_dtype=start_dtype)
        states = {"state_fused": ("chunk_state_fused", fused),
                  "state_fused_wide": ("chunk_state_fused", dict(fused, blocks_per_sm=2))}
    else:
        states = {
            "state_delta": ("chunk_state_delta", dict(H=H, K=K, V=V, M=M, C=C, kv_dtype=io_dtype,
                                                      gate_dtype=gate_dtype)),
            "state_scan": ("chunk_state_scan", dict(H=H, K=K, V=V, M=M, C=C, state_dtype=start_dtype)),
        }
    attend = dict(HQ=HQ, H=H, K=K, V=V, M=M, C=C, io_dtype=io_dtype, gate_dtype=gate_dtype)
    tensor_cores = uses_tensor_cores(K=K, V=V, C=C, io_dtype=io_dtype)
    # short windows rotate their few key tiles as they stage them (no RoPE kernels, no rotated
    # copies of q and k); long ones would rotate each key tile once per query chunk, and take
    # the copies the RoPE kernels write (one sin / cos per token and pair for all heads)
    rope_inside = tensor_cores and rotates_in_registers(width=K, rows=C)
    return {
        **layout,
        "gates": ("chunk_gate_cumsum", dict(H=H, M=M, C=C, gate_dtype=gate_dtype)),
        "gates_grouped": ("chunk_gate_cumsum", dict(H=H, M=M, C=C, gate_dtype=gate_dtype, grouped=True)),
        **states,
        **rope,
        "attend": ("chunk_attend_cuda", dict(attend, rope_inside=True) if rope_inside else attend),
        **({"attend_long": ("chunk_attend_cuda", dict(attend, values_ahead=True))} if tensor_cores else {}),
    }


def attend_role(plan: Mapping, window: int) -> str:
    """The plan's output pass for ``window``: from LONG_WINDOW_CHUNKS chunks on, the variant
    whose window loop loads value tiles a tile ahead (H200: 9 % faster at W = T = 8192, 1 % at
    W = 512, 4 % slower at W = 64, where the tiles past the last one it loads are a third of its
    window's loads; BENCHMARKS.md) and reads RoPE'd copies of q and k (rotating each key tile
    once per query chunk would cost more than the RoPE kernels at such windows)."""
    return "attend_long" if "attend_long" in plan and window >= LONG_WINDOW_CHUNKS * CHUNK_SIZE else "attend"


def gates_role(*, chunks: int, H: int, M: int, sms: int, threads_per_sm: int) -> str:
    """The gate pass's role for ``chunks`` chunks on a GPU of ``sms`` SMs holding
    ``threads_per_sm`` resident threads each: where the plain pass's threads (one per chunk, kv
    head and slot) fill every SM once at most, the variant that loads a group of tokens' gates
    together (H200, H = 16, M = 64: 10.6 us against 19.0 at T = 2048; 30.4 against 31.4 at 8192,
    within the next run's noise; slower past that, 114.6 against 108.2 at 32768;
    ``kernels/chunk_gates.py``). The threshold between 129 and 264 chunks was not measured."""
    return "gates_grouped" if chunks * H * M <= threads_per_sm * sms else "gates"


def state_fused_role(*, N: int, H: int, M: int, sms: int) -> str:
    """The fused state pass's role for a batch of N sequences on a GPU of ``sms`` SMs: where
    its blocks fill two waves of two blocks per SM or more, the variant with launch bounds of
    two blocks per SM (H200: 7 % faster at B = 8, T = 4096, H = 16, M = 64; 19 % slower at B = 1, where
    its 128 blocks have no SM to share; BENCHMARKS.md)."""
    return "state_fused_wide" if fused_state_blocks(N=N, H=H, M=M) >= 4 * sms else "state_fused"


def decode_kernel(*, HQ: int, H: int, K: int, V: int, M: int, io_dtype: str,
                  gate_dtype: str, arch: str) -> tuple[str, dict]:
    """On CUDA the fused step (a block per sequence and kv head, the state in shared memory)
    where its buffers fit; else the portable step."""
    params = dict(HQ=HQ, H=H, K=K, V=V, M=M, io_dtype=io_dtype, gate_dtype=gate_dtype)
    if arch != "cpu" and _fused_decode_fits(arch, **params):
        return "decode_step_cuda", params
    return "decode_step", params


@functools.lru_cache(maxsize=None)
def _fused_decode_fits(arch: str, **params) -> bool:
    """Whether the fused step's shared buffers launch on ``arch`` (``launchable``)."""
    try:  # the definition refuses shapes it cannot lay out
        func = decode_step_cuda(**params)
    except ValueError:
        return False
    static, dynamic = shared_allocations(func, "shared"), shared_allocations(func, "shared.dyn")
    return launchable(static, dynamic, arch)


def launchable(static: int, dynamic: int, arch: str) -> bool:
    """Whether a block with these bytes of static and dynamic shared memory launches on ``arch``
    through TVM's CUDA runtime: static within 48 KB, all within the arch's limit, and past
    48 KB in all only with a dynamic part of 48 KB or more (TVM's runtime opts a kernel into
    more than 48 KB only then; otherwise the launch fails with CUDA_ERROR_INVALID_VALUE)."""
    return static <= STATIC_SHARED_LIMIT and static + dynamic <= max_shared_bytes(arch) and (
        static + dynamic <= STATIC_SHARED_LIMIT or dynamic >= STATIC_SHARED_LIMIT)


def shared_allocations(func, scope: str) -> int:
    """Bytes of the buffers ``func``'s blocks allocate in ``scope``, each rounded up to the
    64-byte alignment the CUDA code generator gives it."""
    sch = Schedule(func)
    total, blocks = 0, [sch.get_sblock("root")]
    while blocks:
        block = blocks.pop()
        for buf in sch.get(block).alloc_buffers:
            if buf.scope() == scope:
                size = math.prod(int(d) for d in buf.shape) * buf.dtype.bits // 8
                total += ceil_div(size, 64) * 64
        blocks.extend(sch.get_child_blocks(block))
    return total
