"""Which compiled kernels, with which static parameters, serve a model shape on an arch.

The torch ops request exactly these; ``nha-tune`` tunes them and ``nha-build`` packages them,
so all three agree by construction. A prefill plan is one of two algorithms, told apart by
its roles:

- ``chunked`` (CUDA): gate prefix sums per chunk, the per-chunk state additions (a block per
  chunk), a scan of the states over chunks, and the output pass with a thread block per
  chunk and query head (kernels/cuda);
- ``portable`` (CPU, and GPUs whose shared memory cannot hold the output pass's tiles): the
  state pass as a serial recurrence per state element, and an output pass with a thread per
  token.

A decode step is likewise the fused CUDA kernel or the portable one.
"""

import functools

from nha_tvm.schedules import CHUNK_SIZE

from .kernels.cuda.chunk_attend import shared_bytes
from .kernels.cuda.decode_step import decode_step_cuda
from .targets import max_shared_bytes

PORTABLE_ROLES = ("state", "rope_q", "rope_k", "attend")
CHUNKED_ROLES = ("gates", "state_delta", "state_scan", "rope_q", "rope_k", "attend")


def prefill_algorithm(*, arch: str, K: int, V: int, M: int, io_dtype: str) -> str:
    if arch == "cpu":
        return "portable"
    fits = shared_bytes(K=K, V=V, M=M, C=CHUNK_SIZE, io_dtype=io_dtype) <= max_shared_bytes(arch)
    return "chunked" if fits else "portable"


def prefill_kernels(*, HQ: int, H: int, K: int, V: int, M: int, io_dtype: str,
                    gate_dtype: str, arch: str) -> dict[str, tuple[str, dict]]:
    """Role -> (kernel, static params) for a prefill on ``arch``. RoPE of the queries and of
    the keys is used when RoPE is on."""
    C = CHUNK_SIZE
    rope = {"rope_q": ("rope", dict(heads=HQ, K=K, io_dtype=io_dtype)),
            "rope_k": ("rope", dict(heads=H, K=K, io_dtype=io_dtype))}
    if prefill_algorithm(arch=arch, K=K, V=V, M=M, io_dtype=io_dtype) == "portable":
        return {
            "state": ("slot_state_scan", dict(H=H, K=K, V=V, M=M, C=C, kv_dtype=io_dtype,
                                              gate_dtype=gate_dtype)),
            **rope,
            "attend": ("chunk_attend", dict(HQ=HQ, H=H, K=K, V=V, M=M, C=C, io_dtype=io_dtype,
                                            gate_dtype=gate_dtype)),
        }
    return {
        "gates": ("chunk_gate_cumsum", dict(H=H, M=M, C=C, gate_dtype=gate_dtype)),
        "state_delta": ("chunk_state_delta", dict(H=H, K=K, V=V, M=M, C=C, kv_dtype=io_dtype,
                                                  gate_dtype=gate_dtype)),
        "state_scan": ("chunk_state_scan", dict(H=H, K=K, V=V, M=M, C=C)),
        **rope,
        "attend": ("chunk_attend_cuda", dict(HQ=HQ, H=H, K=K, V=V, M=M, C=C, io_dtype=io_dtype,
                                             gate_dtype=gate_dtype)),
    }


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
    if 4 * params["M"] * (params["K"] + params["V"]) > max_shared_bytes(arch):  # the slot states
        return False
    try:  # the definition refuses shapes whose static shared buffers pass 48 KB
        decode_step_cuda(**params)
    except ValueError:
        return False
    return True
