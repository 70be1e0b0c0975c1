"""The decode cache of one NHA layer: slot memories, a ring of the last W tokens, positions."""

import torch

from .validation import check_device_and_dtype, check_index_range, check_state, check_tensor, check_window


class NHACache:
    """Decode state for a batch of B sequences, updated in place by :func:`nha_tvm.nha_decode`.

    hk [B, H, K, M] and hv [B, H, M, V] are the float32 slot memories; ring_k [B, R, H, K],
    ring_v [B, R, H, V] (the model dtype) and ring_g, ring_s [B, R, H, M] (float32) hold the last
    W tokens, token t at entry t % W (R = max(W, 1)); positions [B] (int32) is the position of
    each sequence's next token.
    """

    def __init__(self, hk, hv, ring_k, ring_v, ring_g, ring_s, positions, window: int):
        self.hk, self.hv = hk, hv
        self.ring_k, self.ring_v, self.ring_g, self.ring_s = ring_k, ring_v, ring_g, ring_s
        self.positions = positions
        self.window = window

    batch_size = property(lambda self: self.hk.shape[0])
    num_kv_heads = property(lambda self: self.hk.shape[1])
    key_dim = property(lambda self: self.hk.shape[2])
    num_slots = property(lambda self: self.hk.shape[3])
    value_dim = property(lambda self: self.hv.shape[3])

    @classmethod
    def empty(cls, batch: int, H: int, K: int, V: int, M: int, window: int, *,
              device=None, dtype=torch.float32) -> "NHACache":
        """A cache before the first token: zero slots, an empty window, position 0."""
        check_window(window)
        for name, value in (("batch", batch), ("H", H), ("K", K), ("V", V), ("M", M)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        R = max(window, 1)
        check_index_range(ring=batch * R * H * max(K, V, M), slot_state=batch * H * max(K, V) * M)
        f32 = dict(dtype=torch.float32, device=device)
        return cls(torch.zeros(batch, H, K, M, **f32), torch.zeros(batch, H, M, V, **f32),
                   torch.zeros(batch, R, H, K, dtype=dtype, device=device),
                   torch.zeros(batch, R, H, V, dtype=dtype, device=device),
                   torch.zeros(batch, R, H, M, **f32), torch.zeros(batch, R, H, M, **f32),
                   torch.zeros(batch, dtype=torch.int32, device=device), window)

    @classmethod
    def from_prefill(cls, k, v, g, final_state, *, window: int, s=None) -> "NHACache":
        """The cache after a prefill of equal-length sequences: k [B, T, H, K], v [B, T, H, V],
        g (and s) [B, T, H, M] of that prefill, and its ``final_state`` (hk, hv)."""
        check_window(window)
        check_tensor("k", k, 4, "[B, T, H, K]")
        check_tensor("v", v, 4, "[B, T, H, V]")
        check_tensor("g", g, 4, "[B, T, H, M]")
        B, T, H, K = k.shape
        V, M = v.shape[3], g.shape[3]
        if v.shape[:3] != (B, T, H) or g.shape[:3] != (B, T, H):
            raise ValueError(f"k, v, g must agree on [B, T, H] = {(B, T, H)}, got v {tuple(v.shape)}, g {tuple(g.shape)}")
        if s is not None and tuple(s.shape) != tuple(g.shape):
            raise ValueError(f"s must have the shape of g {tuple(g.shape)}, got {tuple(s.shape)}")
        check_device_and_dtype({"k": k, "v": v, "g": g} | ({} if s is None else {"s": s}), same_dtype=("k", "v"))
        check_state("final_state", final_state, ((B, H, K, M), (B, H, M, V)), k.device)
        cache = cls.empty(B, H, K, V, M, window, device=k.device, dtype=k.dtype)
        cache.hk.copy_(final_state[0])
        cache.hv.copy_(final_state[1])
        if window > 0 and T > 0:
            kept = torch.arange(max(0, T - window), T, device=k.device)
            entry = kept % window
            cache.ring_k[:, entry] = k[:, kept]
            cache.ring_v[:, entry] = v[:, kept]
            cache.ring_g[:, entry] = g[:, kept].float()
            # the default s of the kept tokens only (the ring holds the last W)
            cache.ring_s[:, entry] = (-torch.expm1(g[:, kept]) if s is None else s[:, kept]).float()
        cache.positions.fill_(T)
        return cache
