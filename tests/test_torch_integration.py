"""torch.library ops, torch.compile, the module cache, CUDA streams and graphs."""

import logging

import pytest
import torch

import nha_tvm
from nha_tvm import compiler

from .conftest import CUDA, make_inputs, rel_err

DEVICES = [pytest.param("cpu")] + [
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")])]


def prefill_args(device, with_s=True):
    q, k, v, g, s = make_inputs(1, 40, 4, 2, 8, 8, 4, device=device, with_s=with_s)
    cu = torch.tensor([0, 15, 40], dtype=torch.int32, device=device)
    return (q, k, v, g, s, cu, None, None, 5, 0.3, 10000.0)


def decode_args(device="cpu"):
    B, H, K, V, M, W = 2, 2, 8, 8, 4, 3
    cache = nha_tvm.NHACache.empty(B, H, K, V, M, W, device=device)
    q, k, v, g, s = (x[:, 0] for x in make_inputs(B, 1, 4, H, K, V, M, device=device, with_s=True))
    return (q, k, v, g, s, cache.hk, cache.hv, cache.ring_k, cache.ring_v, cache.ring_g,
            cache.ring_s, cache.positions, W, 0.35, None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_s", [True, False], ids=["explicit_s", "default_s"])
def test_opcheck_prefill(device, with_s):
    torch.library.opcheck(torch.ops.nha.prefill.default, prefill_args(device, with_s))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_decode(device):
    torch.library.opcheck(torch.ops.nha.decode.default, decode_args(device))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    q, k, v, g, _ = make_inputs(2, 33, 4, 2, 8, 8, 4, device=device)

    def layer_math(q, k, v, g):
        o, _ = nha_tvm.nha_attention(q, k, v, g, window=4, rope_theta=10000.0)
        return torch.nn.functional.silu(o) * 2

    torch._dynamo.reset()
    compiled = torch.compile(layer_math, fullgraph=True)
    assert rel_err(compiled(q, k, v, g), layer_math(q, k, v, g)) <= 1e-6


def test_decode_schema_marks_the_cache_written():
    """What functionalization (torch.compile) and autograd go by: the decode op writes exactly
    its cache tensors, the prefill op nothing."""
    def written(op):
        return [a.name for a in op._schema.arguments if a.alias_info is not None and a.alias_info.is_write]

    assert written(torch.ops.nha.decode.default) == ["hk", "hv", "ring_k", "ring_v", "ring_g", "ring_s", "pos"]
    assert written(torch.ops.nha.prefill.default) == []
    for op in (torch.ops.nha.decode.default, torch.ops.nha.prefill.default):
        assert torch.Tag.pt2_compliant_tag in op.tags


def test_decode_bumps_the_version_of_what_it_writes():
    args = decode_args()
    before = [x._version for x in args[5:12]]
    torch.ops.nha.decode(*args)
    assert all(x._version > v for x, v in zip(args[5:12], before))


def test_torch_compile_decode_updates_the_cache():
    """Compiled, the decode steps leave the cache and the output as eager steps do."""
    B, H, K, V, M, W = 2, 2, 8, 8, 4, 3
    eager, compiled_cache = (nha_tvm.NHACache.empty(B, H, K, V, M, W) for _ in range(2))
    q, k, v, g, _ = make_inputs(B, 2 * W + 1, 4, H, K, V, M, device="cpu")

    def step(q, k, v, g, cache):
        return nha_tvm.nha_decode(q, k, v, g, cache, rope_theta=10000.0) * 2

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    for t in range(q.shape[1]):  # past W steps, so tokens leave the window into the slots
        args = (q[:, t], k[:, t], v[:, t], g[:, t])
        assert torch.equal(compiled(*args, compiled_cache), step(*args, eager))
    for name in ("hk", "hv", "ring_k", "ring_v", "ring_g", "ring_s", "positions"):
        assert torch.equal(getattr(compiled_cache, name), getattr(eager, name)), name


@pytest.mark.parametrize("op, make_args", [(torch.ops.nha.prefill, lambda: prefill_args("cpu")),
                                           (torch.ops.nha.decode, decode_args)], ids=["prefill", "decode"])
def test_ops_refuse_inputs_that_require_grad(op, make_args):
    args = list(make_args())
    args[0] = args[0].requires_grad_()
    with pytest.raises(NotImplementedError, match="no backward pass"):
        op(*args)
    with torch.no_grad():
        op(*args)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NHA_TVM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("NHA_TVM_TUNING_DIR", str(tmp_path / "no-records"))  # default schedules
    monkeypatch.setattr(compiler, "_loaded", {})
    builds = []
    real_build = compiler.build
    monkeypatch.setattr(compiler, "build", lambda *a: builds.append(a[0]) or real_build(*a))
    return tmp_path, builds


def test_new_lengths_and_batches_do_not_recompile(fresh_cache, caplog):
    cache_dir, builds = fresh_cache
    with caplog.at_level(logging.DEBUG, logger="nha_tvm.compiler"):
        for B, T in ((1, 10), (3, 70), (2, 129)):
            nha_tvm.nha_attention(*make_inputs(B, T, 2, 2, 8, 8, 4)[:4], window=3)
    assert sorted(builds) == ["chunk_attend", "chunk_layout", "slot_state_scan"]
    assert "compiled chunk_attend" in caplog.text
    assert len(list(cache_dir.glob("*.so"))) == 3
    # a new process (empty memory caches) loads from disk and logs the hit
    compiler._loaded.clear()
    compiler._resolve.cache_clear()
    with caplog.at_level(logging.DEBUG, logger="nha_tvm.compiler"):
        nha_tvm.nha_attention(*make_inputs(1, 20, 2, 2, 8, 8, 4)[:4], window=3)
    assert len(builds) == 3 and "cache hit" in caplog.text


def test_corrupt_cached_module_is_rebuilt(fresh_cache, monkeypatch, caplog):
    cache_dir, builds = fresh_cache
    args = make_inputs(1, 20, 2, 2, 8, 8, 4)[:4]
    expected, _ = nha_tvm.nha_attention(*args, window=3)
    # the same file names in another cache dir, torn (a loaded library is never overwritten)
    torn_dir = cache_dir / "torn"
    torn_dir.mkdir()
    for path in [p for p in cache_dir.iterdir() if p.is_file()]:
        (torn_dir / path.name).write_bytes(path.read_bytes()[:1000] if path.suffix == ".so" else path.read_bytes())
    monkeypatch.setenv("NHA_TVM_CACHE_DIR", str(torn_dir))
    compiler._loaded.clear()
    compiler._resolve.cache_clear()
    with caplog.at_level(logging.WARNING, logger="nha_tvm.compiler"):
        out, _ = nha_tvm.nha_attention(*args, window=3)
    assert "rebuilding" in caplog.text and len(builds) == 6  # every module built twice
    assert torch.equal(out, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_runs_on_the_current_torch_stream():
    args = make_inputs(1, 500, 4, 2, 64, 64, 16, device="cuda", dtype=torch.bfloat16)[:4]
    expected, _ = nha_tvm.nha_attention(*args, window=16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            out, _ = nha_tvm.nha_attention(*args, window=16)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert torch.equal(out, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_decode_in_a_cuda_graph():
    B, H, K, V, M, W = 4, 2, 64, 64, 16, 8
    q, k, v, g, _ = make_inputs(B, 12, 4, H, K, V, M, device="cuda", dtype=torch.bfloat16)
    eager = nha_tvm.NHACache.empty(B, H, K, V, M, W, device="cuda", dtype=torch.bfloat16)
    graphed = nha_tvm.NHACache.empty(B, H, K, V, M, W, device="cuda", dtype=torch.bfloat16)
    static = [x[:, 0].clone() for x in (q, k, v, g)]
    nha_tvm.nha_decode(*static, nha_tvm.NHACache.empty(B, H, K, V, M, W, device="cuda", dtype=torch.bfloat16))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = nha_tvm.nha_decode(*static, graphed)
    for t in range(12):
        for buf, x in zip(static, (q, k, v, g)):
            buf.copy_(x[:, t])
        graph.replay()
        ref = nha_tvm.nha_decode(q[:, t], k[:, t], v[:, t], g[:, t], eager)
        assert rel_err(out, ref) <= 1e-6


def test_unwritable_cache_dir_keeps_modules_in_memory(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("NHA_TVM_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(compiler, "_loaded", {})
    args = make_inputs(1, 30, 2, 2, 8, 8, 4)[:4]
    with caplog.at_level(logging.WARNING, logger="nha_tvm.compiler"):
        out, _ = nha_tvm.nha_attention(*args, window=3)
    assert "cannot write the module cache" in caplog.text
    ref, _ = nha_tvm.reference.nha_reference(*args, window=3)
    assert rel_err(out, ref) <= 1e-5
