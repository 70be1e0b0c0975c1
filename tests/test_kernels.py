"""The compiled kernels called directly, each output buffer poisoned with NaN first."""

import pytest
import torch

from nha_tvm.compiler import get_kernel
from nha_tvm.reference import rope
from nha_tvm.targets import arch_name

from .conftest import CUDA, rel_err


def test_rope_kernel():
    x = torch.randn(37, 3, 16)
    pos = torch.arange(37, dtype=torch.int32) + 5
    out = torch.full_like(x, float("nan"))
    get_kernel("rope", "cpu", heads=3, K=16, io_dtype="float32")(x, pos, out, 500.0)
    assert rel_err(out, rope(x.double(), pos, 500.0)) <= 1e-5


def test_state_scan_writes_every_chunk_start():
    H, K, V, M, C, W = 2, 4, 3, 5, 64, 2
    lens = [70, 130]
    cu = torch.tensor([0, 70, 200], dtype=torch.int32)
    chunk_offsets = torch.tensor([0, 2, 5], dtype=torch.int32)
    k, v = torch.randn(200, H, K), torch.randn(200, H, V)
    g, s = -torch.rand(200, H, M) / 4, torch.rand(200, H, M)
    h0k, h0v = torch.randn(2, H, K, M), torch.randn(2, H, M, V)
    out = [torch.full(shape, float("nan")) for shape in ((5, H, K, M), (5, H, M, V), (2, H, K, M), (2, H, M, V))]
    scan = get_kernel("slot_state_scan", "cpu", H=H, K=K, V=V, M=M, C=C, kv_dtype="float32", gate_dtype="float32")
    scan(k, v, g, s, cu, chunk_offsets, h0k, h0v, *out, W)
    for n, (lo, length) in enumerate(zip([0, 70], lens)):
        hk, hv = h0k[n].double(), h0v[n].double()
        for t in range(length):
            if t % C == 0:
                c = int(chunk_offsets[n]) + t // C
                assert rel_err(out[0][c], hk) <= 1e-5 and rel_err(out[1][c], hv) <= 1e-5
            if t >= W:
                j = lo + t - W
                hk = hk * g[j].double().exp()[:, None, :] + k[j].double()[:, :, None] * s[j].double()[:, None, :]
                hv = hv * g[j].double().exp()[:, :, None] + s[j].double()[:, :, None] * v[j].double()[:, None, :]
        assert rel_err(out[2][n], hk) <= 1e-5 and rel_err(out[3][n], hv) <= 1e-5


def _chunk_prefix_sums(g, cu, C, W):
    """G of the spec's chunked form: the shifted gates g'_t = g_{t-W} summed from each chunk start."""
    out = torch.zeros_like(g)
    for lo, hi in zip(cu[:-1].tolist(), cu[1:].tolist()):
        shifted = torch.cat([torch.zeros_like(g[lo:lo + min(W, hi - lo)]), g[lo:max(hi - W, lo)]])
        for c0 in range(0, hi - lo, C):
            out[lo + c0:lo + min(c0 + C, hi - lo)] = torch.cumsum(shifted[c0:c0 + C], 0)
    return out


@pytest.mark.parametrize("grouped", [False, True], ids=["plain", "grouped"])
def test_chunk_gate_prefix_sums(grouped):
    H, M, C, W = 2, 5, 64, 3
    cu = torch.tensor([0, 70, 200, 200], dtype=torch.int32)  # the last sequence is empty
    chunk_offsets = torch.tensor([0, 2, 5, 5], dtype=torch.int32)
    chunk_seq = torch.tensor([0, 0, 1, 1, 1, 3, 3], dtype=torch.int32)  # two padding chunks
    g = -torch.rand(200, H, M)
    g[::3] *= 1e-6  # gates a hair from 1: s = 1 - exp(g) must keep its digits
    cumsum = get_kernel("chunk_gate_cumsum", "cpu", H=H, M=M, C=C, gate_dtype="float32", grouped=grouped)
    out, s = torch.full_like(g, float("nan")), torch.full_like(g, float("nan"))
    cumsum(g, cu, chunk_offsets, chunk_seq, out, s, W, 1)
    assert torch.allclose(out, _chunk_prefix_sums(g, cu, C, W), atol=1e-5)
    expected = -torch.expm1(g.double())
    assert ((s.double() - expected).abs() / expected).max() < 1e-6
    # write_s = 0: the caller's own s, which the kernel leaves alone
    out, s = torch.full_like(g, float("nan")), torch.full_like(g, 7.0)
    cumsum(g, cu, chunk_offsets, chunk_seq, out, s, W, 0)
    assert torch.allclose(out, _chunk_prefix_sums(g, cu, C, W), atol=1e-5) and torch.all(s == 7.0)


def test_chunk_state_scan_carries_states_across_chunks():
    from nha_tvm.kernels.chunk_state_scan import UNROLL

    H, K, V, M, C = 2, 4, 3, 5, 64
    # a short sequence, and one whose chunks span several groups of UNROLL and part of another
    long_chunks = 2 * UNROLL + 3
    total = 70 + C * (long_chunks - 1) + 5
    cu = torch.tensor([0, 70, total], dtype=torch.int32)
    chunk_offsets = torch.tensor([0, 2, 2 + long_chunks], dtype=torch.int32)
    NC = 2 + long_chunks
    gcum = _chunk_prefix_sums(-torch.rand(total, H, M) / 4, cu, C, 0)
    add_k, add_v = torch.randn(NC, H, K, M), torch.randn(NC, H, M, V)
    h0k, h0v = torch.randn(2, H, K, M), torch.randn(2, H, M, V)
    chunk_k, chunk_v = torch.full_like(add_k, float("nan")), torch.full_like(add_v, float("nan"))
    hk, hv = torch.full((2, H, K, M), float("nan")), torch.full((2, H, M, V), float("nan"))
    scan = get_kernel("chunk_state_scan", "cpu", H=H, K=K, V=V, M=M, C=C, state_dtype="float32")
    scan(gcum, cu, chunk_offsets, h0k, h0v, add_k.clone(), add_v.clone(), chunk_k, chunk_v, hk, hv)
    for n, (lo, hi) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        state_k, state_v = h0k[n].clone(), h0v[n].clone()
        for c in range(-(-(hi - lo) // C)):
            index = chunk_offsets[n] + c
            assert torch.allclose(chunk_k[index], state_k, atol=1e-5)  # the state at the chunk start
            assert torch.allclose(chunk_v[index], state_v, atol=1e-5)
            decay = torch.exp(gcum[lo + min(c * C + C, hi - lo) - 1])  # to the chunk's last token
            state_k = state_k * decay[:, None, :] + add_k[index]
            state_v = state_v * decay[:, :, None] + add_v[index]
        assert torch.allclose(hk[n], state_k, atol=1e-5) and torch.allclose(hv[n], state_v, atol=1e-5)


def _layout_reference(cu, C):
    """The index tables from their definitions, with torch ops."""
    N, total = cu.shape[0] - 1, int(cu[-1])
    lens = (cu[1:] - cu[:-1]).long()
    offsets = torch.zeros(N + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum((lens + C - 1) // C, 0)
    chunk_seq = torch.searchsorted(offsets, torch.arange(total // C + N), right=True) - 1
    seq = torch.repeat_interleave(torch.arange(N), lens, output_size=total)
    return offsets.int(), chunk_seq.int(), (torch.arange(total) - cu.long()[seq]).int()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")])])
@pytest.mark.parametrize("lens", [[2048], [70, 130, 0], [0, 5], [64, 64, 1, 0, 171], [1] * 9 + [300]])
def test_chunk_layout_tables(device, lens):
    C = 64
    cu = torch.tensor([0] + lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    N, total = len(lens), sum(lens)
    tables = [torch.full((n,), -99, dtype=torch.int32, device=device) for n in (N + 1, total // C + N, total)]
    get_kernel("chunk_layout", arch_name(torch.device(device)), C=C)(cu.to(device), *tables)
    for got, want in zip(tables, _layout_reference(cu, C)):
        assert torch.equal(got.cpu(), want)
