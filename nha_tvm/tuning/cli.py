"""``nha-tune``: tune the NHA kernels of a model shape for this machine's GPU (or CPU).

    nha-tune --target cuda --heads 16 --head-dim 128 --slots 64 --window 64,512 \\
             --seq-lens 2048,8192,32768 --batch 1,32 --trials 64 --out tuning_logs

Every kernel the shape needs (prefill: state pass, RoPE, chunk read-out; decode step) is tuned
per bucket (sequence length for prefill, batch for decode) with MetaSchedule's evolutionary
search and XGBoost cost model over the design spaces in ``nha_tvm.schedules``. Records go to
``OUT/<arch>/`` (a full MetaSchedule database under ``work/``, and the best record per workload
beside ``metadata.json``); nha_tvm applies them whenever it builds a kernel for that arch.
"""

import argparse
import fcntl
import json
import logging
import pathlib
import signal
import sys

from nha_tvm.kernel_plan import decode_kernel, prefill_kernels
from nha_tvm.kernels import KERNELS
from nha_tvm.schedules import rule_named
from nha_tvm.targets import target_for

from . import records
from .workloads import Workload

SHAPE_FLAGS = ("heads", "kv_heads", "head_dim", "value_dim", "slots", "window", "dtype", "gate_dtype")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="nha-tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=("cuda", "llvm"), required=True,
                   help="cuda: the GPU of this machine (its arch picks the TVM target); llvm: this CPU")
    p.add_argument("--config", type=pathlib.Path,
                   help="model config JSON with keys heads, kv_heads, head_dim, value_dim, slots, "
                        "window (int or list), dtype, gate_dtype; flags override it")
    p.add_argument("--heads", type=int, help="query heads HQ (default 16)")
    p.add_argument("--kv-heads", type=int, help="key/value heads H (default: --heads)")
    p.add_argument("--head-dim", type=int, help="key dim K (default 128)")
    p.add_argument("--value-dim", type=int, help="value dim V (default: --head-dim)")
    p.add_argument("--slots", type=int, help="slots M (default 64)")
    p.add_argument("--window", help="window W, or a comma list (default 64)")
    p.add_argument("--dtype", help="q/k/v dtype: bfloat16, float16, float32 (default bfloat16; float32 on llvm)")
    p.add_argument("--gate-dtype", help="g/s dtype (default float32)")
    p.add_argument("--seq-lens", default="2048,8192,32768", help="prefill length buckets (comma list)")
    p.add_argument("--batch", default="1", help="decode batch buckets (comma list)")
    p.add_argument("--trials", type=int, default=64, help="measured candidates per kernel and bucket")
    p.add_argument("--out", type=pathlib.Path, default=None,
                   help="record root (default: $NHA_TVM_TUNING_DIR or ~/.cache/nha_tvm/tuning)")
    p.add_argument("--resume", action="store_true",
                   help="skip workloads whose records already hold --trials candidates")
    p.add_argument("--kernels", help="only these kernels (comma list of slot_state_scan, rope, "
                                     "chunk_attend, decode_step)")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT",
                   help="measure on RPC servers registered with this TVM tracker (see README)")
    p.add_argument("--rpc-key", help="device key of the RPC servers (with --rpc-tracker)")
    p.add_argument("--arch", help="arch for --target cuda with --rpc-tracker (e.g. sm_90); default: the local GPU")
    args = p.parse_args(argv)
    if bool(args.rpc_tracker) != bool(args.rpc_key):
        p.error("--rpc-tracker and --rpc-key go together")
    return args


def model_shape(args) -> dict:
    shape = json.loads(args.config.read_text()) if args.config else {}
    for flag in SHAPE_FLAGS:
        if getattr(args, flag, None) is not None:
            shape[flag] = getattr(args, flag)
    default_dtype = "float32" if args.target == "llvm" else "bfloat16"
    shape.setdefault("heads", 16)
    shape.setdefault("kv_heads", shape["heads"])
    shape.setdefault("head_dim", 128)
    shape.setdefault("value_dim", shape["head_dim"])
    shape.setdefault("slots", 64)
    shape.setdefault("dtype", default_dtype)
    shape.setdefault("gate_dtype", "float32")
    windows = shape.get("window", 64)
    shape["window"] = [int(w) for w in (windows.split(",") if isinstance(windows, str) else
                                        windows if isinstance(windows, list) else [windows])]
    if shape["heads"] % shape["kv_heads"]:
        raise SystemExit(f"nha-tune: heads ({shape['heads']}) must be a multiple of kv_heads ({shape['kv_heads']})")
    return shape


def workloads_for(shape: dict, seq_lens: list[int], batches: list[int], arch: str,
                  kernels=None) -> list[Workload]:
    """The workloads of every kernel the torch ops use on ``arch`` whose schedule has knobs."""
    sizes = dict(HQ=shape["heads"], H=shape["kv_heads"], K=shape["head_dim"], V=shape["value_dim"],
                 M=shape["slots"], io_dtype=shape["dtype"], gate_dtype=shape["gate_dtype"], arch=arch)
    target = target_for(arch)

    def wanted(kernel):
        return rule_named(kernel, target).tunable and (kernels is None or kernel in kernels)
    # a kernel without a window argument (RoPE, the chunk scan) is one bucket, window 0; the
    # kernels are filtered first, so no definition is built only to be dropped
    prefill = [(kernel, params, shape["window"] if takes_window(kernel, params) else [0])
               for kernel, params in prefill_kernels(**sizes).values() if wanted(kernel)]
    found = [Workload.of(kernel, params, T, W) for T in seq_lens for kernel, params, windows in prefill
             for W in windows]
    decode = decode_kernel(**sizes)
    if wanted(decode[0]):
        found += [Workload.of(*decode, B, W) for B in batches for W in shape["window"]]
    return list(dict.fromkeys(found))


def takes_window(kernel: str, params: dict) -> bool:
    return any(param.name == "window" for param in KERNELS[kernel](**params).params)


def resolve_arch(args) -> tuple[str, str]:
    """(arch name, device name) of the machine whose kernels are tuned."""
    if args.target == "llvm":
        import platform

        return "cpu", platform.processor() or platform.machine()
    if args.arch:
        return args.arch, f"remote {args.arch}"
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("nha-tune: --target cuda needs a CUDA GPU here (or --rpc-tracker with --arch)")
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}", torch.cuda.get_device_name()


class DirLock:
    """An exclusive lock on the record directory, so two runs never interleave their writes."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __enter__(self):
        self.file = open(self.path, "w")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"nha-tune: another nha-tune run is writing {self.path.parent}; wait for it to end")
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    shape = model_shape(args)
    kernels = set(args.kernels.split(",")) if args.kernels else None
    arch, device_name = resolve_arch(args)
    workloads = workloads_for(shape, [int(x) for x in args.seq_lens.split(",")],
                              [int(x) for x in args.batch.split(",")], arch, kernels)
    out = (args.out or records.user_dir()) / arch
    (out / "work").mkdir(parents=True, exist_ok=True)
    rpc = None
    if args.rpc_tracker:
        host, port = args.rpc_tracker.rsplit(":", 1)
        rpc = (host, int(port), args.rpc_key)
    from .session import TuningSession  # imports TVM's tuner only when tuning

    # SIGTERM (a kill) ends the run like Ctrl-C: finished records are kept and pruned
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with DirLock(out / ".lock"):
        session = TuningSession(out, arch, args.target, rpc)
        try:
            rows = session.run(workloads, args.trials, args.resume)
        except KeyboardInterrupt:
            session.finish(shape, device_name, args)
            print(f"nha-tune: interrupted; finished records kept in {out} (rerun with --resume)", file=sys.stderr)
            return 130
        session.finish(shape, device_name, args)
    print_table(rows)
    print(f"records: {out}")
    return 0


def print_table(rows) -> None:
    print(f"{'kernel':<16} {'bucket':<14} {'default ms':>11} {'tuned ms':>10} {'speedup':>8}")
    for name, bucket, default_s, tuned_s in rows:
        speedup = f"{default_s / tuned_s:7.2f}x" if default_s and tuned_s else "      -"
        fmt = lambda s: f"{s * 1e3:.4f}" if s else "-"  # noqa: E731
        print(f"{name:<16} {bucket:<14} {fmt(default_s):>11} {fmt(tuned_s):>10} {speedup:>8}")


if __name__ == "__main__":
    sys.exit(main())
