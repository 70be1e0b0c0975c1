"""The compiled kernels called directly, each output buffer poisoned with NaN first."""

import torch

from nha_tvm.compiler import get_kernel
from nha_tvm.reference import rope

from .conftest import rel_err


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
