"""Timing for bench_peers: one clock per device, inputs rotated past the L2 cache so every timed
call reads cold memory, decode steps replayed from CUDA graphs, and the copy bandwidth that
serves as the memory roofline."""

import math
import statistics
import time

import torch

FALLBACK_L2_BYTES = 64 * 2**20   # when the device does not report its L2 size (and on the CPU)
MAX_COPIES = 128                 # bounds the memory spent on copies of tiny input sets


GPU_SLEEP_CYCLES = 2_000_000     # about 1 ms at H100/H200 clocks: longer than any call's host work


class Clock:
    """Times one call: CUDA events on a GPU, time.perf_counter on the CPU.

    On a GPU a short sleep kernel runs before the start event, so the host queues the call's
    kernels while the GPU is still busy: the events then time the GPU work alone, not the
    Python and launch overhead of an idle GPU waiting for its first kernel (which would swamp
    the fast peers and the decode steps).
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.method = ("CUDA events (a sleep kernel queued first keeps the host overhead out)"
                       if self.cuda else "time.perf_counter")

    def time_ms(self, fn) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(GPU_SLEEP_CYCLES)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)


class EagerClock:
    """Times one call as an eager PyTorch caller sees it: the host clock from the call to the
    end of a device synchronize after it, the host's launch work included (which ``Clock``
    keeps out on purpose)."""

    def __init__(self, device: torch.device):
        self.device = device

    def time_ms(self, fn) -> float:
        start = time.perf_counter()
        fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return (time.perf_counter() - start) * 1e3


def l2_cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        size = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
        if size:
            return size
    return FALLBACK_L2_BYTES


def tensor_bytes(obj) -> int:
    """Bytes of every tensor in obj: a tensor, a tuple or list of them, or an object holding
    tensors as attributes (an NHACache)."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, (tuple, list)):
        return sum(tensor_bytes(x) for x in obj)
    if hasattr(obj, "__dict__"):
        return sum(tensor_bytes(x) for x in vars(obj).values())
    return 0


def copies_past_l2(set_bytes: int, l2_bytes: int) -> int:
    """How many copies of an input set to rotate over so that each call reads cold inputs:
    together they span twice the L2 cache, so whatever the cache kept from the last calls is
    not what the next call reads. A set that alone is that large needs one copy."""
    return max(1, min(MAX_COPIES, math.ceil(2 * l2_bytes / max(set_bytes, 1))))


def rotated_sets(make_set, l2_bytes: int) -> list:
    """Input sets from make_set(), as many as copies_past_l2 asks for the first one's size."""
    first = make_set()
    count = copies_past_l2(tensor_bytes(first), l2_bytes)
    return [first] + [make_set() for _ in range(count - 1)]


def summarize(times_ms: list, **details) -> dict:
    return {"ms": statistics.median(times_ms), "min_ms": min(times_ms), "max_ms": max(times_ms),
            "reps": len(times_ms), "times_ms": [round(t, 6) for t in times_ms], **details}


def time_rotated(calls: list, clock: Clock, *, warmup: int, reps: int) -> dict:
    """Median time of one call, cycling over calls (each on its own copy of the inputs)."""
    for i in range(warmup):
        calls[i % len(calls)]()
    times = [clock.time_ms(calls[(warmup + i) % len(calls)]) for i in range(reps)]
    return summarize(times, copies=len(calls))


def time_graph_steps(steps: list, clock: Clock, *, warmup: int, reps: int, min_steps: int) -> dict:
    """Median time per decode step, with max(min_steps, len(steps)) steps captured back to back
    in one CUDA graph (cycling over steps, each on its own cold copy of the state) and each
    replay timed: the launch overhead a model's graph would not pay stays out, and a single
    step's few microseconds are not lost in the events' resolution.

    Each step runs once eagerly first, so that kernels compile (TVM, Triton) before capture.
    """
    for step in steps:
        step()
    torch.cuda.synchronize()
    count = max(min_steps, len(steps))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(count):
            steps[i % len(steps)]()
    for _ in range(warmup):
        graph.replay()
    times = [clock.time_ms(graph.replay) / count for _ in range(reps)]
    return summarize(times, copies=len(steps), steps_per_replay=count)


def copy_bandwidth(device: torch.device, clock: Clock, *, nbytes: int, reps: int) -> dict:
    """The memory roofline: bytes read plus written per second by a copy of one tensor far
    larger than the L2 cache (median over reps)."""
    source = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    target = torch.empty_like(source)
    def copy():
        target.copy_(source)
    for _ in range(3):  # warm-up
        copy()
    ms = statistics.median([clock.time_ms(copy) for _ in range(reps)])
    return {"GB_per_s": 2 * nbytes / (ms * 1e-3) / 1e9, "bytes": nbytes, "ms": ms}
