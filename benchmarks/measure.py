"""The measurement of bench_peers: the shapes of each mode, every implementation on every shape,
and the results as a JSON-ready dict (see report.py for what is made of them)."""

import gc
import importlib.metadata
import os
import platform
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import partial

import torch
from tqdm import tqdm

import nha_tvm
from cost_model import decode_min_bytes, nha_flops, prefill_min_bytes
from peers import GATE_DTYPE, PREFILL_BUILDERS, WINDOW_FREE, Setup, decode_builders, steady_state_prompt_len
from timing import Clock, EagerClock, copy_bandwidth, l2_cache_bytes, time_graph_steps, time_rotated


@dataclass(frozen=True)
class PrefillCase:
    batch: int
    seq_len: int
    window: int

    @property
    def name(self) -> str:
        full = " (full attention)" if self.window >= self.seq_len else ""
        return f"B={self.batch} T={self.seq_len} W={self.window}{full}"


@dataclass(frozen=True)
class DecodeCase:
    batch: int
    window: int

    @property
    def name(self) -> str:
        return f"B={self.batch} W={self.window}"


@dataclass(frozen=True)
class Plan:
    mode: str
    prefill: tuple
    decode: tuple
    kv_contexts: tuple          # the KV cache lengths of the SDPA decode peers
    warmup: int
    reps: int
    copy_bytes: int             # the tensor copied to measure the bandwidth
    heads: int = 16
    key_dim: int = 128
    value_dim: int = 128
    slots: int = 64
    rope_theta: float = 10000.0
    graph_steps: int = 16       # decode steps per CUDA graph replay, at least
    smoke_only: tuple = ()      # in --smoke, the implementations that run (name prefixes)


def sliding_cases(windows, lengths) -> tuple:
    return tuple(PrefillCase(1, T, W) for W in windows for T in lengths)


def make_plan(mode: str) -> Plan:
    """The shapes of issue 4 ("full"), the fast sanity run ("quick": T 2048 and 8192, fewer
    reps) and the CPU smoke run ("smoke": tiny shapes, NHA and SDPA only)."""
    decode = tuple(DecodeCase(B, 64) for B in (1, 32, 128))
    if mode == "full":
        prefill = sliding_cases((64, 512), (2048, 8192, 32768)) + (
            PrefillCase(8, 4096, 64), PrefillCase(1, 8192, 8192))
        return Plan("full", prefill, decode, (8192, 32768), warmup=5, reps=50, copy_bytes=2**30)
    if mode == "quick":
        prefill = sliding_cases((64, 512), (2048, 8192)) + (PrefillCase(1, 8192, 8192),)
        return Plan("quick", prefill, decode, (8192,), warmup=3, reps=10, copy_bytes=2**30)
    if mode == "smoke":
        prefill = sliding_cases((16,), (64, 128)) + (PrefillCase(1, 128, 128),)
        return Plan("smoke", prefill, tuple(DecodeCase(B, 16) for B in (1, 2)), (128,), warmup=1,
                    reps=5, copy_bytes=64 * 2**20, heads=2, smoke_only=("nha", "sdpa"))
    raise ValueError(f"unknown mode {mode!r}")


def installed_version(distribution: str):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    import tvm
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "nha_tvm": nha_tvm.__version__, "tvm": tvm.__version__,
            **{name: installed_version(name) for name in ("fla-core", "flash-linear-attention", "triton")}}


def card_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()}, {os.cpu_count()} cores"


def describe_run(plan: Plan, setup: Setup, clock: Clock) -> dict:
    return {
        "card": card_name(setup.device), "device": setup.device.type,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(), "mode": plan.mode, "l2_cache_bytes": setup.l2_bytes,
        "config": {"heads": plan.heads, "key_dim": plan.key_dim, "value_dim": plan.value_dim,
                   "slots": plan.slots, "rope_theta": plan.rope_theta,
                   "io_dtype": str(setup.io_dtype).removeprefix("torch."), "gate_dtype": str(GATE_DTYPE).removeprefix("torch."),
                   "kv_contexts": list(plan.kv_contexts)},
        "timing": {"clock": clock.method, "warmup": plan.warmup, "reps": plan.reps,
                   "decode_graph_steps": plan.graph_steps if clock.cuda else None},
    }


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def skip_reason(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def measure(impl: str, plan: Plan, setup: Setup, build, time_calls) -> dict:
    """Times one implementation, or records why it was skipped (never fatal)."""
    if plan.smoke_only and not impl.startswith(plan.smoke_only):
        return {"skipped": "--smoke runs NHA and SDPA only"}
    try:
        return time_calls(build())
    except Exception as error:  # an unavailable peer (import, GPU, shape, memory) is a result too
        reason = skip_reason(error)
        tqdm.write(f"bench_peers: {impl} skipped: {reason}", file=sys.stderr)
        return {"skipped": reason}
    finally:
        release_memory(setup.device)


def prefill_cost(case: PrefillCase, plan: Plan, setup: Setup) -> dict:
    """NHA's minimum bytes and FLOPs on a prefill shape, by the spec's cost model."""
    dims = {"key_dim": plan.key_dim, "value_dim": plan.value_dim, "slots": plan.slots}
    return {"min_bytes": prefill_min_bytes(batch=case.batch, seq_len=case.seq_len, q_heads=plan.heads,
                                           kv_heads=plan.heads, io_bytes=setup.io_dtype.itemsize,
                                           gate_bytes=GATE_DTYPE.itemsize, **dims),
            "flops": nha_flops(batch=case.batch, q_heads=plan.heads, window=case.window,
                               tokens=case.seq_len, **dims)}


def decode_cost(case: DecodeCase, plan: Plan, setup: Setup, position: int) -> dict:
    """NHA's minimum bytes and FLOPs of one decode step at `position`, by the spec's cost model."""
    dims = {"key_dim": plan.key_dim, "value_dim": plan.value_dim, "slots": plan.slots}
    return {"min_bytes": decode_min_bytes(batch=case.batch, q_heads=plan.heads, kv_heads=plan.heads,
                                          window=case.window, io_bytes=setup.io_dtype.itemsize,
                                          gate_bytes=GATE_DTYPE.itemsize, **dims),
            "flops": nha_flops(batch=case.batch, q_heads=plan.heads, window=case.window,
                               tokens=1, start=position, **dims)}


def with_eager(time_fn, plan: Plan, setup: Setup):
    """time_fn, and the same calls one at a time with the host's work in them (the report's
    "eager" column: ``timing.EagerClock``)."""
    def timed(calls):
        eager = time_rotated(calls, EagerClock(setup.device), warmup=plan.warmup, reps=plan.reps)
        return {**time_fn(calls), "eager_ms": eager["ms"]}
    return timed


def prefill_record(case: PrefillCase, plan: Plan, setup: Setup, clock: Clock, measured: dict) -> dict:
    """NHA and every prefill peer on one shape. `measured` keeps the results of the peers that
    do not depend on W, so each is timed once per (batch, length)."""
    def time_calls(calls):
        return time_rotated(calls, clock, warmup=plan.warmup, reps=plan.reps)

    time_nha = with_eager(time_calls, plan, setup)
    results = {}
    for impl, builder in PREFILL_BUILDERS.items():
        key = (impl, case.batch, case.seq_len)
        if impl in WINDOW_FREE and key in measured:
            first_case, result = measured[key]
            results[impl] = {**result, "measured_in": first_case}
            continue
        results[impl] = measure(impl, plan, setup, partial(builder, case, setup),
                                time_nha if impl == "nha" else time_calls)
        measured[key] = (case.name, results[impl])
    return {"section": "prefill", "name": case.name, "shape": asdict(case),
            "nha_cost": prefill_cost(case, plan, setup), "results": results}


def decode_record(case: DecodeCase, plan: Plan, setup: Setup, clock: Clock) -> dict:
    """NHA and every decode peer on one batch size; CUDA graphs on a GPU."""
    def time_steps(steps):
        if clock.cuda:
            return time_graph_steps(steps, clock, warmup=plan.warmup, reps=plan.reps,
                                    min_steps=plan.graph_steps)
        return time_rotated(steps, clock, warmup=plan.warmup, reps=plan.reps)
    time_nha_steps = with_eager(time_steps, plan, setup)
    results = {impl: measure(impl, plan, setup, partial(builder, case, setup),
                             time_nha_steps if impl == "nha" else time_steps)
               for impl, builder in decode_builders(plan.kv_contexts).items()}
    position = steady_state_prompt_len(case.window)   # from here on every step sees a full window
    return {"section": "decode", "name": case.name, "shape": {**asdict(case), "position": position},
            "nha_cost": decode_cost(case, plan, setup, position), "results": results}


def setup_for(plan: Plan, device: torch.device) -> Setup:
    """The plan's shapes on ``device``: bf16 on a GPU, float32 on a CPU (NHA's only CPU dtype)."""
    return Setup(device, torch.bfloat16 if device.type == "cuda" else torch.float32, plan.heads,
                 plan.key_dim, plan.value_dim, plan.slots, plan.rope_theta, l2_cache_bytes(device))


def run(plan: Plan, device: torch.device, on_progress) -> dict:
    """Measures every shape of the plan; on_progress(results) runs after each shape, so that a
    run cut short keeps what it measured."""
    setup = setup_for(plan, device)
    clock = Clock(device)
    results = {"meta": describe_run(plan, setup, clock), "cases": []}
    jobs = [("prefill", case) for case in plan.prefill] + [("decode", case) for case in plan.decode]
    measured = {}
    with torch.no_grad():
        results["meta"]["copy_bandwidth"] = copy_bandwidth(device, clock, nbytes=plan.copy_bytes, reps=20)
        release_memory(device)
        progress = tqdm(jobs, desc="bench_peers", unit="shape", file=sys.stderr)
        for section, case in progress:
            progress.set_postfix_str(f"{section} {case.name}")
            record = (prefill_record(case, plan, setup, clock, measured) if section == "prefill"
                      else decode_record(case, plan, setup, clock))
            results["cases"].append(record)
            on_progress(results)
    return results
