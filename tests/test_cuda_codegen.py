"""The CUDA kernels generate code and compile with nvcc for sm_90 on any machine (no GPU needed).

Without a CUDA driver TVM keeps the generated source in the module (it would compile it at load
time), so the test hands that source to nvcc itself and checks that an sm_90 cubin comes out.
"""

import re
import shutil
import subprocess

import pytest
import tvm
from tvm.s_tir.analysis import calculate_allocated_bytes
from tvm.support.nvcc import compile_cuda
from tvm.tirx.build import split_host_device_mods

from nha_tvm.compiler import build
from nha_tvm.kernels import KERNELS as DEFINITIONS
from nha_tvm.kernel_plan import (LONG_WINDOW_CHUNKS, attend_role, decode_kernel, gates_role, launchable,
                                  prefill_kernels, state_fused_role)
from nha_tvm.kernels.cuda.chunk_attend import key_value_bytes, key_value_scope, shared_bytes, tile_layout
from nha_tvm.schedules import CHUNK_SIZE, default_schedule, rule_for
from nha_tvm.targets import max_threads_per_sm, target_for

SHAPES = dict(HQ=16, H=8, K=128, V=128, M=64)
KERNELS = [
    ("slot_state_scan", dict(H=8, K=128, V=128, M=64, C=64, kv_dtype="bfloat16", gate_dtype="float32")),
    ("chunk_attend", dict(SHAPES, C=64, io_dtype="bfloat16", gate_dtype="bfloat16")),
    ("chunk_attend", dict(SHAPES, C=64, io_dtype="float16", gate_dtype="float32")),
    ("rope", dict(heads=16, K=128, io_dtype="bfloat16")),
    ("decode_step", dict(SHAPES, io_dtype="bfloat16", gate_dtype="float32")),
    ("chunk_gate_cumsum", dict(H=8, M=64, C=64, gate_dtype="float32")),
    ("chunk_layout", dict(C=64)),
    ("chunk_state_delta", dict(H=8, K=128, V=128, M=64, C=64, kv_dtype="bfloat16", gate_dtype="float32")),
    ("chunk_state_scan", dict(H=8, K=128, V=128, M=64, C=64, state_dtype="bfloat16")),
    ("chunk_state_fused", dict(H=8, K=128, V=128, M=64, C=64, kv_dtype="bfloat16", gate_dtype="float32",
                               state_dtype="bfloat16")),
    ("chunk_state_fused", dict(H=8, K=128, V=128, M=64, C=64, kv_dtype="bfloat16", gate_dtype="float32",
                               state_dtype="bfloat16", blocks_per_sm=2)),
    ("chunk_state_fused", dict(H=8, K=128, V=128, M=64, C=64, kv_dtype="bfloat16", gate_dtype="bfloat16",
                               state_dtype="bfloat16")),
    ("chunk_attend_cuda", dict(SHAPES, C=64, io_dtype="bfloat16", gate_dtype="float32")),
    ("chunk_attend_cuda", dict(SHAPES, C=64, io_dtype="bfloat16", gate_dtype="float32", values_ahead=True)),
    ("chunk_attend_cuda", dict(SHAPES, C=64, io_dtype="bfloat16", gate_dtype="float32", rope_inside=True)),
    ("chunk_attend_cuda", dict(HQ=4, H=2, K=16, V=24, M=8, C=64, io_dtype="float32", gate_dtype="float32")),
    ("decode_step_cuda", dict(SHAPES, io_dtype="bfloat16", gate_dtype="float32")),
    ("decode_step_cuda", dict(HQ=4, H=2, K=32, V=16, M=16, io_dtype="float32", gate_dtype="float32")),
    # head and slot sizes whose 16-blocks are odd (no vector type for a thread's run), tensor
    # cores for the keys but not the slots, and a GQA group that keeps 256 decode threads
    ("chunk_state_delta", dict(H=4, K=80, V=112, M=48, C=64, kv_dtype="bfloat16", gate_dtype="float32")),
    # float16 state additions: CUDA cores, the rows stored as 16-byte vectors
    ("chunk_state_delta", dict(H=4, K=128, V=128, M=64, C=64, kv_dtype="float16", gate_dtype="float32")),
    ("chunk_attend_cuda", dict(HQ=4, H=4, K=80, V=80, M=48, C=64, io_dtype="bfloat16", gate_dtype="float32")),
    ("chunk_attend_cuda", dict(HQ=4, H=2, K=64, V=64, M=16, C=64, io_dtype="float16", gate_dtype="float32")),
    ("decode_step_cuda", dict(HQ=32, H=4, K=128, V=128, M=64, io_dtype="bfloat16", gate_dtype="float32")),
    # 16-bit gates, with the slots on tensor cores and (M = 6) on CUDA cores
    ("chunk_attend_cuda", dict(HQ=4, H=2, K=64, V=64, M=16, C=64, io_dtype="bfloat16", gate_dtype="bfloat16")),
    ("chunk_attend_cuda", dict(HQ=4, H=2, K=64, V=64, M=6, C=64, io_dtype="bfloat16", gate_dtype="bfloat16")),
]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("kernel,params", KERNELS, ids=[f"{k}-{next((v for n, v in p.items() if n.endswith('dtype')), 'int32')}" for k, p in KERNELS])
def test_cuda_kernel_compiles_with_nvcc_for_sm90(kernel, params, tmp_path):
    executable = build(kernel, params, "sm_90")
    source = executable.mod.imports[0].inspect_source()
    assert "__global__" in source and kernel in source
    # TVM 0.27 rewrote an index floordiv(c - x, d) into floordiv(x, -d) + ..., which is off by
    # one whenever d does not divide x (BENCHMARKS.md, the last-to-first chunk order); none of
    # our kernels divides by a negative constant otherwise
    assert not re.search(r"[%/] -\d", source), "integer division by a negative constant"
    with target_for("sm_90"):
        cubin = compile_cuda(source, target_format="cubin", arch="sm_90", compiler="nvcc")
    assert bytes(cubin[:4]) == b"\x7fELF" and len(cubin) > 4096
    path = tmp_path / f"{kernel}.so"
    executable.export_library(str(path))
    assert path.stat().st_size > 10_000


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_benchmark_shape_kernels_stay_in_registers(tmp_path):
    """ptxas keeps every CUDA kernel of the benchmark's shapes (bf16, K = V = 128, M = 64; all
    prefill roles, decode) in registers, with TVM's nvcc flags: a change that spills to local
    memory slows them down (BENCHMARKS.md) and would otherwise pass every other test here."""
    sizes = dict(HQ=16, H=16, K=128, V=128, M=64, io_dtype="bfloat16", gate_dtype="float32", arch="sm_90")
    kernels = [*prefill_kernels(**sizes).items(), ("decode", decode_kernel(**sizes))]
    assert any(name == "chunk_attend_cuda" for _, (name, _) in kernels)
    for role, (name, params) in kernels:
        source = tmp_path / f"{role}.cu"
        source.write_text(build(name, params, "sm_90").mod.imports[0].inspect_source())
        report = subprocess.run(["nvcc", "-cubin", "-arch=sm_90", "-O3", "--use_fast_math", "-Xptxas", "-v",
                                 str(source), "-o", str(tmp_path / f"{role}.cubin")],
                                capture_output=True, text=True, check=True).stderr
        spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", report)]
        assert spills and not any(spills), f"{role} ({name}) spills: {report}"


def lowered_shared_bytes(kernel, params) -> dict:
    """Bytes of shared memory per scope ("shared" static, "shared.dyn" dynamic) that the
    lowered kernel allocates, after TVM merged its dynamic buffers."""
    func = DEFINITIONS[kernel](**params)
    target = tvm.target.Target(target_for("sm_90"))
    sch = default_schedule(func, target)
    with tvm.transform.PassContext(config=rule_for(func, target).pass_config):
        mod = tvm.tirx.transform.BindTarget(target.with_host("llvm"))(sch.mod)
        mod = tvm.tirx.get_default_tir_pipeline(target)[0](mod)
    (device,) = split_host_device_mods(mod)[1].values()
    (sizes,) = calculate_allocated_bytes(device).values()
    return {scope: int(n) for scope, n in sizes.items()}


# the codegen cases, and three where key_value_scope's bound decides: just under 48 KB (the
# tiles stay dynamic), over it only with G and s' counted (K = V = 64, M = 64), and over it at
# another head size (static)
ATTEND = [p for k, p in KERNELS if k == "chunk_attend_cuda"] + [
    dict(HQ=4, H=2, K=64, V=64, M=32, C=64, io_dtype="bfloat16", gate_dtype="float32"),
    dict(HQ=4, H=2, K=64, V=64, M=64, C=64, io_dtype="bfloat16", gate_dtype="float32"),
    dict(HQ=4, H=2, K=96, V=96, M=64, C=64, io_dtype="bfloat16", gate_dtype="float32")]


@pytest.mark.parametrize("params", ATTEND, ids=[f"K{p['K']}-M{p['M']}-{p['io_dtype']}" for p in ATTEND])
def test_output_pass_shared_memory_within_launch_limits(params):
    """The sizes TVM allocates for the output pass's shared memory are launchable on sm_90
    (``kernel_plan.launchable``), and the sum that kernel_plan checks against the GPU's limit
    bounds what is allocated."""
    sizes = lowered_shared_bytes("chunk_attend_cuda", params)
    static, dynamic = sizes.get("shared", 0), sizes.get("shared.dyn", 0)
    K, V, M, C, io = params["K"], params["V"], params["M"], params["C"], params["io_dtype"]
    lay = tile_layout(K=K, V=V, M=M, C=C, io_dtype=io)
    assert static == (key_value_bytes(lay, C) if key_value_scope(lay, C=C, M=M) == "shared" else 0)
    assert launchable(static, dynamic, "sm_90"), sizes
    assert static + dynamic <= shared_bytes(K=K, V=V, M=M, C=C, io_dtype=io)


def test_fused_state_pass_loads_gates_as_vectors():
    """The fused state pass loads a chunk's gate inputs four slots at a time (16-byte loads of
    the float32 ones), except its variant with launch bounds of two blocks an SM, which vectors
    made slower (``chunk_state_fused.GATE_LANES``)."""
    params = dict(H=8, K=128, V=128, M=64, C=64, kv_dtype="bfloat16", gate_dtype="float32", state_dtype="bfloat16")
    plain, bounded = (build("chunk_state_fused", p, "sm_90").mod.imports[0].inspect_source()
                      for p in (params, dict(params, blocks_per_sm=2)))
    assert "*(float4*)(gcum_ptr" in plain and "*(float4*)(s_ptr" in plain and "float4" not in bounded


def test_output_pass_shuffles_rope_partners_in_pairs():
    """The output pass's in-register RoPE moves a row's partner elements two 16-bit values to a
    32-bit shuffle (``rope_rows.rotate_rows``): 4 shuffles per 8-element vector, none of a
    single converted element; the rotation's sign is an xor of the shuffled word."""
    params = dict(SHAPES, H=16, C=64, io_dtype="bfloat16", gate_dtype="float32", rope_inside=True)
    source = build("chunk_attend_cuda", params, "sm_90").mod.imports[0].inspect_source()
    pairs = re.findall(r"partner_ptr\[\d\] = \(?__shfl_sync\(__activemask\(\), \(\(uint\*\)(\w+)\)", source)
    # the query tile once, and the key tile of the window loop: 4 vectors a thread each
    assert sorted(set(pairs)) == ["key_vec_ptr", "q_vec_ptr"] and len(pairs) == 2 * 4 * 4
    assert "__shfl_sync(__activemask(), ((float)" not in source
    assert len(re.findall(r"partner_ptr\[\d\] = \(__shfl_sync\([^;]*\) \^ ", source)) == len(pairs)


def test_launch_rule_of_tvms_cuda_runtime():
    """A block past 48 KB of shared memory launches only with 48 KB or more of it dynamic; a
    fused decode step that would break the rule (GQA group 2, K = V = 128, M = 32: about 16 KB
    static and 32 KB dynamic) takes the portable step."""
    assert launchable(0, 227 << 10, "sm_90") and launchable(40 << 10, 8 << 10, "sm_90")
    assert launchable(34816, 178160, "sm_90") and not launchable(18432, 44272, "sm_90")
    assert not launchable(49 << 10, 64 << 10, "sm_90") and not launchable(0, 228 << 10, "sm_90")
    shape = dict(H=4, K=128, V=128, io_dtype="bfloat16", gate_dtype="float32", arch="sm_90")
    assert decode_kernel(HQ=8, M=32, **shape)[0] == "decode_step"
    assert decode_kernel(HQ=4, M=64, **shape)[0] == "decode_step_cuda"


def test_long_windows_take_the_output_pass_with_values_ahead():
    """The tensor-core output pass has a variant for long windows (the same kernel with
    values_ahead, and RoPE from the RoPE kernels where the short one rotates q and k itself);
    the float32 one and the portable plan have none."""
    sizes = dict(HQ=4, H=2, K=64, V=64, M=16, gate_dtype="float32", arch="sm_90")
    plan = prefill_kernels(io_dtype="bfloat16", **sizes)
    long_window = LONG_WINDOW_CHUNKS * CHUNK_SIZE
    short = dict(plan["attend"][1])
    assert plan["attend"][0] == plan["attend_long"][0] == "chunk_attend_cuda" and short.pop("rope_inside")
    assert plan["attend_long"][1] == dict(short, values_ahead=True)
    assert [attend_role(plan, w) for w in (0, 64, long_window - 1, long_window, 10**6)] == \
        ["attend", "attend", "attend", "attend_long", "attend_long"]
    for io, arch in (("float32", "sm_90"), ("bfloat16", "cpu")):
        plan = prefill_kernels(io_dtype=io, **dict(sizes, arch=arch))
        assert "attend_long" not in plan and attend_role(plan, 10**6) == "attend"


def test_big_batches_take_the_fused_state_pass_with_launch_bounds():
    """The fused state pass's variant with launch bounds of two blocks per SM: in the plan
    beside the plain one, taken from two waves of two blocks per SM (132 SMs: 528 blocks, B = 5
    at H = 16, M = 64), and compiled with the bounds (the plain one with none: ptxas treats an
    explicit minimum of one block differently)."""
    sizes = dict(HQ=16, H=16, K=128, V=128, M=64, io_dtype="bfloat16", gate_dtype="float32", arch="sm_90")
    plan = prefill_kernels(**sizes)
    assert plan["state_fused_wide"] == ("chunk_state_fused", dict(plan["state_fused"][1], blocks_per_sm=2))
    assert [state_fused_role(N=n, H=16, M=64, sms=132) for n in (1, 4, 5, 8)] == \
        ["state_fused", "state_fused", "state_fused_wide", "state_fused_wide"]
    sources = [build(*plan[role], "sm_90").mod.imports[0].inspect_source() for role in ("state_fused", "state_fused_wide")]
    assert "__launch_bounds__(256)" in sources[0] and "__launch_bounds__(256, 2)" in sources[1]


def test_small_launches_take_the_grouped_gate_pass():
    """The gate pass's variant that loads 32 tokens' gates together: in the plan beside the
    plain one, taken while the plain one's threads fill the SMs once at most (132 SMs, H = 16,
    M = 64: up to 264 chunks, T = 8192 at B = 1 but not 32768, nor B = 8 at 4096)."""
    sizes = dict(HQ=16, H=16, K=128, V=128, M=64, io_dtype="bfloat16", gate_dtype="float32", arch="sm_90")
    plan = prefill_kernels(**sizes)
    assert plan["gates_grouped"] == ("chunk_gate_cumsum", dict(plan["gates"][1], grouped=True))
    chunks = [T // CHUNK_SIZE + B for B, T in ((1, 2048), (1, 8192), (1, 32768), (8, 8 * 4096))]
    assert [gates_role(chunks=c, H=16, M=64, sms=132, threads_per_sm=max_threads_per_sm("sm_90"))
            for c in chunks] == ["gates_grouped", "gates_grouped", "gates", "gates"]
    # an SM of sm_89 holds 1536 threads: up to 192 chunks on 128 SMs (an RTX 4090)
    assert [gates_role(chunks=c, H=16, M=64, sms=128, threads_per_sm=max_threads_per_sm("sm_89"))
            for c in (192, 193)] == ["gates_grouped", "gates"]
    plain, grouped = (build(*plan[role], "sm_90").mod.imports[0].inspect_source() for role in ("gates", "gates_grouped"))
    assert "shifted_ptr[31] = " in grouped and "shifted_ptr" not in plain
