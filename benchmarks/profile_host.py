"""The host's work in one eager NHA call: its time and where it goes (cProfile), for a prefill
and a decode step.

    python benchmarks/profile_host.py                  # bench_peers' sizes on the GPU
    python benchmarks/profile_host.py --device cpu --smoke

On a GPU the calls are issued in batches behind a sleep kernel, so the host never waits for the
device: the time per call is the host's Python, allocations and launches alone (what the
eager columns of BENCHMARKS.md add to the GPU time). On a CPU the kernels run on the host too,
so the time per call includes them and only the profile tells them apart.
"""

import argparse
import cProfile
import pstats
import sys
import time

import torch

from measure import DecodeCase, PrefillCase, make_plan, setup_for
from peers import nha_decode_steps, nha_prefill

BATCH = 40                # calls issued per sleep kernel: ~300 launches, within the launch queue
SLEEP_CYCLES = 10**8      # about 50 ms at H100/H200 clocks: longer than a batch's host work


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (runs on a CPU)")
    parser.add_argument("--batches", type=int, default=10, help="batches of %d calls timed" % BATCH)
    parser.add_argument("--top", type=int, default=15, help="functions listed per call")
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cpu" and not args.smoke:
        parser.error("--device cpu needs --smoke")
    return args


def issue_batch(calls: list, device: torch.device) -> float:
    """Seconds the host takes to issue BATCH calls (behind a sleep kernel on a GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda._sleep(SLEEP_CYCLES)
    start = time.perf_counter()
    for i in range(BATCH):
        calls[i % len(calls)]()
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return elapsed


def host_report(label: str, calls: list, device: torch.device, batches: int, top: int) -> str:
    for call in calls[:3]:  # compiles and loads the kernels
        call()
    best_us = min(issue_batch(calls, device) for _ in range(batches)) / BATCH * 1e6
    profiler = cProfile.Profile()
    profiler.enable()
    issue_batch(calls, device)
    profiler.disable()
    rows = sorted(pstats.Stats(profiler).stats.items(), key=lambda item: -item[1][2])[:top]
    lines = [f"== {label}: {best_us:.1f} us of host time per call (best of {batches} batches of "
             f"{BATCH}); cProfile of one batch (its own overhead inflates the times), per call:",
             f"{'own us':>8} {'total us':>9} {'calls':>6}  function"]
    for (path, line, name), (_, calls_made, own, total, _) in rows:
        where = "/".join(path.split("/")[-2:]) + f":{line}" if line else path
        lines.append(f"{own / BATCH * 1e6:8.1f} {total / BATCH * 1e6:9.1f} {calls_made / BATCH:6.1f}  {name} ({where})")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    plan = make_plan("smoke" if args.smoke else "full")
    setup = setup_for(plan, device)
    T, W = (128, 16) if args.smoke else (2048, 64)
    batch, window = (2, 16) if args.smoke else (32, 64)
    cases = [(f"prefill B=1 T={T} W={W}", nha_prefill(PrefillCase(1, T, W), setup)),
             (f"decode B={batch} W={window}", nha_decode_steps(DecodeCase(batch, window), setup))]
    for label, calls in cases:
        print(host_report(label, calls, device, args.batches, args.top), flush=True)


if __name__ == "__main__":
    sys.exit(main())
