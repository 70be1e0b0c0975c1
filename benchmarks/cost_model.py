"""The spec's cost model (NHA_SPEC.md, "Cost model"): the bytes an ideal NHA kernel must move
and the FLOPs it must do, behind the roofline-fraction and TFLOP/s columns of bench_peers."""


def window_keys(window: int, start: int, tokens: int) -> int:
    """Window keys attended by the tokens at positions start .. start + tokens - 1, summed.

    The token at position p attends min(W, p + 1) window keys (the window includes the token
    itself), so a causal prefill (start 0) averages less than W per token, and a decode step
    with a full window (start >= W - 1) attends exactly W.
    """
    def attended_by_first(n: int) -> int:  # positions 0 .. n - 1
        if n <= window:
            return n * (n + 1) // 2
        return window * (window + 1) // 2 + (n - window) * window
    return attended_by_first(start + tokens) - attended_by_first(start)


def nha_flops(*, batch: int, q_heads: int, key_dim: int, value_dim: int, slots: int,
              window: int, tokens: int, start: int = 0) -> int:
    """FLOPs of an NHA forward by the spec's cost model, for `tokens` tokens per sequence
    starting at position `start` (0 for a prefill; the cache position for a decode step).

    Per token and query head: 4*M*(K+V) for the slots (the spec's count for slot logits and
    read-out) plus 2*w*(K+V) for the window, where w = min(W, p + 1) is the number of window keys
    the token at position p attends (a multiply-add per key and dim, for the logits and for the
    read-out). Summed over tokens, the window term is 2*(K+V) times ``window_keys``, that is
    2*min(W, T)*(K+V) per token on average over the causal window. The chunked scan's
    intra-chunk terms are left out: they belong to an algorithm, not to the problem.
    """
    slot_flops = 4 * slots * (key_dim + value_dim) * tokens
    window_flops = 2 * (key_dim + value_dim) * window_keys(window, start, tokens)
    return batch * q_heads * (slot_flops + window_flops)


def prefill_min_bytes(*, batch: int, seq_len: int, q_heads: int, kv_heads: int, key_dim: int,
                      value_dim: int, slots: int, io_bytes: int, gate_bytes: int) -> int:
    """Bytes an ideal NHA prefill kernel must move: each tensor of the problem once.

    Read: q [B, T, HQ, K], k [B, T, H, K], v [B, T, H, V] in the io dtype (io_bytes each) and the
    log gates g [B, T, H, M] in their dtype as given (gate_bytes: float32 from a layer).
    Written: o [B, T, HQ, V] in the io dtype. Nothing else: s is derived from g on the fly, and
    the chunk states a chunked algorithm stores (the spec's "Traffic") are that algorithm's
    extra cost, which the roofline fraction is meant to expose.
    """
    tokens = batch * seq_len
    q = tokens * q_heads * key_dim * io_bytes
    k = tokens * kv_heads * key_dim * io_bytes
    v = tokens * kv_heads * value_dim * io_bytes
    g = tokens * kv_heads * slots * gate_bytes
    o = tokens * q_heads * value_dim * io_bytes
    return q + k + v + g + o


def decode_min_bytes(*, batch: int, q_heads: int, kv_heads: int, key_dim: int, value_dim: int,
                     slots: int, window: int, io_bytes: int, gate_bytes: int) -> int:
    """Bytes an ideal NHA decode step must move, with the cache laid out as nha_tvm.NHACache.

    The float32 slot states hk [B, H, K, M] and hv [B, H, M, V], read and written once; from the
    window ring: k and v of the W window entries and of the entry leaving the window read once,
    g and s (float32) of the leaving entry only, and the new entry's k, v, g, s written; the new
    token's q [B, HQ, K], k [B, H, K], v [B, H, V] and g [B, H, M] read and o [B, HQ, V] written
    once.
    """
    fp32 = 4
    states = 2 * batch * kv_heads * (key_dim * slots + slots * value_dim) * fp32
    entry_kv = (key_dim + value_dim) * io_bytes
    entry_gates = 2 * slots * fp32
    ring = batch * kv_heads * ((window + 1) * entry_kv + entry_gates + entry_kv + entry_gates)
    step_io = batch * ((q_heads * key_dim + kv_heads * (key_dim + value_dim)) * io_bytes
                       + kv_heads * slots * gate_bytes + q_heads * value_dim * io_bytes)
    return states + ring + step_io
