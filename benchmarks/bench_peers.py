"""NHA against its peers (issue 4) on one GPU: torch SDPA (flash), FlexAttention and fla's gated
slot attention, prefill and steady-state decode, with the memory roofline and TFLOP/s.

    python benchmarks/bench_peers.py --out DIR --write-md     # the full run on a GPU (minutes)
    python benchmarks/bench_peers.py --quick                  # fewer reps, T 2048 and 8192 only
    python benchmarks/bench_peers.py --device cpu --smoke     # NHA and SDPA at tiny shapes, no GPU
    python benchmarks/bench_peers.py --from-json DIR/results.json   # BENCHMARKS.md + plots, no GPU

A run writes DIR/results.json (after every shape, so a run cut short keeps what it measured)
and the plots under DIR; --write-md (implied by --from-json) regenerates the section of
BENCHMARKS.md between its bench_peers markers and leaves the rest of the file as it is.
"""

import argparse
import json
import sys
from pathlib import Path

import report

BENCH_DIR = Path(__file__).resolve().parent


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results",
                        help="folder for results.json and the plots (default: benchmarks/results)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu with --smoke")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--quick", action="store_true", help="fewer reps, prefill T 2048 and 8192 only")
    modes.add_argument("--smoke", action="store_true", help="tiny shapes, NHA and SDPA only (runs on a CPU)")
    modes.add_argument("--from-json", type=Path, metavar="RESULTS",
                       help="measure nothing: regenerate BENCHMARKS.md and the plots from a results.json")
    parser.add_argument("--write-md", action="store_true", help="regenerate the bench_peers section of --md-path")
    parser.add_argument("--md-path", type=Path, default=BENCH_DIR.parent / "BENCHMARKS.md",
                        help="the markdown file to update (default: BENCHMARKS.md at the repo root)")
    args = parser.parse_args(argv)
    if args.device == "cpu" and not (args.smoke or args.from_json):
        parser.error("--device cpu needs --smoke: the full shapes would take hours on a CPU")
    return args


def save_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=1) + "\n")


def run_benchmark(args) -> dict:
    """Runs the benchmark (torch, TVM and the peers are imported only here)."""
    import torch
    from measure import make_plan, run
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("bench_peers: no CUDA GPU here; use --device cpu --smoke, or --from-json")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)  # graphs, synchronize and the events follow the current device
    plan = make_plan("smoke" if args.smoke else "quick" if args.quick else "full")
    return run(plan, device, on_progress=lambda results: save_json(results, args.out / "results.json"))


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        results = run_benchmark(args)
    plots = report.write_plots(results, args.out)
    if args.write_md or args.from_json:
        report.write_markdown(results, args.md_path, plots)
        print(f"bench_peers: wrote the bench_peers section of {args.md_path}", file=sys.stderr)
    print(report.stdout_summary(results))


if __name__ == "__main__":
    main()
