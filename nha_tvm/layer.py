"""The paper's NHA layer: projections, gates, the NHA op, then W_o RMSNorm(SiLU(o))."""

import torch
import torch.nn.functional as F
from torch import nn

from .attention import nha_attention, nha_decode
from .decode_cache import NHACache


class NativeHybridAttention(nn.Module):
    """q, k, v, f = x W_q, x W_k, x W_v, x W_f; v = SiLU(v); g = logsigmoid(f) / 8;
    o = NHA(q, k, v, g); y = W_o RMSNorm(SiLU(o)) (the from-scratch variant of the paper).

    ``forward(x)`` runs a prefill; ``forward(x, use_cache=True)`` also returns an
    :class:`NHACache`, and ``forward(x, cache)`` continues from it token by token (decode).
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int | None = None,
                 head_dim: int | None = None, num_slots: int = 64, window: int = 64,
                 rope_theta: float | None = 10000.0, value_dim: int | None = None,
                 norm_eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        head_dim = hidden_size // num_heads if head_dim is None else head_dim
        value_dim = head_dim if value_dim is None else value_dim
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim, self.value_dim, self.num_slots = head_dim, value_dim, num_slots
        self.window, self.rope_theta = window, rope_theta
        kw = dict(bias=False, device=device, dtype=dtype)
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, **kw)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, **kw)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * value_dim, **kw)
        self.f_proj = nn.Linear(hidden_size, num_kv_heads * num_slots, **kw)
        self.o_norm = nn.RMSNorm(value_dim, eps=norm_eps, device=device, dtype=dtype)
        self.o_proj = nn.Linear(num_heads * value_dim, hidden_size, **kw)

    def project(self, x):
        """q [B, L, HQ, K], k [B, L, H, K], v [B, L, H, V], g [B, L, H, M] for x [B, L, hidden]."""
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(B, L, self.num_kv_heads, self.head_dim)
        v = F.silu(self.v_proj(x)).view(B, L, self.num_kv_heads, self.value_dim)
        g = F.logsigmoid(self.f_proj(x).float()).view(B, L, self.num_kv_heads, self.num_slots) / 8
        return q, k, v, g

    def forward(self, x, cache: NHACache | None = None, use_cache: bool = False):
        B, L, _ = x.shape
        q, k, v, g = self.project(x)
        if cache is None:
            o, state = nha_attention(q, k, v, g, window=self.window, rope_theta=self.rope_theta,
                                     output_final_state=use_cache)
            if use_cache:
                cache = NHACache.from_prefill(k, v, g, state, window=self.window)
        else:
            o = torch.stack([nha_decode(q[:, i], k[:, i], v[:, i], g[:, i], cache,
                                        rope_theta=self.rope_theta) for i in range(L)], 1)
        y = self.o_proj(self.o_norm(F.silu(o)).reshape(B, L, -1))
        return (y, cache) if (use_cache or cache is not None) else y
