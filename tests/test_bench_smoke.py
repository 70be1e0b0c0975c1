"""benchmarks/bench_peers.py end to end on the CPU: the --smoke run measures NHA, and --from-json
regenerates its markdown section without touching the rest of the file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_peers.py"
sys.path.insert(0, str(SCRIPT.parent))  # the benchmark scripts are not a package
from report import MARK_BEGIN, MARK_END  # noqa: E402


def bench_peers(*args, cache_dir: Path) -> subprocess.CompletedProcess:
    # a fresh kernel cache: the test must not depend on, or fill, the user's
    env = dict(os.environ, NHA_TVM_CACHE_DIR=str(cache_dir))
    done = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_smoke_run_measures_nha_and_regenerates_the_markdown(tmp_path):
    bench_peers("--device", "cpu", "--smoke", "--out", tmp_path, cache_dir=tmp_path / "kernels")
    results = json.loads((tmp_path / "results.json").read_text())
    nha = [case["results"]["nha"] for case in results["cases"]]
    assert {case["section"] for case in results["cases"]} == {"prefill", "decode"}
    assert nha and all(result["ms"] > 0 for result in nha)
    assert all(result["eager_ms"] > 0 for result in nha)  # prefill calls and decode steps
    # a peer that raised is recorded as skipped: the SDPA peer must have been timed in every case
    assert all(any(impl.startswith("sdpa") and "ms" in result for impl, result in case["results"].items())
               for case in results["cases"])
    assert results["meta"]["copy_bandwidth"]["GB_per_s"] > 0

    md = tmp_path / "BENCHMARKS.md"
    md.write_text(f"# Benchmarks\n\nkept before\n\n{MARK_BEGIN}\nstale\n{MARK_END}\n\nkept after\n")
    done = bench_peers("--from-json", tmp_path / "results.json", "--out", tmp_path, "--md-path", md,
                       cache_dir=tmp_path / "kernels")
    text = md.read_text()
    assert "kept before" in text and "kept after" in text and "stale" not in text
    assert text.count(MARK_BEGIN) == text.count(MARK_END) == 1
    assert "### Prefill" in text and "### Decode" in text
    assert "NHA ms" in done.stdout
    decode_table = text.split("### Decode", 1)[1]
    assert text.count("NHA eager ms") == 2 and "NHA eager ms" in decode_table


def test_ab_runs_of_a_build_compare_equal_and_a_changed_output_shows(tmp_path):
    """profile_prefill.py's A/B on the CPU: two runs of one build give equal outputs on its seeded
    inputs, and --compare reports an output that differs."""
    script = REPO / "benchmarks" / "profile_prefill.py"
    env = dict(os.environ, NHA_TVM_CACHE_DIR=str(tmp_path / "kernels"))

    def profile_prefill(*args):
        done = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout
    for build in ("a", "b"):
        profile_prefill("--ab", build, "--out", tmp_path, "--device", "cpu", "--smoke")
    rows = [json.loads(line) for line in (tmp_path / "times.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(row["sum_ms"] > 0 for row in rows)
    first = sorted(tmp_path.glob("a-*.pt"))[0]
    changed = torch.load(first)
    changed.view(-1)[0] += 1
    torch.save(changed, tmp_path / first.name.replace("a-", "c-", 1))
    table = profile_prefill("--compare", tmp_path, "a", "b", "c")
    assert table.count("b: equal") == 2 and table.count("c: max diff") == 1 and table.count("c: -") == 1


def test_host_profile_reports_both_calls(tmp_path):
    """profile_host.py on the CPU: the host time of a prefill and of a decode step, each with
    the functions it spent it in."""
    env = dict(os.environ, NHA_TVM_CACHE_DIR=str(tmp_path / "kernels"))
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "profile_host.py"), "--device", "cpu",
                           "--smoke", "--batches", "1", "--top", "5"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = done.stdout.split("== ")[1:]
    assert [r.split(":")[0] for r in reports] == ["prefill B=1 T=128 W=16", "decode B=2 W=16"]
    for report in reports:
        assert float(report.split(": ")[1].split(" us")[0]) > 0
        assert "nha_tvm/torch_ops.py" in report  # the op's own work is among the top five
