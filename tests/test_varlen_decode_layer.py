"""Packed variable-length prefill, decode steps against prefill, and the layer."""

import itertools

import pytest
import torch

import nha_tvm
from nha_tvm.reference import nha_reference

from .conftest import DEVICE_CASES, make_inputs, rel_err


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
@pytest.mark.parametrize("rope", [None, 10000.0])
@pytest.mark.parametrize("W", [0, 3, 64])
def test_varlen_three_sequences(device, dtype, tol, rope, W):
    lens = [1, 17, 100]
    cu = torch.tensor([0, 1, 18, 118], dtype=torch.int32, device=device)
    q, k, v, g, _ = make_inputs(1, sum(lens), 4, 2, 16, 8, 8, device=device, dtype=dtype)
    state = (torch.randn(3, 2, 16, 8, device=device), torch.randn(3, 2, 8, 8, device=device))
    o, final = nha_tvm.nha_attention(q, k, v, g, window=W, rope_theta=rope, cu_seqlens=cu,
                                     initial_state=state, output_final_state=True)
    ref, ref_final = nha_reference(q, k, v, g, window=W, rope_theta=rope, cu_seqlens=cu,
                                   initial_state=state, output_final_state=True)
    assert rel_err(o, ref) <= tol
    assert final[0].shape == (3, 2, 16, 8)
    assert rel_err(final[0], ref_final[0]) <= max(tol, 1e-5)
    assert rel_err(final[1], ref_final[1]) <= max(tol, 1e-5)
    # each packed sequence equals the same sequence alone: nothing crosses a boundary
    lo, hi = 1, 18
    alone, _ = nha_tvm.nha_attention(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], g[:, lo:hi], window=W,
                                     rope_theta=rope, initial_state=(state[0][1:2], state[1][1:2]))
    assert rel_err(o[:, lo:hi], alone) <= tol


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
@pytest.mark.parametrize("M", [32, 64])
@pytest.mark.parametrize("W", [0, 100])
def test_varlen_states_at_model_head_sizes(device, dtype, tol, M, W):
    """K = V = 128 (in bfloat16 on GPUs the state pass runs fused, a block per 16-slot tile
    walking its sequence's chunks in pairs): sequences shorter than, equal to and longer than a
    chunk, an odd and an even number of chunks, an empty one, from initial states; the final
    states and the output against the reference."""
    check_varlen_states(device, dtype, tol, M, W)


@pytest.mark.parametrize("device,dtype,tol", [c for c in DEVICE_CASES if c.id == "cuda-bf16"])
def test_varlen_states_with_the_wide_fused_state_pass(monkeypatch, device, dtype, tol):
    """The same with the fused state pass's variant for big batches (launch bounds of two
    blocks per SM) taken whatever the batch (the fused pass runs in bfloat16)."""
    monkeypatch.setattr(nha_tvm.torch_ops, "state_fused_role", lambda **sizes: "state_fused_wide")
    check_varlen_states(device, dtype, tol, 64, 100)


@pytest.mark.parametrize("device,dtype,tol", [c for c in DEVICE_CASES if c.id.startswith("cuda")])
def test_varlen_states_with_the_plain_gate_pass(monkeypatch, device, dtype, tol):
    """The same with the gate pass that loads a gate per step of its sum, which only launches
    too big for these tests' sizes take (``kernel_plan.gates_role``)."""
    monkeypatch.setattr(nha_tvm.torch_ops, "gates_role", lambda **sizes: "gates")
    check_varlen_states(device, dtype, tol, 64, 100)


def check_varlen_states(device, dtype, tol, M, W):
    lens = [1, 64, 65, 200, 0, 150]
    cu = torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32, device=device)
    q, k, v, g, _ = make_inputs(1, sum(lens), 2, 2, 128, 128, M, device=device, dtype=dtype)
    state = (torch.randn(6, 2, 128, M, device=device), torch.randn(6, 2, M, 128, device=device))
    o, final = nha_tvm.nha_attention(q, k, v, g, window=W, rope_theta=10000.0, cu_seqlens=cu,
                                     initial_state=state, output_final_state=True)
    ref, ref_final = nha_reference(q, k, v, g, window=W, rope_theta=10000.0, cu_seqlens=cu,
                                   initial_state=state, output_final_state=True)
    assert rel_err(o, ref) <= tol
    assert rel_err(final[0], ref_final[0]) <= max(tol, 1e-5)
    assert rel_err(final[1], ref_final[1]) <= max(tol, 1e-5)


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
def test_varlen_with_empty_sequences(device, dtype, tol):
    cu = torch.tensor([0, 0, 40, 40, 70, 70], dtype=torch.int32, device=device)
    q, k, v, g, _ = make_inputs(1, 70, 2, 2, 8, 8, 4, device=device, dtype=dtype)
    o, final = nha_tvm.nha_attention(q, k, v, g, window=5, cu_seqlens=cu, output_final_state=True)
    ref, ref_final = nha_reference(q, k, v, g, window=5, cu_seqlens=cu, output_final_state=True)
    assert rel_err(o, ref) <= tol
    assert final[0].shape[0] == 5 and rel_err(final[1], ref_final[1]) <= max(tol, 1e-5)


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
@pytest.mark.parametrize("rope", [None, 10000.0])
@pytest.mark.parametrize("W", [0, 1, 3, 64])
def test_prefill_then_decode_equals_prefill(device, dtype, tol, rope, W):
    B, T, t0, HQ, H, K, V, M = 2, 80, 50, 4, 2, 16, 8, 8
    q, k, v, g, _ = make_inputs(B, T, HQ, H, K, V, M, device=device, dtype=dtype)
    whole, _ = nha_tvm.nha_attention(q, k, v, g, window=W, rope_theta=rope)
    o, state = nha_tvm.nha_attention(q[:, :t0], k[:, :t0], v[:, :t0], g[:, :t0], window=W,
                                     rope_theta=rope, output_final_state=True)
    cache = nha_tvm.NHACache.from_prefill(k[:, :t0], v[:, :t0], g[:, :t0], state, window=W)
    steps = [nha_tvm.nha_decode(q[:, t], k[:, t], v[:, t], g[:, t], cache, rope_theta=rope)
             for t in range(t0, T)]
    assert rel_err(torch.cat([o, torch.stack(steps, 1)], 1), whole) <= tol
    assert cache.positions.tolist() == [T] * B
    ref, _ = nha_reference(q, k, v, g, window=W, rope_theta=rope)
    assert rel_err(torch.stack(steps, 1), ref[:, t0:]) <= tol


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
@pytest.mark.parametrize("W", [0, 3])
def test_decode_gates_near_one(device, dtype, tol, W):
    """Gates a hair from 1 (g ~ -1e-6) write almost nothing: the default s = 1 - exp(g) ~ 1e-6
    the decode step makes itself must keep its digits (1 - exp(g) in float32 keeps about one),
    both for the token entering the slots and for the one it puts in the ring."""
    B, T, t0, HQ, H, K, V, M = 2, 40, 20, 4, 2, 16, 16, 8
    q, k, v, _, _ = make_inputs(B, T, HQ, H, K, V, M, device=device, dtype=dtype)
    g = -(1 + torch.rand(B, T, H, M, device=device)) * 1e-6
    _, state = nha_tvm.nha_attention(q[:, :t0], k[:, :t0], v[:, :t0], g[:, :t0], window=W,
                                     output_final_state=True)
    cache = nha_tvm.NHACache.from_prefill(k[:, :t0], v[:, :t0], g[:, :t0], state, window=W)
    steps = [nha_tvm.nha_decode(q[:, t], k[:, t], v[:, t], g[:, t], cache) for t in range(t0, T)]
    ref, ref_final = nha_reference(q, k, v, g, window=W, output_final_state=True)
    assert rel_err(torch.stack(steps, 1), ref[:, t0:]) <= tol
    assert rel_err(cache.hv, ref_final[1]) <= max(tol, 1e-5)


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
@pytest.mark.parametrize("W", [100, 200])
def test_decode_with_multi_tile_windows_at_model_head_sizes(device, dtype, tol, W):
    """K = V = 128, M = 64, and windows longer than one tile of window keys (64 on GPUs)."""
    B, T, t0, HQ, H, K, V, M = 2, 260, 230, 4, 2, 128, 128, 64
    q, k, v, g, _ = make_inputs(B, T, HQ, H, K, V, M, device=device, dtype=dtype)
    _, state = nha_tvm.nha_attention(q[:, :t0], k[:, :t0], v[:, :t0], g[:, :t0], window=W,
                                     rope_theta=10000.0, output_final_state=True)
    cache = nha_tvm.NHACache.from_prefill(k[:, :t0], v[:, :t0], g[:, :t0], state, window=W)
    steps = [nha_tvm.nha_decode(q[:, t], k[:, t], v[:, t], g[:, t], cache, rope_theta=10000.0)
             for t in range(t0, T)]
    ref, _ = nha_reference(q, k, v, g, window=W, rope_theta=10000.0)
    assert rel_err(torch.stack(steps, 1), ref[:, t0:]) <= tol


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
def test_decode_from_empty_cache(device, dtype, tol):
    B, T, HQ, H, K, V, M, W = 3, 40, 2, 1, 8, 8, 16, 5
    q, k, v, g, s = make_inputs(B, T, HQ, H, K, V, M, device=device, dtype=dtype, with_s=True)
    cache = nha_tvm.NHACache.empty(B, H, K, V, M, W, device=device, dtype=dtype)
    steps = [nha_tvm.nha_decode(q[:, t], k[:, t], v[:, t], g[:, t], cache, s=s[:, t]) for t in range(T)]
    ref, _ = nha_reference(q, k, v, g, window=W, s=s)
    assert rel_err(torch.stack(steps, 1), ref) <= tol


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
def test_layer_prefill_and_decode(device, dtype, tol):
    layer = nha_tvm.NativeHybridAttention(64, num_heads=4, num_kv_heads=2, num_slots=8, window=6,
                                          device=device, dtype=dtype)
    x = torch.randn(2, 30, 64, device=device, dtype=dtype)
    with torch.no_grad():
        y = layer(x)
        q, k, v, g = layer.project(x)
        o, _ = nha_reference(q, k, v, g, window=6, rope_theta=layer.rope_theta)
        expected = layer.o_proj(layer.o_norm(torch.nn.functional.silu(o.to(dtype))).reshape(2, 30, -1))
        assert y.shape == x.shape
        assert rel_err(y, expected) <= 3 * tol
        y_pre, cache = layer(x[:, :20], use_cache=True)
        y_dec, cache = layer(x[:, 20:], cache)
        assert rel_err(torch.cat([y_pre, y_dec], 1), y) <= 3 * tol
