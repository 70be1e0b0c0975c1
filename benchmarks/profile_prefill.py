"""Device time per kernel of NHA prefills (torch profiler), for one build or an A/B of several.

    python benchmarks/profile_prefill.py [T] [W]                # one shape's kernel table (T=32768, W=64)
    python benchmarks/profile_prefill.py --ab NAME --out DIR    # the A/B shapes: DIR/times.jsonl, DIR/NAME-*.pt
    python benchmarks/profile_prefill.py --compare DIR A B ...  # per shape and build: ms, outputs against A's

The inputs are those of bench_peers.py's full plan (its head sizes, gates and RoPE, made by its
``Setup``) after a fixed seed: every build sees the same, so equal outputs are equal bit for bit. An
A/B runs each build in a process of its own (its install first on PYTHONPATH and its own
NHA_TVM_CACHE_DIR), the first build again at the end, so that the table shows the drift
between the runs of one build. ``--device cpu --smoke`` runs tiny shapes on the CPU, where the
kernels are not profiled and a call's wall-clock time stands in for the sum.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from measure import make_plan, setup_for

AB_SHAPES = ((1, 32768, 64), (1, 8192, 64), (1, 2048, 64), (1, 8192, 512), (1, 8192, 8192), (8, 4096, 64))
SMOKE_SHAPES = ((1, 130, 16), (2, 64, 100))
REPS = 10


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", nargs="*", type=int, help="T and W of the one-shape table (default 32768 64)")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--ab", metavar="NAME", help="measure the A/B shapes as build NAME into --out")
    modes.add_argument("--compare", nargs="+", metavar="DIR A", help="the table of DIR's builds A, B, ...")
    parser.add_argument("--out", type=Path, help="the A/B folder (--ab)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (with --ab; runs on a CPU)")
    args = parser.parse_args(argv)
    if args.ab and args.out is None:
        parser.error("--ab needs --out")
    if args.device == "cpu" and not args.smoke:
        parser.error("--device cpu needs --smoke")
    if args.smoke and not args.ab:
        parser.error("--smoke is for --ab (the one-shape table profiles CUDA kernels)")
    return args


def prefill_call(B: int, T: int, W: int, device: torch.device, smoke: bool):
    """One prefill of the plan's sizes on seeded inputs, as a closure (and its compiled kernels
    built by a first call)."""
    import nha_tvm
    setup = setup_for(make_plan("smoke" if smoke else "full"), device)
    H, K, V, M = setup.heads, setup.key_dim, setup.value_dim, setup.slots
    torch.manual_seed(1234 + B + T + W)  # the CPU's and every GPU's generator
    q, k, v, g = setup.randn(B, T, H, K), setup.randn(B, T, H, K), setup.randn(B, T, H, V), setup.log_gates(B, T, H, M)
    return lambda: nha_tvm.nha_attention(q, k, v, g, window=W, rope_theta=setup.rope_theta)[0]


def device_ms_per_kernel(call, reps: int) -> dict:
    """Each CUDA kernel's device time per call (ms), over ``reps`` calls after warm-up."""
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            call()
        torch.cuda.synchronize()
    return {e.key: e.self_device_time_total / reps / 1000 for e in prof.key_averages()
            if e.self_device_time_total > 0}


def wall_ms(call, reps: int) -> float:
    call()
    start = time.perf_counter()
    for _ in range(reps):
        call()
    return (time.perf_counter() - start) / reps * 1000


def measure_build(name: str, out: Path, device: torch.device, smoke: bool) -> None:
    import nha_tvm
    out.mkdir(parents=True, exist_ok=True)
    print(f"{name}: nha_tvm from {nha_tvm.__file__}", file=sys.stderr)
    for B, T, W in SMOKE_SHAPES if smoke else AB_SHAPES:
        call = prefill_call(B, T, W, device, smoke)
        started = time.perf_counter()
        output = call()
        first_s = time.perf_counter() - started
        if device.type == "cuda":
            kernels = device_ms_per_kernel(call, REPS)
            total = sum(kernels.values())
        else:
            kernels, total = {}, wall_ms(call, REPS)
        row = dict(build=name, shape=f"B={B} T={T} W={W}", sum_ms=total, first_call_s=first_s,
                   state_ms=sum(ms for k, ms in kernels.items() if "state" in k),
                   attend_ms=sum(ms for k, ms in kernels.items() if "attend" in k), kernels=kernels)
        torch.save(output.cpu(), out / f"{name}-{B}-{T}-{W}.pt")
        with open(out / "times.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "kernels"}), file=sys.stderr)
        del call, output
        if device.type == "cuda":
            torch.cuda.empty_cache()


def compare(folder: Path, builds: list) -> str:
    """A markdown table (output pass / state pass / all kernels, ms; on a CPU the call's
    wall-clock ms) and, per shape, each build's output against the first build's."""
    rows = [json.loads(line) for line in (folder / "times.jsonl").read_text().splitlines()]
    by = {(r["build"], r["shape"]): r for r in rows}
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    lines = ["| shape | " + " | ".join(builds) + " |", "| --- |" + " --- |" * len(builds)]
    for shape in shapes:
        cells = []
        for b in builds:
            r = by.get((b, shape))
            cells.append("-" if r is None else f"{r['attend_ms']:.3f} / {r['state_ms']:.3f} / {r['sum_ms']:.3f}")
        lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    lines += ["", f"outputs against {builds[0]}:"]
    for shape in shapes:
        B, T, W = (part.split("=")[1] for part in shape.split())
        reference = torch.load(folder / f"{builds[0]}-{B}-{T}-{W}.pt").float()
        verdicts = []
        for b in builds[1:]:
            path = folder / f"{b}-{B}-{T}-{W}.pt"
            if not path.exists():
                verdicts.append(f"{b}: -")
                continue
            o = torch.load(path).float()
            if torch.equal(o, reference):
                verdicts.append(f"{b}: equal")
            else:
                diff = (o - reference).abs().max().item() / reference.abs().max().item()
                verdicts.append(f"{b}: max diff {diff:.2e} of the largest output")
        lines.append(f"{shape}: " + "; ".join(verdicts))
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.compare:
        if len(args.compare) < 2:
            sys.exit("--compare needs a folder and at least one build")
        print(compare(Path(args.compare[0]), args.compare[1:]))
        return
    device = torch.device(args.device)
    if args.ab:
        measure_build(args.ab, args.out, device, args.smoke)
        return
    T, W = (args.shape + [32768, 64][len(args.shape):])[:2]
    kernels = device_ms_per_kernel(prefill_call(1, T, W, device, smoke=False), 5)
    print(f"{torch.cuda.get_device_name()}  T={T} W={W}  (device ms per call, 5 calls)")
    for name, ms in sorted(kernels.items(), key=lambda item: -item[1]):
        print(f"{ms:9.4f}  {name[:80]}")
    print(f"{sum(kernels.values()):9.4f}  all kernels")


if __name__ == "__main__":
    main()
