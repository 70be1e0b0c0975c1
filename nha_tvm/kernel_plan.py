"""Which compiled kernels, with which static parameters, serve a model shape.

The torch ops request exactly these; ``nha-tune`` tunes them and ``nha-build`` packages them,
so all three agree by construction.
"""

from nha_tvm.schedules import CHUNK_SIZE


def prefill_kernels(*, HQ: int, H: int, K: int, V: int, M: int, io_dtype: str,
                    gate_dtype: str) -> dict[str, tuple[str, dict]]:
    """Role -> (kernel, static params) for a prefill: the state pass, RoPE of the queries and
    of the keys (used when RoPE is on), and the chunk read-out."""
    return {
        "state": ("slot_state_scan", dict(H=H, K=K, V=V, M=M, C=CHUNK_SIZE, kv_dtype=io_dtype,
                                          gate_dtype=gate_dtype)),
        "rope_q": ("rope", dict(heads=HQ, K=K, io_dtype=io_dtype)),
        "rope_k": ("rope", dict(heads=H, K=K, io_dtype=io_dtype)),
        "attend": ("chunk_attend", dict(HQ=HQ, H=H, K=K, V=V, M=M, C=CHUNK_SIZE,
                                        io_dtype=io_dtype, gate_dtype=gate_dtype)),
    }


def decode_kernel(*, HQ: int, H: int, K: int, V: int, M: int, io_dtype: str,
                  gate_dtype: str) -> tuple[str, dict]:
    return "decode_step", dict(HQ=HQ, H=H, K=K, V=V, M=M, io_dtype=io_dtype, gate_dtype=gate_dtype)
