"""Choosing a tuning record for a call (no tuning run needed)."""

import json

import pytest

from nha_tvm.tuning import records
from nha_tvm.tuning.workloads import Workload

PARAMS = dict(HQ=2, H=2, K=16, V=16, M=8, C=64, io_dtype="float32", gate_dtype="float32")


def record(length, window, seconds):
    return records.Record(Workload.of("chunk_attend", PARAMS, length, window), "[]", seconds, "here")


BUCKETS = (record(2048, 64, 1.0), record(8192, 64, 4.0), record(2048, 512, 3.0), record(8192, 512, 9.0))


@pytest.mark.parametrize("length,window,expected", [
    (2048, 64, (2048, 64)), (3000, 64, (2048, 64)), (6000, 64, (8192, 64)),
    (100_000, 512, (8192, 512)), (2048, 400, (2048, 512)), (2048, 0, (2048, 64)),
])
def test_nearest_bucket_in_length_and_window(length, window, expected):
    chosen = records.nearest(BUCKETS, length, window)
    assert (chosen.workload.length, chosen.workload.window) == expected


def test_no_records_means_default_and_no_length_means_fastest():
    assert records.nearest((), 100, 64) is None
    assert records.nearest(BUCKETS, None).seconds == 1.0


def test_shipped_sm90_records_load():
    found = records.load_dir(str(records.shipped_dir() / "sm_90"), "sm_90")
    kernels = {r.workload.kernel for r in found}
    assert kernels == {"slot_state_scan", "chunk_attend", "decode_step"}  # RoPE's no longer replayed: dropped
    assert {(r.workload.length, r.workload.window) for r in found if r.workload.kernel == "chunk_attend"} == {
        (T, W) for T in (2048, 8192, 32768) for W in (64, 512)}


def test_a_torn_workload_line_does_not_shift_later_records(tmp_path):
    good = ['["1", "A"]', '["2", "B"]', '["3", "C"]']
    (tmp_path / records.WORKLOADS).write_text("\n".join([good[0], good[1][:5], good[2]]) + "\n")
    lines = [json.dumps([i, [["trace-" + n], [t], {}, []]]) for i, (n, t) in enumerate(
        [("A", 0.1), ("B", 0.2), ("C", 0.3)])]
    (tmp_path / records.RECORDS).write_text("\n".join(lines) + "\n")
    best = records.read_database(tmp_path)
    assert set(best) == {"1", "3"}
    assert json.loads(best["3"][1])[1][0] == ["trace-C"]


def test_cuda_workloads_are_the_tunable_kernels_of_the_cuda_plan():
    """On CUDA the fused kernels have no knobs; the rest bind every size and index table."""
    from nha_tvm.tuning.cli import workloads_for

    shape = dict(heads=16, kv_heads=16, head_dim=64, value_dim=64, slots=64, dtype="bfloat16",
                 gate_dtype="float32", window=[64])
    found = workloads_for(shape, [2048], [32], "sm_90")
    assert {w.kernel for w in found} == {"rope", "chunk_gate_cumsum", "chunk_state_scan"}
    # at K = V = 128 in bfloat16 the state pass is the fused kernel, with no knobs either
    fused = workloads_for(dict(shape, head_dim=128, value_dim=128), [2048], [32], "sm_90")
    assert {w.kernel for w in fused} == {"rope", "chunk_gate_cumsum"}
    for workload in found:
        func = workload.func()  # every symbolic size bound
        assert all(not hasattr(d, "name") for p in func.params if hasattr(p, "shape") for d in p.shape)
        for index, values in workload.int_arguments().items():
            assert str(func.params[index].dtype) == "int32" and min(values) >= 0
