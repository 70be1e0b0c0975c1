"""The CUDA modules build for sm_90 on any machine with nvcc (no GPU needed)."""

import pytest

from nha_tvm.compiler import build

SHAPES = dict(HQ=16, H=8, K=128, V=128, M=64)
KERNELS = [
    ("slot_state_scan", dict(H=8, K=128, V=128, M=64, C=64, kv_dtype="bfloat16", gate_dtype="float32")),
    ("chunk_attend", dict(SHAPES, C=64, io_dtype="bfloat16", gate_dtype="bfloat16")),
    ("chunk_attend", dict(SHAPES, C=64, io_dtype="float16", gate_dtype="float32")),
    ("rope", dict(heads=16, K=128, io_dtype="bfloat16")),
    ("decode_step", dict(SHAPES, io_dtype="bfloat16", gate_dtype="float32")),
]


@pytest.mark.parametrize("kernel,params", KERNELS, ids=[f"{k}-{p.get('io_dtype', p.get('kv_dtype'))}" for k, p in KERNELS])
def test_cuda_module_builds_for_sm90(kernel, params, tmp_path):
    executable = build(kernel, params, "sm_90")
    source = executable.mod.imports[0].inspect_source()
    assert "__global__" in source and kernel in source
    path = tmp_path / f"{kernel}.so"
    executable.export_library(str(path))
    assert path.stat().st_size > 10_000
