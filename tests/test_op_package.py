"""Op packages: nha-build writes one, a fresh process serves the ops from it without any
compiler, and a package that does not match (tampered, torn, other arch or versions) is
refused before anything is loaded."""

import ctypes.util
import hashlib
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import nha_tvm
from nha_tvm import compiler, op_package
from nha_tvm.op_package import OpPackageError
from nha_tvm.reference import nha_reference
from nha_tvm.schedules import CHUNK_SIZE

from .conftest import make_inputs, rel_err

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = {"heads": 4, "kv_heads": 2, "head_dim": 16, "value_dim": 8, "slots": 4, "dtype": "float32"}
# HQ, H, K, V, M of CONFIG
SHAPE = (4, 2, 16, 8, 4)

# Runs in a fresh interpreter: every way to compile is made to raise before nha_tvm is
# imported, so the ops can only come from the package. argv: package dir, "load_ops" or "env".
SERVE_WITHOUT_COMPILER = """
import json, sys
import tvm, tvm.runtime, tvm.support.cc, tvm.support.nvcc

def refuse(*args, **kwargs):
    raise AssertionError("a compiler entry point was called")

tvm.compile = tvm.build = refuse
tvm.runtime.Executable.export_library = tvm.runtime.Module.export_library = refuse
tvm.support.cc.create_shared = tvm.support.nvcc.compile_cuda = refuse

import torch, nha_tvm
from nha_tvm import compiler
from nha_tvm.reference import nha_reference
from tests.conftest import make_inputs, rel_err

compiler.build = compiler._load_or_build = refuse
if sys.argv[2] == "load_ops":
    nha_tvm.load_ops(sys.argv[1], strict=True)
torch.manual_seed(7)
B, T, t0, W, theta = 2, 90, 70, 5, 10000.0
q, k, v, g, _ = make_inputs(B, T, 4, 2, 16, 8, 4)  # CONFIG's HQ, H, K, V, M
o, state = nha_tvm.nha_attention(q[:, :t0], k[:, :t0], v[:, :t0], g[:, :t0], window=W,
                                 rope_theta=theta, output_final_state=True)
cache = nha_tvm.NHACache.from_prefill(k[:, :t0], v[:, :t0], g[:, :t0], state, window=W)
steps = torch.stack([nha_tvm.nha_decode(q[:, t], k[:, t], v[:, t], g[:, t], cache, rope_theta=theta)
                     for t in range(t0, T)], 1)
ref, ref_state = nha_reference(q, k, v, g, window=W, rope_theta=theta, output_final_state=True)
_, ref_prefill_state = nha_reference(q[:, :t0], k[:, :t0], v[:, :t0], g[:, :t0], window=W,
                                     rope_theta=theta, output_final_state=True)
print(json.dumps({"prefill": rel_err(o, ref[:, :t0]), "decode": rel_err(steps, ref[:, t0:]),
                  "state_k": rel_err(state[0], ref_prefill_state[0]),
                  "state_v": rel_err(state[1], ref_prefill_state[1])}))
"""


def nha_build_command() -> list[str]:
    """The installed console script, beside this interpreter."""
    script = pathlib.Path(sys.executable).with_name("nha-build")
    assert script.exists(), f"{script} is missing: run pip install -e . first"
    return [str(script)]


@pytest.fixture(scope="module")
def cpu_package(tmp_path_factory):
    """A cpu package of CONFIG, written by the console script in its own process."""
    work = tmp_path_factory.mktemp("cpu_package")
    config = work / "model.json"
    config.write_text(json.dumps(CONFIG))
    out = work / "ops"
    command = nha_build_command() + ["--target", "cpu", "--config", str(config), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True,
                          env=os.environ | {"NHA_TVM_CACHE_DIR": str(work / "cache")})
    assert done.returncode == 0, done.stderr
    assert "6 modules for cpu" in done.stdout
    return out


@pytest.fixture
def package_copy(cpu_package, tmp_path):
    """A private copy of the package for a test to damage."""
    return pathlib.Path(shutil.copytree(cpu_package, tmp_path / "ops"))


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No active package, an empty module cache, builds recorded, and nothing loaded recorded."""
    monkeypatch.setattr(op_package, "_active", None)
    monkeypatch.setattr(op_package, "_env_consulted", True)
    monkeypatch.setattr(compiler, "_loaded", {})
    monkeypatch.setenv("NHA_TVM_CACHE_DIR", str(tmp_path / "cache"))
    builds, loads = [], []
    real_build, real_load = compiler.build, op_package._load_library
    monkeypatch.setattr(compiler, "build", lambda *a: builds.append(a[0]) or real_build(*a))
    monkeypatch.setattr(op_package, "_load_library", lambda fd: loads.append(fd) or real_load(fd))
    return builds, loads


def read_manifest(directory) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def test_manifest_vouches_for_every_module(cpu_package):
    manifest = read_manifest(cpu_package)
    assert manifest["arch"] == "cpu"
    assert manifest["versions"] == op_package.build_environment()
    HQ, H, K, V, M = SHAPE
    f32 = "float32"
    expected = [
        ("chunk_layout", dict(C=CHUNK_SIZE)),
        ("slot_state_scan", dict(H=H, K=K, V=V, M=M, C=CHUNK_SIZE, kv_dtype=f32, gate_dtype=f32)),
        ("chunk_attend", dict(HQ=HQ, H=H, K=K, V=V, M=M, C=CHUNK_SIZE, io_dtype=f32, gate_dtype=f32)),
        ("decode_step", dict(HQ=HQ, H=H, K=K, V=V, M=M, io_dtype=f32, gate_dtype=f32)),
        ("rope", dict(heads=HQ, K=K, io_dtype=f32)),
        ("rope", dict(heads=H, K=K, io_dtype=f32)),
    ]

    def bucket(kernel, params):
        return kernel, json.dumps(params, sort_keys=True)

    assert sorted(bucket(m["kernel"], m["params"]) for m in manifest["modules"]) == sorted(
        bucket(*request) for request in expected)
    for module in manifest["modules"]:
        data = (cpu_package / module["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == module["sha256"] and len(data) == module["bytes"]
        assert module["cache_key"] == compiler.cache_key(module["kernel"], module["params"], "cpu")
        assert (module["arch"], module["dtype"], module["device_code"]) == ("cpu", "float32", "none")
    assert sorted(p.name for p in cpu_package.iterdir()) == sorted(
        ["manifest.json"] + [m["file"] for m in manifest["modules"]])


@pytest.mark.parametrize("how", ["load_ops", "env"])
def test_fresh_process_serves_ops_from_package_without_compiler(cpu_package, tmp_path, how):
    cache = tmp_path / "cache"
    env = os.environ | {"NHA_TVM_CACHE_DIR": str(cache)}
    if how == "env":
        env |= {"NHA_TVM_OPS_DIR": str(cpu_package), "NHA_TVM_OPS_STRICT": "1"}
    done = subprocess.run([sys.executable, "-c", SERVE_WITHOUT_COMPILER, str(cpu_package), how],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert max(errors.values()) <= 1e-5, errors
    assert not cache.exists() or not any(cache.iterdir())


@pytest.mark.parametrize("damage,words", [
    (lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]), "sha256"),
    (lambda path: path.write_bytes(bytes([path.read_bytes()[0] ^ 1]) + path.read_bytes()[1:]), "sha256"),
    (lambda path: path.unlink(), "cannot be opened"),
], ids=["truncated", "one-bit-flipped", "missing"])
def test_damaged_module_is_refused_before_anything_loads(package_copy, isolated, damage, words):
    _, loads = isolated
    victim = next(m["file"] for m in read_manifest(package_copy)["modules"] if m["kernel"] == "decode_step")
    damage(package_copy / victim)
    with pytest.raises(OpPackageError, match=words) as refused:
        nha_tvm.load_ops(package_copy)
    assert victim in str(refused.value)
    assert loads == [] and op_package._active is None


@pytest.mark.parametrize("edit,words", [
    (lambda m: m.update(arch="sm_1000", modules=[x | {"arch": "sm_1000"} for x in m["modules"]]),
     "is for arch sm_1000, but this machine has cpu"),
    (lambda m: m["versions"].update(tvm="0.26.0"), "tvm '0.26.0'"),
    (lambda m: m["versions"].update(kernel_sources="0" * 16), "kernel_sources"),
    (lambda m: m["modules"][0].update(file="../elsewhere.so"), "inside the package"),
    (lambda m: m.update(format=99), "format 99"),
], ids=["other-arch", "other-tvm", "other-kernel-sources", "file-outside", "other-format"])
def test_package_for_another_machine_or_version_is_refused(package_copy, isolated, edit, words):
    _, loads = isolated
    manifest = read_manifest(package_copy)
    edit(manifest)
    (package_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(OpPackageError, match=words):
        nha_tvm.load_ops(package_copy)
    assert loads == [] and op_package._active is None


def test_missing_bucket_falls_back_with_one_warning_each(cpu_package, isolated, caplog):
    builds, loads = isolated
    nha_tvm.load_ops(cpu_package)
    assert len(loads) == 6
    HQ, H, K, V, _ = SHAPE
    q, k, v, g, _ = make_inputs(1, 30, HQ, H, K, V, 8)  # 8 slots: the package has 4
    with caplog.at_level(logging.WARNING, logger="nha_tvm.op_package"):
        for _ in range(2):
            o, _ = nha_tvm.nha_attention(q, k, v, g, window=3, rope_theta=10000.0)
    warnings = [r.getMessage() for r in caplog.records if "has no module for" in r.getMessage()]
    warned = sorted(w.split(" has no module for ")[1].split()[0] for w in warnings)
    assert warned == ["chunk_attend", "slot_state_scan"]
    assert sorted(builds) == ["chunk_attend", "slot_state_scan"]  # rope and the tables came from the package
    ref, _ = nha_reference(q, k, v, g, window=3, rope_theta=10000.0)
    assert rel_err(o, ref) <= 1e-5


def test_strict_package_raises_for_missing_bucket(cpu_package, isolated):
    builds, _ = isolated
    nha_tvm.load_ops(cpu_package, strict=True)
    HQ, H, K, V, _ = SHAPE
    q, k, v, g, _ = make_inputs(1, 30, HQ, H, K, V, 8)
    with pytest.raises(OpPackageError, match="strict mode") as refused:
        nha_tvm.nha_attention(q, k, v, g, window=3)
    assert "slot_state_scan" in str(refused.value) and '"M": 8' in str(refused.value)
    assert builds == []


def test_cross_build_for_sm90_writes_package(tmp_path, isolated):
    out = tmp_path / "ops-sm90"
    done = subprocess.run(nha_build_command() + [
        "--target", "cuda", "--arch", "sm_90", "--heads", "2", "--head-dim", "16", "--slots", "4",
        "--dtype", "bfloat16", "--gate-dtype", "float32", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(out)
    assert manifest["arch"] == "sm_90" and manifest["versions"] == op_package.build_environment()
    # heads == kv_heads: one rope module serves q and k; the gate pass in both variants
    kernels = sorted(m["kernel"] for m in manifest["modules"])
    assert kernels == ["chunk_attend_cuda", "chunk_gate_cumsum", "chunk_gate_cumsum", "chunk_layout",
                       "chunk_state_delta", "chunk_state_scan", "decode_step_cuda", "rope"]
    for module in manifest["modules"]:
        assert hashlib.sha256((out / module["file"]).read_bytes()).hexdigest() == module["sha256"]
        assert (module["arch"], module["dtype"]) == ("sm_90", "bfloat16")
        assert module["params"].get("gate_dtype", "float32") == "float32"
        # without the CUDA driver library TVM keeps CUDA source in the module, and says so
        if ctypes.util.find_library("cuda") is None:
            assert module["device_code"] == "cuda_source"
        assert module["device_code"] in ("compiled", "cuda_source")
    if "sm_90" not in op_package._local_archs():
        with pytest.raises(OpPackageError, match="is for arch sm_90"):
            nha_tvm.load_ops(out)


@pytest.mark.parametrize("args,words", [
    (["--target", "cpu", "--heads", "4", "--head-dim", "16", "--slots", "4", "--dtype", "bfloat16"],
     "dtype 'bfloat16' is not supported on cpu"),
    (["--target", "cpu", "--heads", "3", "--kv-heads", "2", "--head-dim", "16", "--slots", "4"],
     "must be a multiple of kv_heads"),
    (["--target", "cpu", "--heads", "4", "--head-dim", "16"], "needs slots"),
    (["--target", "cpu", "--arch", "sm_90", "--heads", "4", "--head-dim", "16", "--slots", "4"],
     "--target cpu builds for arch cpu"),
], ids=["dtype", "heads", "missing-field", "arch"])
def test_bad_config_is_refused_before_building(args, words, tmp_path, capsys):
    from nha_tvm import cli_build

    with pytest.raises(SystemExit) as stopped:
        cli_build.main(args + ["--out", str(tmp_path / "ops")])
    assert stopped.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "ops").exists()
