"""The spec (``NHA_SPEC.md``) written as directly as possible, in float64: the tests' oracle.

Token by token: the token leaving the window enters the slot memories, then one softmax over
the M slot logits and the window logits. Slow by design; use it on short sequences.
"""

import torch


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half RoPE of x [..., L, heads, K] at positions [L] (float64)."""
    K = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, K // 2, dtype=torch.float64, device=x.device) * 2 / K)
    angle = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # [L, K/2]
    cos = torch.cat([angle.cos(), angle.cos()], -1)[:, None, :]
    sin = torch.cat([angle.sin(), angle.sin()], -1)[:, None, :]
    rotated = torch.cat([-x[..., K // 2:], x[..., : K // 2]], -1)
    return x * cos + rotated * sin


def _one_sequence(q, k, v, g, s, window, scale, rope_theta, hk, hv):
    L, HQ, _ = q.shape
    H, M = g.shape[1], g.shape[2]
    group = HQ // H
    if rope_theta is not None:
        positions = torch.arange(L, device=q.device)
        q_win, k_win = rope(q, positions, rope_theta), rope(k, positions, rope_theta)
    else:
        q_win, k_win = q, k
    out = torch.empty(L, HQ, v.shape[-1], dtype=torch.float64, device=q.device)
    for t in range(L):
        j = t - window
        if j >= 0:  # token j leaves the window and enters the slots
            decay = g[j].exp()  # [H, M]
            hk = hk * decay[:, None, :] + k[j][:, :, None] * s[j][:, None, :]
            hv = hv * decay[:, :, None] + s[j][:, :, None] * v[j][:, None, :]
        lo = max(0, t - window + 1)
        hk_q, hv_q = hk.repeat_interleave(group, 0), hv.repeat_interleave(group, 0)
        slot_logits = scale * torch.einsum("hk,hkm->hm", q[t], hk_q)
        k_w = k_win[lo : t + 1].repeat_interleave(group, 1)  # [w, HQ, K]
        v_w = v[lo : t + 1].repeat_interleave(group, 1)
        window_logits = scale * torch.einsum("hk,whk->hw", q_win[t], k_w)
        p = torch.softmax(torch.cat([slot_logits, window_logits], -1), -1)
        out[t] = torch.einsum("hm,hmv->hv", p[:, :M], hv_q) + torch.einsum("hw,whv->hv", p[:, M:], v_w)
    return out, hk, hv


def nha_reference(q, k, v, g, *, window, s=None, scale=None, rope_theta=None,
                  initial_state=None, output_final_state=False, cu_seqlens=None):
    """Reference NHA with the signature of :func:`nha_tvm.nha_attention` (float64 inside)."""
    f64 = torch.float64
    B, T, HQ, K = q.shape
    H, V, M = k.shape[2], v.shape[3], g.shape[3]
    scale = K ** -0.5 if scale is None else scale
    s = 1 - g.to(f64).exp() if s is None else s
    q, k, v, g, s = (x.to(f64) for x in (q, k, v, g, s))
    if cu_seqlens is None:
        bounds = [(b, 0, T) for b in range(B)]
    else:
        cu = [int(x) for x in cu_seqlens]
        bounds = [(0, cu[n], cu[n + 1]) for n in range(len(cu) - 1)]
    out = torch.empty(B, T, HQ, V, dtype=f64, device=q.device)
    final_k, final_v = [], []
    for n, (b, lo, hi) in enumerate(bounds):
        if initial_state is None:
            hk = torch.zeros(H, K, M, dtype=f64, device=q.device)
            hv = torch.zeros(H, M, V, dtype=f64, device=q.device)
        else:
            hk, hv = initial_state[0][n].to(f64), initial_state[1][n].to(f64)
        sl = slice(lo, hi)
        out[b, sl], hk, hv = _one_sequence(q[b, sl], k[b, sl], v[b, sl], g[b, sl], s[b, sl],
                                           window, scale, rope_theta, hk, hv)
        final_k.append(hk)
        final_v.append(hv)
    final = (torch.stack(final_k), torch.stack(final_v)) if output_final_state else None
    return out, final
