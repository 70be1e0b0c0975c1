"""nha-tune on the CPU: records written, applied in a new process, robust to kills and damage."""

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

SHAPE = ["--heads", "2", "--head-dim", "16", "--slots", "8", "--window", "16", "--seq-lens", "256",
         "--batch", "2"]

# A new process: prefill and decode at the tuned shape against the reference, the compiler's
# decisions logged; prints what the test asserts on.
PROBE = r"""
import logging, sys, torch, nha_tvm
from nha_tvm.reference import nha_reference
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
torch.manual_seed(0)
q, k, v = torch.randn(1, 200, 2, 16), torch.randn(1, 200, 2, 16), torch.randn(1, 200, 2, 16)
g = torch.nn.functional.logsigmoid(torch.randn(1, 200, 2, 8)) / 8
o, state = nha_tvm.nha_attention(q, k, v, g, window=16, rope_theta=10000.0, output_final_state=True)
ref, _ = nha_reference(q, k, v, g, window=16, rope_theta=10000.0)
err = ((o.double() - ref).abs().max() / ref.abs().max()).item()
cache = nha_tvm.NHACache.from_prefill(k[:, :199], v[:, :199], g[:, :199],
    nha_tvm.nha_attention(q[:, :199], k[:, :199], v[:, :199], g[:, :199], window=16,
                          rope_theta=10000.0, output_final_state=True)[1], window=16)
step = nha_tvm.nha_decode(q[:, 199], k[:, 199], v[:, 199], g[:, 199], cache, rope_theta=10000.0)
err = max(err, ((step.double() - ref[:, 199]).abs().max() / ref[:, 199].abs().max()).item())
print("REL_ERR", err)
"""


def nha_tune(*args, **kw):
    return subprocess.run([sys.executable, "-m", "nha_tvm.tuning.cli", "--target", "llvm", *args],
                          capture_output=True, text=True, **kw)


def probe(tuning_dir, cache_dir):
    env = dict(os.environ, NHA_TVM_TUNING_DIR=str(tuning_dir), NHA_TVM_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned")
    run = nha_tune(*SHAPE, "--trials", "3", "--out", str(out))
    assert run.returncode == 0, run.stderr
    return out, run.stdout


def test_records_written_and_pruned(tuned):
    out, stdout = tuned
    meta = json.loads((out / "cpu" / "metadata.json").read_text())
    kernels = sorted(e["workload"]["kernel"] for e in meta["workloads"])
    assert kernels == ["chunk_attend", "decode_step", "rope", "slot_state_scan"]
    assert meta["versions"]["tvm"] and meta["arch"] == "cpu"
    # the shipped database keeps one record per workload; the search database keeps them all
    assert len((out / "cpu" / "database_tuning_record.json").read_text().splitlines()) == 4
    assert len((out / "cpu" / "work" / "database_tuning_record.json").read_text().splitlines()) > 4
    assert "speedup" in stdout and "chunk_attend" in stdout


def test_records_apply_in_a_new_process(tuned, tmp_path):
    out, _ = tuned
    log = probe(out, tmp_path)
    for kernel in ("chunk_attend", "slot_state_scan", "rope", "decode_step"):
        assert f"{kernel} uses the tuned record" in log
    assert float(log.split("REL_ERR")[1].split()[0]) <= 1e-5


def test_other_shapes_fall_back_to_the_default_schedule(tuned, tmp_path):
    out, _ = tuned
    env = dict(os.environ, NHA_TVM_TUNING_DIR=str(out), NHA_TVM_CACHE_DIR=str(tmp_path))
    code = PROBE.replace("2, 8)", "2, 4)")  # 4 slots: no record for that shape
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "no tuning record for chunk_attend" in run.stdout
    assert float(run.stdout.split("REL_ERR")[1].split()[0]) <= 1e-5


@pytest.mark.parametrize("damage", ["truncated", "garbage_metadata", "other_version"])
def test_damaged_records_warn_and_use_defaults(tuned, tmp_path, damage):
    out, _ = tuned
    copy = tmp_path / "records"
    shutil.copytree(out, copy)
    arch = copy / "cpu"
    if damage == "truncated":
        text = (arch / "database_tuning_record.json").read_text()
        (arch / "database_tuning_record.json").write_text(text[: len(text) // 3])
    elif damage == "garbage_metadata":
        (arch / "metadata.json").write_text("{not json")
    else:
        meta = json.loads((arch / "metadata.json").read_text())
        meta["versions"]["tvm"] = "0.1.0"
        (arch / "metadata.json").write_text(json.dumps(meta))
    log = probe(copy, tmp_path / "cache")
    assert "WARNING" in log and "Traceback" not in log
    assert "default schedule" in log
    assert float(log.split("REL_ERR")[1].split()[0]) <= 1e-5


def test_killed_run_keeps_records_and_resumes(tmp_path):
    args = [*SHAPE, "--kernels", "rope,slot_state_scan", "--trials", "3", "--out", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "nha_tvm.tuning.cli", "--target", "llvm", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = tmp_path / "cpu" / "work" / "database_tuning_record.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if records.exists() and records.read_text().count("\n") >= 3:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = records.read_text().count("\n")
    assert kept >= 3
    resumed = nha_tune(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    meta = json.loads((tmp_path / "cpu" / "metadata.json").read_text())
    assert sorted(e["workload"]["kernel"] for e in meta["workloads"]) == ["rope", "slot_state_scan"]
    finished = records.read_text().count("\n")
    assert finished >= kept
    # every workload now has its trials: another --resume measures nothing new
    again = nha_tune(*args, "--resume")
    assert again.returncode == 0, again.stderr
    assert records.read_text().count("\n") == finished


def test_second_writer_is_refused(tmp_path):
    (tmp_path / "cpu").mkdir()
    with open(tmp_path / "cpu" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run = nha_tune(*SHAPE, "--kernels", "rope", "--trials", "1", "--out", str(tmp_path))
    assert run.returncode != 0 and "another nha-tune run" in run.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rpc_runner_on_loopback(tmp_path):
    port = _free_port()
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                "--port", str(port), "--port-end", str(port + 1)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        time.sleep(3)
        server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                                   "--tracker", f"127.0.0.1:{port}", "--key", "nha-test"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(4)
        run = nha_tune(*SHAPE, "--kernels", "rope", "--trials", "2", "--out", str(tmp_path),
                       "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "nha-test", timeout=400)
        assert run.returncode == 0, run.stderr
        meta = json.loads((tmp_path / "cpu" / "metadata.json").read_text())
        assert [e["workload"]["kernel"] for e in meta["workloads"]] == ["rope"]
        assert meta["workloads"][0]["tuned_ms"] > 0
    finally:
        for proc in (server, tracker):
            if proc is not None:
                proc.kill()
                proc.wait()


def test_op_package_carries_the_tuned_buckets(tuned, tmp_path):
    out, _ = tuned
    env = dict(os.environ, NHA_TVM_TUNING_DIR=str(out), NHA_TVM_CACHE_DIR=str(tmp_path / "cache"))
    build = subprocess.run([sys.executable, "-m", "nha_tvm.cli_build", "--target", "cpu", "--heads", "2",
                            "--head-dim", "16", "--slots", "8", "--dtype", "float32", "--gate-dtype",
                            "float32", "--out", str(tmp_path / "pkg")], env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    manifest = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    buckets = {m["kernel"]: m["bucket"] for m in manifest["modules"]}
    assert buckets["chunk_attend"] == {"length": 256, "window": 16}
    assert buckets["decode_step"] == {"length": 2, "window": 16}
    # a host without records of its own, strict: every kernel comes from the package
    env = dict(os.environ, NHA_TVM_TUNING_DIR=str(tmp_path / "none"), NHA_TVM_CACHE_DIR=str(tmp_path / "c2"),
               NHA_TVM_OPS_DIR=str(tmp_path / "pkg"), NHA_TVM_OPS_STRICT="1")
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert float(run.stdout.split("REL_ERR")[1].split()[0]) <= 1e-5
    assert "default schedule" not in run.stdout  # nothing was built here
