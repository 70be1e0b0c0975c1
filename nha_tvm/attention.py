"""Public functions: ``nha_attention`` (prefill, batched or packed varlen) and ``nha_decode``."""

import torch

from . import torch_ops  # noqa: F401  (registers torch.ops.nha.*)
from nha_tvm.schedules import CHUNK_SIZE

from .decode_cache import NHACache
from .validation import (check_common, check_cu_seqlens, check_dim, check_index_range,
                         check_positive, check_scalars, check_state, check_tensor, check_window)


def nha_attention(q, k, v, g, *, window, s=None, scale=None, rope_theta=None,
                  initial_state=None, output_final_state=False, cu_seqlens=None):
    """Native Hybrid Attention over whole sequences (spec: ``NHA_SPEC.md``).

    q [B, T, HQ, K], k [B, T, H, K], v [B, T, H, V], g [B, T, H, M] (log forget gates, <= 0),
    s like g (default 1 - exp(g)). ``window`` is W (any int >= 0); ``rope_theta`` a float
    applies RoPE to the window path. With ``cu_seqlens`` [N + 1] the N sequences are packed
    along T (B must be 1). Returns o [B, T, HQ, V] in q's dtype and, when
    ``output_final_state``, the float32 slot states (hk [N, H, K, M], hv [N, H, M, V]).
    """
    check_tensor("q", q, 4, "[B, T, HQ, K]")
    B, T, HQ, K = q.shape
    check_tensor("k", k, 4, "[B, T, H, K]")
    H = k.shape[2]
    check_tensor("v", v, 4, "[B, T, H, V]")
    check_tensor("g", g, 4, "[B, T, H, M]")
    M = g.shape[3]
    for name, x, layout in (("k", k, "[B, T, H, K]"), ("v", v, "[B, T, H, V]"), ("g", g, "[B, T, H, M]")):
        check_dim(name, x, 0, B, "B", layout)
        check_dim(name, x, 1, T, "T", layout)
        check_dim(name, x, 2, H, "H", layout)
    check_dim("k", k, 3, K, "K", "[B, T, H, K]")
    V = v.shape[3]
    check_positive(HQ=HQ, H=H, K=K, V=V, M=M)
    if HQ % H:
        raise ValueError(f"q has HQ = {HQ} heads, which must be a multiple of k's H = {H} heads")
    check_window(window)
    check_scalars(scale, rope_theta, K)
    check_common(q, k, v, g, s, s_layout="[B, T, H, M] (like g)")
    N = B if cu_seqlens is None else check_cu_seqlens(cu_seqlens, B, T, q.device)
    chunks = B * T // CHUNK_SIZE + N
    check_index_range(q=B * T * HQ * max(K, V), k=B * T * H * max(K, V), g=B * T * H * M,
                      chunk_states=chunks * H * K * M + chunks * H * M * V)
    if initial_state is not None:
        check_state("initial_state", initial_state, ((N, H, K, M), (N, H, M, V)), q.device)

    if cu_seqlens is None:  # one op, not an arange and a multiply (each a launch on a GPU)
        cu = (torch.arange(0, (B + 1) * T, T, dtype=torch.int32, device=q.device) if T
              else torch.zeros(B + 1, dtype=torch.int32, device=q.device))
    else:
        cu = cu_seqlens.to(torch.int32)
    h0k, h0v = (None, None) if initial_state is None else (
        initial_state[0].contiguous(), initial_state[1].contiguous())
    packed = [x if x is None or (B == 1 and x.is_contiguous()) else x.contiguous().view(1, B * T, *x.shape[2:])
              for x in (q, k, v, g, s)]
    # a window of the whole batch's tokens sees everything; larger ones would overflow the op's int
    o, hk, hv = torch.ops.nha.prefill(*packed, cu, h0k, h0v, min(window, B * T),
                                      float(K ** -0.5 if scale is None else scale),
                                      None if rope_theta is None else float(rope_theta))
    return o.view(B, T, HQ, V), ((hk, hv) if output_final_state else None)


def nha_decode(q, k, v, g, cache: NHACache, s=None, scale=None, rope_theta=None):
    """One decode step: q [B, HQ, K], k [B, H, K], v [B, H, V], g [B, H, M] (s like g).
    Updates ``cache`` in place and returns o [B, HQ, V] in q's dtype."""
    if not isinstance(cache, NHACache):
        raise TypeError(f"cache must be an nha_tvm.NHACache, got {type(cache).__name__}")
    B, H, K, V, M = cache.batch_size, cache.num_kv_heads, cache.key_dim, cache.value_dim, cache.num_slots
    check_tensor("q", q, 3, "[B, HQ, K]")
    HQ = q.shape[1]
    check_dim("q", q, 0, B, "B (the cache's batch)", "[B, HQ, K]")
    check_dim("q", q, 2, K, "K (the cache's key dim)", "[B, HQ, K]")
    for name, x, last, label in (("k", k, K, "K"), ("v", v, V, "V"), ("g", g, M, "M")):
        layout = f"[B, H, {label}]"
        check_tensor(name, x, 3, layout)
        check_dim(name, x, 0, B, "B (the cache's batch)", layout)
        check_dim(name, x, 1, H, "H (the cache's kv heads)", layout)
        check_dim(name, x, 2, last, f"{label} (the cache's)", layout)
    if HQ % H:
        raise ValueError(f"q has HQ = {HQ} heads, which must be a multiple of the cache's H = {H}")
    check_scalars(scale, rope_theta, K)
    check_common(q, k, v, g, s, s_layout="[B, H, M] (like g)", cache_ring=cache.ring_k)
    # s None: the kernel takes the default 1 - exp(g) itself (no extra kernel per step)
    return torch.ops.nha.decode(
        q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), None if s is None else s.contiguous(),
        cache.hk, cache.hv, cache.ring_k, cache.ring_v, cache.ring_g, cache.ring_s,
        cache.positions, cache.window, float(K ** -0.5 if scale is None else scale),
        None if rope_theta is None else float(rope_theta))
