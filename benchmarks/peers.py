"""NHA and its peers, each built as a list of ready calls: one per rotated copy of its inputs.

Prefill builders take (case, setup); decode builders return one step per copy of the decode
state. Each peer imports its library inside its builder, so a missing or broken one fails only
its own measurement (recorded as skipped by measure.py).
"""

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

import nha_tvm
from timing import rotated_sets


GATE_DTYPE = torch.float32   # the log gates as an NHA layer makes them


@dataclass(frozen=True)
class Setup:
    """What every builder shares: device, dtypes, head dims and the L2 size for the rotation."""
    device: torch.device
    io_dtype: torch.dtype
    heads: int
    key_dim: int
    value_dim: int
    slots: int
    rope_theta: float
    l2_bytes: int

    def randn(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, device=self.device, dtype=self.io_dtype)

    def log_gates(self, *shape) -> torch.Tensor:
        """g = logsigmoid(x) / 8 in float32, as an NHA layer makes it."""
        return F.logsigmoid(torch.randn(*shape, device=self.device, dtype=GATE_DTYPE)) / 8

    def write_strength(self, g: torch.Tensor) -> torch.Tensor:
        """s = 1 - exp(g) in the model dtype, as fla's GSA layer hands it to its kernels."""
        return (-torch.expm1(g)).to(self.io_dtype)


# ---- prefill ------------------------------------------------------------------------------

def nha_prefill(case, setup: Setup) -> list:
    B, T, H, K, V, M = case.batch, case.seq_len, setup.heads, setup.key_dim, setup.value_dim, setup.slots

    def make_set():
        return (setup.randn(B, T, H, K), setup.randn(B, T, H, K), setup.randn(B, T, H, V),
                setup.log_gates(B, T, H, M))
    return [partial(nha_tvm.nha_attention, *inputs, window=case.window, rope_theta=setup.rope_theta)
            for inputs in rotated_sets(make_set, setup.l2_bytes)]


def heads_first_set(setup: Setup, B: int, T_q: int, T_kv: int) -> tuple:
    """q [B, heads, T_q, K], k [B, heads, T_kv, K], v [B, heads, T_kv, V]: the attention layout."""
    H, K, V = setup.heads, setup.key_dim, setup.value_dim
    return setup.randn(B, H, T_q, K), setup.randn(B, H, T_kv, K), setup.randn(B, H, T_kv, V)


def flash_sdpa(q, k, v, *, is_causal: bool):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)


def sdpa_prefill(case, setup: Setup) -> list:
    """torch SDPA with the flash backend forced: causal full attention, a Transformer's layer."""
    B, T = case.batch, case.seq_len
    return [partial(flash_sdpa, *inputs, is_causal=True)
            for inputs in rotated_sets(lambda: heads_first_set(setup, B, T, T), setup.l2_bytes)]


def flex_prefill(case, setup: Setup) -> list:
    """FlexAttention under torch.compile with a causal sliding-window block mask of W keys (the
    token's own included, like NHA's window): NHA's window path alone."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    B, T, W = case.batch, case.seq_len, case.window

    def sliding_window(batch, head, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < W)
    block_mask = create_block_mask(sliding_window, None, None, T, T, device=setup.device)
    # A fresh compile per shape: past dynamo's recompile limit a new shape would run flex
    # attention eagerly, which materializes the T x T scores.
    torch._dynamo.reset()
    attend = torch.compile(flex_attention)
    return [partial(attend, *inputs, block_mask=block_mask)
            for inputs in rotated_sets(lambda: heads_first_set(setup, B, T, T), setup.l2_bytes)]


def fla_chunk_prefill(case, setup: Setup) -> list:
    """fla's chunk_gsa (gated slot attention, chunked): NHA's slot path alone, no window."""
    from fla.ops.gsa import chunk_gsa
    B, T, H, K, V, M = case.batch, case.seq_len, setup.heads, setup.key_dim, setup.value_dim, setup.slots

    def make_set():
        g = setup.log_gates(B, T, H, M)
        return (setup.randn(B, T, H, K), setup.randn(B, T, H, K), setup.randn(B, T, H, V),
                setup.write_strength(g), g)
    return [partial(chunk_gsa, *inputs) for inputs in rotated_sets(make_set, setup.l2_bytes)]


# ---- decode -------------------------------------------------------------------------------

def clone_cache(cache: nha_tvm.NHACache) -> nha_tvm.NHACache:
    return nha_tvm.NHACache(cache.hk.clone(), cache.hv.clone(), cache.ring_k.clone(),
                            cache.ring_v.clone(), cache.ring_g.clone(), cache.ring_s.clone(),
                            cache.positions.clone(), cache.window)


def steady_state_prompt_len(window: int) -> int:
    """A prompt of 2W tokens: the window is full and the slots have taken W tokens, so every
    decode step after it moves the token leaving the window into the slots (steady state)."""
    return 2 * window


def steady_state_cache(case, setup: Setup) -> nha_tvm.NHACache:
    """The cache after a prefill of steady_state_prompt_len tokens."""
    B, H, K, V, M = case.batch, setup.heads, setup.key_dim, setup.value_dim, setup.slots
    T = steady_state_prompt_len(case.window)
    k, v, g = setup.randn(B, T, H, K), setup.randn(B, T, H, V), setup.log_gates(B, T, H, M)
    _, state = nha_tvm.nha_attention(setup.randn(B, T, H, K), k, v, g, window=case.window,
                                     rope_theta=setup.rope_theta, output_final_state=True)
    return nha_tvm.NHACache.from_prefill(k, v, g, state, window=case.window)


def nha_decode_steps(case, setup: Setup) -> list:
    """nha_decode steps, each on its own copy of a steady-state cache, updated in place: every
    replay advances its position, and the window stays full."""
    B, H, K, V, M = case.batch, setup.heads, setup.key_dim, setup.value_dim, setup.slots
    template = steady_state_cache(case, setup)

    def make_set():
        return (setup.randn(B, H, K), setup.randn(B, H, K), setup.randn(B, H, V),
                setup.log_gates(B, H, M), clone_cache(template))
    return [partial(nha_tvm.nha_decode, *inputs, rope_theta=setup.rope_theta)
            for inputs in rotated_sets(make_set, setup.l2_bytes)]


def sdpa_decode_steps(case, setup: Setup, *, context: int) -> list:
    """A Transformer's decode step: SDPA (flash forced) of one query per head over a KV cache of
    `context` tokens."""
    return [partial(flash_sdpa, *inputs, is_causal=False)
            for inputs in rotated_sets(lambda: heads_first_set(setup, case.batch, 1, context),
                                       setup.l2_bytes)]


def fla_recurrent_decode_steps(case, setup: Setup) -> list:
    """fla's fused_recurrent_gsa on one token with its float32 recurrent state (hk, hv) passed in
    and the new state returned: the slot path of a decode step alone."""
    from fla.ops.gsa import fused_recurrent_gsa
    B, H, K, V, M = case.batch, setup.heads, setup.key_dim, setup.value_dim, setup.slots
    f32 = {"device": setup.device, "dtype": torch.float32}

    def make_set():
        g = setup.log_gates(B, 1, H, M)
        state = (torch.randn(B, H, K, M, **f32), torch.randn(B, H, M, V, **f32))
        return (setup.randn(B, 1, H, K), setup.randn(B, 1, H, K), setup.randn(B, 1, H, V),
                setup.write_strength(g), g, state)

    def step(q, k, v, s, g, state):
        return fused_recurrent_gsa(q, k, v, s, g, initial_state=state, output_final_state=True)
    return [partial(step, *inputs) for inputs in rotated_sets(make_set, setup.l2_bytes)]


PREFILL_BUILDERS = {"nha": nha_prefill, "sdpa_flash": sdpa_prefill, "flex_swa": flex_prefill,
                    "fla_chunk_gsa": fla_chunk_prefill}
# Peers whose work does not depend on W: measured once per (batch, length), shown on every row.
WINDOW_FREE = {"sdpa_flash", "fla_chunk_gsa"}


def decode_builders(kv_contexts) -> dict:
    sdpa = {f"sdpa_kv{context}": partial(sdpa_decode_steps, context=context) for context in kv_contexts}
    return {"nha": nha_decode_steps, **sdpa, "fla_fused_recurrent_gsa": fla_recurrent_decode_steps}
