"""PyTorch custom ops ``torch.ops.nha.prefill`` and ``torch.ops.nha.decode``.

They are defined with ``torch.library.Library`` (a schema, a kernel per device, a fake kernel
and an autograd kernel), not ``torch.library.custom_op``: the latter's Python wrappers cost
about 100 us a call on a decode step's 15 arguments, against 6 us through the dispatcher
(torch 2.13, CPU), and an eager decode step of a few tens of microseconds of GPU time is paced
by its host. Called with inputs that require grad (grad mode on), the ops raise at once.

Each op allocates its outputs with torch (so CUDA graphs and the caching allocator see them),
derives the varlen index tables with a kernel on the device (no host sync), and calls the compiled
TVM functions with torch tensors, which tvm-ffi passes zero-copy through DLPack on torch's
current CUDA stream. Inputs are validated by the public functions in ``nha_tvm.attention``.
"""

from typing import Optional

import torch
from torch import Tensor

from nha_tvm.schedules import CHUNK_SIZE

from .compiler import get_kernel
from .kernel_plan import attend_role, decode_kernel, gates_role, prefill_kernels, state_fused_role
from .targets import arch_name, max_threads_per_sm, sm_count
from .validation import check_no_grad, dtype_name


def new_output(*shape, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer a kernel writes comes from here (the tests poison it)."""
    return torch.empty(*shape, dtype=dtype, device=device)


def _aligned(x: Tensor, bytes_: int = 16) -> Tensor:
    """x itself, or a copy when its data does not start on a ``bytes_`` boundary (a view at an
    odd storage offset): the chunked CUDA kernels read 16-byte vectors."""
    return x if x.data_ptr() % bytes_ == 0 else x.clone()


_LIBRARY = torch.library.Library("nha", "DEF")
PREFILL_SCHEMA = ("prefill(Tensor q, Tensor k, Tensor v, Tensor g, Tensor? s, Tensor cu_seqlens, "
                  "Tensor? h0k, Tensor? h0v, int window, float scale, float? rope_theta) "
                  "-> (Tensor, Tensor, Tensor)")
DECODE_SCHEMA = ("decode(Tensor q, Tensor k, Tensor v, Tensor g, Tensor? s, Tensor(a!) hk, Tensor(b!) hv, "
                 "Tensor(c!) ring_k, Tensor(d!) ring_v, Tensor(e!) ring_g, Tensor(f!) ring_s, "
                 "Tensor(g!) pos, int window, float scale, float? rope_theta) -> Tensor")


def _register(schema: str, kernel, fake) -> None:
    """The op of ``schema``: ``kernel`` on CPU and CUDA tensors, ``fake`` for tracing, and an
    autograd kernel. That one refuses inputs requiring grad when grad mode is on (the kernels
    have no backward: without it an op with no autograd kernel would give such inputs silently
    wrong gradients, with a warning at backward time), bumps the version counters of the
    tensors the op writes (what autograd checks saved tensors against), and goes on to
    ``kernel``. The op is tagged pt2-compliant: its schema, fake kernel and opcheck tests make
    it so for torch.compile."""
    name = schema.split("(", 1)[0]
    _LIBRARY.define(schema, tags=(torch.Tag.pt2_compliant_tag,))
    for key in ("CPU", "CUDA"):
        _LIBRARY.impl(name, kernel, key)
    torch.library.register_fake(f"nha::{name}", fake, lib=_LIBRARY)
    op = getattr(torch.ops.nha, name).default
    written = [i for i, arg in enumerate(op._schema.arguments) if arg.alias_info is not None and arg.alias_info.is_write]

    def autograd_kernel(*args):
        check_no_grad(x for x in args if isinstance(x, Tensor))
        with torch._C._AutoDispatchBelowAutograd():
            out = op(*args)
        if written:
            torch.autograd.graph.increment_version([args[i] for i in written])
        return out

    _LIBRARY.impl(name, autograd_kernel, "Autograd")


def prefill(q: Tensor, k: Tensor, v: Tensor, g: Tensor, s: Optional[Tensor], cu_seqlens: Tensor,
            h0k: Optional[Tensor], h0v: Optional[Tensor], window: int, scale: float,
            rope_theta: Optional[float]) -> tuple[Tensor, Tensor, Tensor]:
    """Packed prefill: q [1, total, HQ, K] ... with int32 cu_seqlens [N + 1]; s None: the
    default 1 - exp(g) (on the chunked CUDA path made by the gate prefix-sum kernel, which
    reads g anyway; on the portable path by torch).
    Returns o [1, total, HQ, V] and the final slot states hk [N, H, K, M], hv [N, H, M, V]."""
    _, total, HQ, K = q.shape
    H, V, M = k.shape[2], v.shape[3], g.shape[3]
    N = cu_seqlens.shape[0] - 1
    dev = q.device
    o = new_output(1, total, HQ, V, dtype=q.dtype, device=dev)
    hk = new_output(N, H, K, M, dtype=torch.float32, device=dev)
    hv = new_output(N, H, M, V, dtype=torch.float32, device=dev)
    if h0k is None:
        h0k = torch.zeros_like(hk)
        h0v = torch.zeros_like(hv)
    if total == 0:
        hk.copy_(h0k)
        hv.copy_(h0v)
        return o, hk, hv
    arch = arch_name(dev)
    q3, k3, v3 = q.view(total, HQ, K), k.view(total, H, K), v.view(total, H, V)
    g3 = g.view(total, H, M)
    window = min(window, total)  # W >= T is all the same, and fits the kernels' int32
    plan = prefill_kernels(HQ=HQ, H=H, K=K, V=V, M=M, io_dtype=dtype_name(q.dtype),
                           gate_dtype=dtype_name(g.dtype), arch=arch)
    chunked = "gates" in plan  # the chunked algorithm (kernel_plan), else the portable one
    if s is not None:
        s3 = s.view(total, H, M)
    elif chunked:
        s3 = new_output(total, H, M, dtype=g.dtype, device=dev)
    else:
        s3 = -torch.expm1(g3)
    if chunked:  # its CUDA kernels read 16-byte vectors
        q3, k3, v3, s3 = (_aligned(x) for x in (q3, k3, v3, s3))
    # the chunk-start states the output pass reads (float32, or 16-bit for tensor cores)
    state_role = "state_fused" if "state_fused" in plan else "state_scan"
    start_dtype = getattr(torch, plan[state_role][1]["state_dtype"]) if chunked else torch.float32
    # an upper bound on the chunks, known without reading cu_seqlens: the chunks past the
    # last sequence's are padding, which every kernel skips
    num_chunks = total // CHUNK_SIZE + N
    chunk_k = new_output(num_chunks, H, K, M, dtype=start_dtype, device=dev)
    chunk_v = new_output(num_chunks, H, M, V, dtype=start_dtype, device=dev)

    def kernel(role, **bucket):
        name, params = plan[role]
        return get_kernel(name, arch, length=total, **bucket, **params)

    chunk_offsets, chunk_seq, positions = (new_output(n, dtype=torch.int32, device=dev)
                                           for n in (N + 1, num_chunks, total))
    kernel("layout")(cu_seqlens, chunk_offsets, chunk_seq, positions)
    attend = attend_role(plan, window)
    rope_inside = plan[attend][1].get("rope_inside", False)  # the output pass rotates q and k itself
    if rope_theta is not None and not rope_inside:
        q_rot = new_output(total, HQ, K, dtype=q.dtype, device=dev)
        k_rot = new_output(total, H, K, dtype=q.dtype, device=dev)
        kernel("rope_q")(q3, positions, q_rot, rope_theta)
        kernel("rope_k")(k3, positions, k_rot, rope_theta)
    else:
        q_rot, k_rot = q3, k3
    if chunked:
        gcum = new_output(total, H, M, dtype=torch.float32, device=dev)
        sms = sm_count(dev)
        kernel(gates_role(chunks=num_chunks, H=H, M=M, sms=sms, threads_per_sm=max_threads_per_sm(arch)),
               window=window)(
            g3, cu_seqlens, chunk_offsets, chunk_seq, gcum, s3, window, int(s is None))
        if state_role == "state_fused":
            kernel(state_fused_role(N=N, H=H, M=M, sms=sms), window=window)(
                k3, v3, s3, gcum, cu_seqlens, chunk_offsets, h0k, h0v, chunk_k, chunk_v, hk, hv, window)
        else:
            delta_k = new_output(num_chunks, H, K, M, dtype=torch.float32, device=dev)
            delta_v = new_output(num_chunks, H, M, V, dtype=torch.float32, device=dev)
            kernel("state_delta", window=window)(k3, v3, s3, gcum, cu_seqlens, chunk_offsets,
                                                 chunk_seq, delta_k, delta_v, window)
            kernel("state_scan", window=window)(gcum, cu_seqlens, chunk_offsets, h0k, h0v,
                                                delta_k, delta_v, chunk_k, chunk_v, hk, hv)
        gates = gcum
    else:
        kernel("state", window=window)(k3, v3, g3, s3, cu_seqlens, chunk_offsets, h0k, h0v,
                                       chunk_k, chunk_v, hk, hv, window)
        gates = g3
    # the chunked output pass takes RoPE's flag and theta too (used where it rotates itself)
    rope_args = (int(rope_inside and rope_theta is not None), rope_theta or 1.0) if chunked else ()
    kernel(attend, window=window)(q3, q_rot, k3, k_rot, v3, gates, s3, cu_seqlens, chunk_offsets,
                                  chunk_seq, chunk_k, chunk_v, o.view(total, HQ, V), window, scale,
                                  *rope_args)
    return o, hk, hv


def prefill_fake(q, k, v, g, s, cu_seqlens, h0k, h0v, window, scale, rope_theta):
    _, total, HQ, K = q.shape
    H, V, M = k.shape[2], v.shape[3], g.shape[3]
    N = cu_seqlens.shape[0] - 1
    return (q.new_empty(1, total, HQ, V),
            q.new_empty(N, H, K, M, dtype=torch.float32),
            q.new_empty(N, H, M, V, dtype=torch.float32))


def decode(q: Tensor, k: Tensor, v: Tensor, g: Tensor, s: Optional[Tensor], hk: Tensor, hv: Tensor,
           ring_k: Tensor, ring_v: Tensor, ring_g: Tensor, ring_s: Tensor, pos: Tensor,
           window: int, scale: float, rope_theta: Optional[float]) -> Tensor:
    """One token per sequence: q [B, HQ, K], k [B, H, K], v [B, H, V], g and s [B, H, M] (s None:
    1 - exp(g), computed in the kernel); updates the cache tensors in place and returns o
    [B, HQ, V]."""
    B, HQ, K = q.shape
    H, V, M = k.shape[1], v.shape[2], g.shape[2]
    o = new_output(B, HQ, V, dtype=q.dtype, device=q.device)
    arch = arch_name(q.device)
    name, params = decode_kernel(HQ=HQ, H=H, K=K, V=V, M=M, io_dtype=dtype_name(q.dtype),
                                 gate_dtype=dtype_name(g.dtype), arch=arch)
    step = get_kernel(name, arch, length=B, window=window, **params)
    step(q, k, v, g, g if s is None else s, hk, hv, ring_k, ring_v, ring_g, ring_s, pos, o, window,
         scale, int(rope_theta is not None), 1.0 if rope_theta is None else rope_theta, int(s is None))
    return o


def decode_fake(q, k, v, g, s, hk, hv, ring_k, ring_v, ring_g, ring_s, pos, window, scale, rope_theta):
    return q.new_empty(q.shape[0], q.shape[1], v.shape[2])


_register(PREFILL_SCHEMA, prefill, prefill_fake)
_register(DECODE_SCHEMA, decode, decode_fake)
