import pytest
import torch

import nha_tvm.torch_ops as torch_ops

CUDA = torch.cuda.is_available()

# (device, dtype, relative error bound); the CUDA cases run only where a GPU is present
DEVICE_CASES = [pytest.param("cpu", torch.float32, 1e-5, id="cpu-fp32")] + [
    pytest.param("cuda", dtype, tol, id=f"cuda-{name}",
                 marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")])
    for dtype, tol, name in ((torch.float32, 1e-4, "fp32"), (torch.bfloat16, 2e-2, "bf16"),
                             (torch.float16, 1e-2, "fp16"))
]


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every output buffer the ops hand to a kernel starts as NaN (an index table as the most
    negative int), so nothing unwritten passes."""
    def poisoned(*shape, dtype, device):
        fill = float("nan") if dtype.is_floating_point else torch.iinfo(dtype).min
        return torch.full(shape, fill, dtype=dtype, device=device)
    monkeypatch.setattr(torch_ops, "new_output", poisoned)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(1234)


def make_inputs(B, T, HQ, H, K, V, M, *, device="cpu", dtype=torch.float32, gate_dtype=None,
                with_s=False):
    """Fresh random q, k, v, log gates g < 0 (spread like a layer's logsigmoid(f) / 8) and s."""
    gate_dtype = dtype if gate_dtype is None else gate_dtype
    q = torch.randn(B, T, HQ, K, device=device).to(dtype)
    k = torch.randn(B, T, H, K, device=device).to(dtype)
    v = torch.randn(B, T, H, V, device=device).to(dtype)
    g = (torch.nn.functional.logsigmoid(2 * torch.randn(B, T, H, M, device=device)) / 8).to(gate_dtype)
    s = torch.rand(B, T, H, M, device=device).to(gate_dtype) if with_s else None
    return q, k, v, g, s


def rel_err(x, ref) -> float:
    x, ref = x.double().cpu(), ref.double().cpu()
    assert not torch.isnan(x).any(), "output has NaN: some element was never written"
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
