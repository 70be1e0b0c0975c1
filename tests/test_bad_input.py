"""Bad input raises a ValueError/TypeError naming the argument, before any kernel runs."""

import pytest
import torch

import nha_tvm
from nha_tvm import compiler

from .conftest import make_inputs


@pytest.fixture(autouse=True)
def no_kernel_may_run(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a kernel was requested for bad input")
    monkeypatch.setattr(compiler, "get_kernel", refuse)
    monkeypatch.setattr("nha_tvm.torch_ops.get_kernel", refuse)


def inputs(B=1, T=10, HQ=4, H=2, K=8, V=8, M=4):
    return make_inputs(B, T, HQ, H, K, V, M)[:4]


def call(q, k, v, g, **kw):
    kw.setdefault("window", 3)
    return nha_tvm.nha_attention(q, k, v, g, **kw)


@pytest.mark.parametrize("mutate,exc,words", [
    (lambda q, k, v, g: (q[0], k, v, g), ValueError, ["q", "[B, T, HQ, K]"]),
    (lambda q, k, v, g: (q, k[:, :5], v, g), ValueError, ["k", "T = 10"]),
    (lambda q, k, v, g: (q, k[..., :4], v, g), ValueError, ["k", "K = 8"]),
    (lambda q, k, v, g: (q, k, v[:, :, :1], g), ValueError, ["v", "H = 2"]),
    (lambda q, k, v, g: (q, k, v, g[:, :4]), ValueError, ["g", "T = 10"]),
    (lambda q, k, v, g: (q[:, :, :3], k, v, g), ValueError, ["HQ = 3", "multiple"]),
    (lambda q, k, v, g: (q.double(), k.double(), v.double(), g), TypeError, ["q", "float64"]),
    (lambda q, k, v, g: (q, k.half(), v, g), TypeError, ["k", "float16"]),
    (lambda q, k, v, g: (q.numpy(), k, v, g), TypeError, ["q", "torch.Tensor"]),
    (lambda q, k, v, g: (q, k, v, g.to("meta")), ValueError, ["g", "meta"]),
])
def test_bad_tensors(mutate, exc, words):
    with pytest.raises(exc) as err:
        call(*mutate(*inputs()))
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("kw,exc,word", [
    (dict(window=-1), ValueError, "window"),
    (dict(window=2.5), TypeError, "window"),
    (dict(window=True), TypeError, "window"),
    (dict(rope_theta=-1.0), ValueError, "rope_theta"),
    (dict(scale="x"), TypeError, "scale"),
    (dict(s=torch.rand(1, 10, 2, 5)), ValueError, "s must"),
    (dict(initial_state=(torch.zeros(1, 2, 8, 4),)), TypeError, "initial_state"),
    (dict(initial_state=(torch.zeros(1, 2, 8, 5), torch.zeros(1, 2, 4, 8))), ValueError, "initial_state[hk]"),
    (dict(initial_state=(torch.zeros(1, 2, 8, 4, dtype=torch.float64), torch.zeros(1, 2, 4, 8))), TypeError, "float32"),
])
def test_bad_arguments(kw, exc, word):
    with pytest.raises(exc) as err:
        call(*inputs(), **kw)
    assert word in str(err.value)


def test_rope_needs_even_key_dim():
    with pytest.raises(ValueError, match="even"):
        call(*inputs(K=7), rope_theta=10000.0)


@pytest.mark.parametrize("cu,B,exc,word", [
    (torch.tensor([0.0, 10.0]), 1, TypeError, "int32"),
    (torch.tensor([0, 4, 10]), 2, ValueError, "batch 1"),
    (torch.tensor([1, 4, 10]), 1, ValueError, "start at 0"),
    (torch.tensor([0, 4, 9]), 1, ValueError, "end at T = 10"),
    (torch.tensor([0, 6, 4, 10]), 1, ValueError, "non-decreasing"),
    (torch.tensor([[0, 10]]), 1, ValueError, "[N + 1]"),
    ([0, 10], 1, TypeError, "cu_seqlens"),
])
def test_bad_cu_seqlens(cu, B, exc, word):
    with pytest.raises(exc) as err:
        call(*inputs(B=B), cu_seqlens=cu)
    assert word in str(err.value)


def test_gradients_are_refused_clearly():
    q, k, v, g = inputs()
    with pytest.raises(NotImplementedError, match="no backward"):
        call(q.requires_grad_(), k, v, g)


def test_decode_checks_against_the_cache():
    cache = nha_tvm.NHACache.empty(2, 2, 8, 8, 4, 3)
    q, k, v, g = (x[:, 0] for x in make_inputs(2, 1, 4, 2, 8, 8, 4)[:4])
    with pytest.raises(ValueError, match="k must have shape"):
        nha_tvm.nha_decode(q, k[:1], v, g, cache)
    with pytest.raises(ValueError, match="M"):
        nha_tvm.nha_decode(q, k, v, g[..., :3], cache)
    with pytest.raises(TypeError, match="cache must be"):
        nha_tvm.nha_decode(q, k, v, g, object())
    with pytest.raises(ValueError, match="window"):
        nha_tvm.NHACache.empty(2, 2, 8, 8, 4, -1)
    with pytest.raises(ValueError, match="final_state"):
        nha_tvm.NHACache.from_prefill(*make_inputs(2, 5, 4, 2, 8, 8, 4)[1:4],
                                      (torch.zeros(1, 2, 8, 4), torch.zeros(1, 2, 4, 8)), window=3)


@pytest.mark.parametrize("dims,word", [(dict(M=0), "M must be >= 1"), (dict(V=0), "V must be >= 1"),
                                       (dict(K=0), "K must be >= 1"), (dict(HQ=0), "HQ must be >= 1")])
def test_zero_sized_dimensions(dims, word):
    with pytest.raises(ValueError, match=word):
        call(*inputs(**dims))


def test_sizes_beyond_32_bit_indexing_are_refused():
    def huge(*shape):  # broadcast views: the shapes of 2**31 elements without the memory
        return torch.zeros(1).expand(*shape)

    q, kv, g = huge(1, 2**21, 8, 128), huge(1, 2**21, 2, 128), huge(1, 2**21, 2, 4)
    with pytest.raises(ValueError, match="32 bits"):
        nha_tvm.nha_attention(q, kv, kv, g, window=3)
    with pytest.raises(ValueError, match="32 bits"):
        nha_tvm.NHACache.empty(16, 8, 128, 128, 64, 131072, device="meta")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="only CUDA has several gate dtypes")
def test_g_and_s_share_a_dtype():
    q, k, v, g = (x.cuda() for x in inputs())
    with pytest.raises(TypeError, match="g, s must share one dtype"):
        call(q, k, v, g, s=torch.rand_like(g).bfloat16())
