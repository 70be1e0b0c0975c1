"""Prefill kernels against the float64 reference of the spec."""

import pytest
import torch

import nha_tvm
from nha_tvm.kernels.cuda.chunk_attend import diagonal_decay_limit
from nha_tvm.reference import nha_reference

from .conftest import DEVICE_CASES, make_inputs, rel_err


def check(device, dtype, tol, B, T, HQ, H, K, V, M, W, rope=None, with_s=False, initial=False):
    q, k, v, g, s = make_inputs(B, T, HQ, H, K, V, M, device=device, dtype=dtype, with_s=with_s)
    state = None
    if initial:
        state = (torch.randn(B, H, K, M, device=device), torch.randn(B, H, M, V, device=device))
    o, final = nha_tvm.nha_attention(q, k, v, g, window=W, s=s, rope_theta=rope,
                                     initial_state=state, output_final_state=True)
    ref, ref_final = nha_reference(q, k, v, g, window=W, s=s, rope_theta=rope,
                                   initial_state=state, output_final_state=True)
    assert o.shape == (B, T, HQ, V) and o.dtype == dtype
    assert rel_err(o, ref) <= tol
    assert final[0].dtype == torch.float32 and final[0].shape == (B, H, K, M)
    assert rel_err(final[0], ref_final[0]) <= max(tol, 1e-5)
    assert rel_err(final[1], ref_final[1]) <= max(tol, 1e-5)


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
@pytest.mark.parametrize("T", [1, 2, 63, 64, 65, 300])
@pytest.mark.parametrize("W", [0, 1, 3, 64, 1000])
def test_windows_and_lengths(device, dtype, tol, T, W):
    check(device, dtype, tol, B=2, T=T, HQ=2, H=2, K=16, V=16, M=16, W=W)


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
@pytest.mark.parametrize("M", [1, 16, 64])
def test_slots(device, dtype, tol, M):
    check(device, dtype, tol, B=1, T=130, HQ=2, H=1, K=16, V=8, M=M, W=5)


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
@pytest.mark.parametrize("rope", [None, 10000.0])
@pytest.mark.parametrize("W", [0, 3, 64])
def test_gqa_kv_dims_rope(device, dtype, tol, rope, W):
    check(device, dtype, tol, B=2, T=100, HQ=4, H=2, K=16, V=24, M=8, W=W, rope=rope)


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
@pytest.mark.parametrize("W", [64, 280])
def test_head_dims_of_real_models_without_rope(device, dtype, tol, W):
    """Without RoPE too (the output pass for short windows rotates q and k itself when RoPE
    is on, the one for long windows reads the RoPE kernels' copies)."""
    check(device, dtype, tol, B=2, T=300, HQ=4, H=2, K=64, V=64, M=32, W=W)


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
@pytest.mark.parametrize("K,V,M", [(64, 64, 32), (128, 128, 64)])
@pytest.mark.parametrize("W", [0, 64, 200, 280])
def test_head_dims_of_real_models(device, dtype, tol, K, V, M, W):
    """Head and slot sizes of real models (on GPUs the 16-bit cases take the tensor-core path;
    W = 280, past kernel_plan.LONG_WINDOW_CHUNKS chunks, its variant for long windows)."""
    check(device, dtype, tol, B=2, T=300, HQ=4, H=2, K=K, V=V, M=M, W=W, rope=10000.0)


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
@pytest.mark.parametrize("K,V,M", [(64, 64, 65), (128, 64, 48)])
def test_key_tensor_cores_with_slots_on_cuda_cores(device, dtype, tol, K, V, M):
    """16-bit keys and values on tensor cores while the slots' tiles do not deal out to the
    warps (their path on CUDA cores): K != V, and an odd M wider than V (the products' rows
    must stay 8-byte aligned for the accumulators' paired stores)."""
    check(device, dtype, tol, B=1, T=150, HQ=2, H=2, K=K, V=V, M=M, W=40, rope=10000.0)


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
def test_inputs_at_an_odd_storage_offset(device, dtype, tol):
    """Contiguous views whose data starts off any vector boundary (the tensor-core path reads
    16-byte vectors) give the same result as the reference; an explicit s too."""
    B, T, HQ, H, K, V, M, W = 1, 150, 2, 2, 64, 64, 32, 40
    q, k, v, g, s = make_inputs(B, T, HQ, H, K, V, M, device=device, dtype=dtype, with_s=True)

    def shifted(x):  # the same values, one element into a larger buffer
        buffer = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
        view = buffer[1:].view(x.shape)
        view.copy_(x)
        return view
    q1, k1, v1, g1, s1 = shifted(q), shifted(k), shifted(v), shifted(g), shifted(s)
    assert q1.data_ptr() % 16 != 0 and s1.data_ptr() % 16 != 0 and s1.is_contiguous()
    o, _ = nha_tvm.nha_attention(q1, k1, v1, g1, s=s1, window=W, rope_theta=10000.0)
    ref, _ = nha_reference(q, k, v, g, s=s, window=W, rope_theta=10000.0)
    assert rel_err(o, ref) <= tol


def test_window_beyond_any_int_is_the_whole_sequence():
    """W >= T is all the same: a window past int64 (which the op's int could not carry) is too."""
    q, k, v, g, _ = make_inputs(1, 20, 2, 2, 8, 8, 4)
    o, _ = nha_tvm.nha_attention(q, k, v, g, window=2**70)
    expected, _ = nha_tvm.nha_attention(q, k, v, g, window=20)
    assert torch.equal(o, expected)


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
def test_initial_state_and_explicit_s(device, dtype, tol):
    check(device, dtype, tol, B=2, T=90, HQ=2, H=2, K=8, V=12, M=4, W=7, with_s=True, initial=True)


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
def test_gates_near_one(device, dtype, tol):
    """Gates a hair from 1 (g ~ -1e-6) write almost nothing: s = 1 - exp(g) ~ 1e-6. With W = 0
    the output is the slot read-out, proportional to s, so a loss of its digits anywhere (the
    default s, the state additions, 16-bit operands near their range's end) shows in it."""
    q, k, v, _, _ = make_inputs(1, 150, 4, 2, 64, 64, 32, device=device, dtype=dtype)
    g = -(1 + torch.rand(1, 150, 2, 32, device=device)) * 1e-6
    o, final = nha_tvm.nha_attention(q, k, v, g, window=0, output_final_state=True)
    ref, ref_final = nha_reference(q, k, v, g, window=0, output_final_state=True)
    assert rel_err(o, ref) <= tol
    assert rel_err(final[0], ref_final[0]) <= max(tol, 1e-5)
    assert rel_err(final[1], ref_final[1]) <= max(tol, 1e-5)


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
@pytest.mark.parametrize("strength", ["near_the_limit", "past_it_in_some_chunks", "large_explicit_s"])
@pytest.mark.parametrize("W", [0, 20])
def test_strong_gates(device, dtype, tol, strength, W):
    """Gates that forget fast. On tensor cores the diagonal 16-token blocks of a chunk go
    through a reference point while the gates' decay within 16 tokens stays within a limit
    (``diagonal_decay_limit``: 60 for bf16, 8 for fp16) and every |s| <= 1, and through the
    pairwise form past it. Near the limit the reference point's factors are as large as they
    get; past it (g down to -40 in a stretch of tokens and slots, and in the last, partial
    chunk) some chunks take each form in the same call; an explicit s of up to 40 takes the
    pairwise form (in fp16 its diagonal terms would pass the dtype's range)."""
    B, T, HQ, H, K, V, M = 1, 200, 2, 2, 64, 64, 32
    q, k, v, g, _ = make_inputs(B, T, HQ, H, K, V, M, device=device, dtype=dtype)
    limit = diagonal_decay_limit("float16" if dtype == torch.float16 else "bfloat16")
    s = None
    if strength == "near_the_limit":
        g = torch.full_like(g, -0.95 * limit / 16)
    elif strength == "past_it_in_some_chunks":
        g = g.clone()
        for first, last in ((70, 110), (192, 200)):
            g[:, first:last, :, : M // 2] = (-40 * torch.rand(B, last - first, H, M // 2, device=device)).to(g.dtype)
    else:
        s = (40 * torch.rand(g.shape, device=device)).to(g.dtype)
    o, final = nha_tvm.nha_attention(q, k, v, g, window=W, s=s, output_final_state=True)
    ref, ref_final = nha_reference(q, k, v, g, window=W, s=s, output_final_state=True)
    assert rel_err(o, ref) <= tol
    assert rel_err(final[0], ref_final[0]) <= max(tol, 1e-5)
    assert rel_err(final[1], ref_final[1]) <= max(tol, 1e-5)


@pytest.mark.parametrize("device,dtype,tol", DEVICE_CASES)
def test_full_attention_window_is_softmax_with_null_slots(device, dtype, tol):
    """W >= T: the slots never fill, so NHA is causal softmax attention plus M zero-logit keys."""
    B, T, H, K, M = 1, 50, 2, 16, 4
    q, k, v, g, _ = make_inputs(B, T, H, H, K, K, M, device=device, dtype=dtype)
    o, _ = nha_tvm.nha_attention(q, k, v, g, window=T)
    qd, kd, vd = (x.double().transpose(1, 2) for x in (q, k, v))
    logits = qd @ kd.transpose(-1, -2) * K ** -0.5
    logits = logits.masked_fill(torch.ones(T, T, dtype=torch.bool, device=device).triu(1), float("-inf"))
    null = torch.zeros(B, H, T, M, dtype=torch.float64, device=device)
    p = torch.softmax(torch.cat([null, logits], -1), -1)[..., M:]
    assert rel_err(o, (p @ vd).transpose(1, 2)) <= tol


def test_non_contiguous_inputs():
    q, k, v, g, _ = make_inputs(3, 40, 2, 2, 8, 8, 4)
    strided = [x.transpose(0, 1).contiguous().transpose(0, 1) for x in (q, k, v, g)]
    assert not strided[0].is_contiguous()
    o, _ = nha_tvm.nha_attention(*strided, window=5)
    ref, _ = nha_reference(q, k, v, g, window=5)
    assert rel_err(o, ref) <= 1e-5
