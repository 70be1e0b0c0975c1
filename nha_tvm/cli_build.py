"""``nha-build``: compile every NHA kernel a model config needs into an op package.

The kernel list is ``nha_tvm.kernel_plan``'s for the target arch, the same the torch ops request
(on CUDA the chunked prefill and the fused decode step, on CPU the portable kernels). A module
per (io dtype, gate dtype) pair the config names.
"""

import argparse
import json
import pathlib
import re
import sys
import time
from typing import NamedTuple

import torch
from tqdm import tqdm

from .kernel_plan import decode_kernel, prefill_kernels
from .op_package import MANIFEST_NAME, OPS_DIR_ENV, OPS_STRICT_ENV, start_package, write_manifest, write_module
from .targets import arch_name
from .tuning.records import candidates
from .validation import SUPPORTED_DTYPES, dtype_name

SIZE_FIELDS = ("heads", "kv_heads", "head_dim", "value_dim", "slots")
DTYPE_FIELDS = ("dtype", "gate_dtype")

EPILOG = f"""\
model config:
  --config FILE is a JSON object with the fields below; flags given as well override it.
    heads        query heads HQ
    kv_heads     key/value heads H (HQ must be a multiple; default: heads)
    head_dim     key dim K
    value_dim    value dim V (default: head_dim)
    slots        slot count M
    dtype        io dtype of q, k, v, o, or a list of them (default: float32)
    gate_dtype   dtype of the gates g, s, or a list (default: for each io dtype, that dtype
                 and float32, the dtype nha_tvm.NativeHybridAttention gives its gates)
  dtypes: cpu float32; cuda float32, bfloat16, float16. Every (dtype, gate_dtype) pair is built.
  Example: {{"heads": 16, "kv_heads": 8, "head_dim": 128, "slots": 64, "dtype": "bfloat16"}}

package:
  DIR/<cache key>.so   one exported TVM module per kernel and shape bucket (the static
                       params; sequence length and batch are symbolic), device code embedded
  DIR/{MANIFEST_NAME}    per module: kernel, params, dtype, gate dtype, arch, cache key,
                       sha256, size, device code; for the package: arch, nha_tvm / tvm /
                       tvm-ffi versions, kernel source digest, the model config
  Modules are compiled with nha_tvm.compiler.build (the best tuning records apply). The manifest
  is written last: an interrupted build leaves no package.

device code (cuda):
  TVM compiles the CUDA kernels (NVRTC, or nvcc with TVM_CUDA_COMPILE_MODE=nvcc) only where the
  CUDA driver library libcuda is present, as on a GPU host: device_code "compiled". Without it
  (a cross-build on a plain CPU host) the modules carry CUDA source that the inference host
  compiles when it loads them: device_code "cuda_source", and nha-build warns.

use:
  nha_tvm.load_ops("DIR") in Python, or {OPS_DIR_ENV}=DIR in the environment (with
  {OPS_STRICT_ENV}=1 to raise instead of compiling a kernel the package lacks). The host needs
  the same arch and the same nha_tvm, tvm and tvm-ffi versions; it needs no compiler.

examples:
  nha-build --target cpu --heads 4 --kv-heads 2 --head-dim 64 --slots 16 --out ops-cpu
  nha-build --target cuda --arch sm_90 --config model.json --out ops-h100
"""


class KernelRequest(NamedTuple):
    kernel: str
    params: dict
    dtype: str
    gate_dtype: str | None


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nha-build", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compile the NHA kernels of a model config into an op package that "
                    "nha_tvm.load_ops loads without compiling anything.")
    parser.add_argument("--target", required=True, choices=("cpu", "cuda"),
                        help="device the package is for")
    parser.add_argument("--arch", help="CUDA arch sm_XY to build for, e.g. sm_90, also without a "
                        "GPU (see device code below); default: the arch of this machine's GPU")
    parser.add_argument("--config", type=pathlib.Path, metavar="FILE",
                        help="model config JSON (fields below)")
    parser.add_argument("--heads", type=int, help="query heads HQ")
    parser.add_argument("--kv-heads", type=int, help="key/value heads H (default: heads)")
    parser.add_argument("--head-dim", type=int, help="key dim K")
    parser.add_argument("--value-dim", type=int, help="value dim V (default: head dim)")
    parser.add_argument("--slots", type=int, help="slot count M")
    parser.add_argument("--dtype", nargs="+", help="io dtype(s) (default: float32)")
    parser.add_argument("--gate-dtype", nargs="+",
                        help="gate dtype(s) (default: for each io dtype, that dtype and float32)")
    parser.add_argument("--out", required=True, type=pathlib.Path, metavar="DIR",
                        help="package folder (created; an existing package there is replaced)")
    args = parser.parse_args(argv)
    try:
        args.arch = resolve_arch(args.target, args.arch)
        args.model = model_config(read_config_file(args.config), vars(args), args.target)
    except ValueError as err:
        parser.error(str(err))
    return args


def resolve_arch(target: str, arch: str | None) -> str:
    if target == "cpu":
        if arch not in (None, "cpu"):
            raise ValueError(f"--arch {arch} is for CUDA; --target cpu builds for arch cpu")
        return "cpu"
    if arch is None:
        if not torch.cuda.is_available():
            raise ValueError("no CUDA GPU on this machine: pass --arch sm_XY (e.g. sm_90) to cross-build")
        return arch_name(torch.device("cuda"))
    if not re.fullmatch(r"sm_\d{2,3}", arch):
        raise ValueError(f"--arch must look like sm_90, got {arch!r}")
    return arch


def read_config_file(path: pathlib.Path | None) -> dict:
    if path is None:
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read --config {path}: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"--config {path} must hold a JSON object")
    # window(s) select tuned buckets at run time; every bucket of the shape is packaged anyway
    known = SIZE_FIELDS + DTYPE_FIELDS + ("window",)
    unknown = set(config) - set(known)
    if unknown:
        raise ValueError(f"--config {path} has unknown fields {sorted(unknown)}; known: {', '.join(known)}")
    return config


def model_config(file_values: dict, flags: dict, target: str) -> dict:
    """Merge the config file with the flags (flags win), fill defaults and check it."""
    config = dict(file_values)
    config.update({name: flags[name] for name in SIZE_FIELDS + DTYPE_FIELDS if flags.get(name) is not None})
    config.setdefault("kv_heads", config.get("heads"))
    config.setdefault("value_dim", config.get("head_dim"))
    for name in SIZE_FIELDS:
        value = config.get(name)
        if value is None:
            raise ValueError(f"the model config needs {name} (--{name.replace('_', '-')} or --config)")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if config["heads"] % config["kv_heads"]:
        raise ValueError(f"heads = {config['heads']} must be a multiple of kv_heads = {config['kv_heads']}")
    supported = [dtype_name(d) for d in SUPPORTED_DTYPES[target]]
    dtypes = _names(config.get("dtype", "float32"))
    gate_dtypes = _names(config["gate_dtype"]) if "gate_dtype" in config else None
    for name in dtypes + (gate_dtypes or []):
        if name not in supported:
            raise ValueError(f"dtype {name!r} is not supported on {target}; supported: {', '.join(supported)}")
    config["dtype"], config["gate_dtype"] = dtypes, gate_dtypes
    config["dtype_pairs"] = [[io, gate] for io in dtypes
                             for gate in (gate_dtypes or sorted({io, "float32"}))]
    return config


def _names(value) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"a dtype must be a name or a list of names, got {value!r}")
    return sorted(set(names))


def kernel_requests(config: dict, arch: str) -> list[KernelRequest]:
    """Every module the torch ops request for this config on ``arch``, each once."""
    HQ, H, K, V, M = (config[name] for name in SIZE_FIELDS)
    requests = {}
    for io, gate in config["dtype_pairs"]:
        sizes = dict(HQ=HQ, H=H, K=K, V=V, M=M, io_dtype=io, gate_dtype=gate, arch=arch)
        plan = prefill_kernels(**sizes)
        roles = [role for role in plan if K % 2 == 0 or not role.startswith("rope")]  # RoPE needs an even K
        for kernel, params in [plan[role] for role in roles] + [decode_kernel(**sizes)]:
            request = KernelRequest(kernel, params, io, None if kernel == "rope" else gate)
            requests.setdefault((kernel, json.dumps(params, sort_keys=True)), request)
    return list(requests.values())


def main(argv=None) -> int:
    args = parse_args(argv)
    requests = kernel_requests(args.model, args.arch)
    start = time.perf_counter()
    start_package(args.out)
    modules = []
    # one module per tuned bucket of each kernel (the default schedule where none is tuned)
    builds = [(request, record) for request in requests
              for record in (candidates(request.kernel, request.params, args.arch) or [None])]
    with tqdm(builds, desc=f"nha-build {args.arch}", unit="module") as progress:
        for request, record in progress:
            progress.set_postfix_str(f"{request.kernel} {request.dtype}")
            modules.append(write_module(args.out, request.kernel, request.params, args.arch,
                                        dtype=request.dtype, gate_dtype=request.gate_dtype,
                                        record=record))
    manifest = write_manifest(args.out, args.arch, args.model, modules)
    size = sum(m["bytes"] for m in modules) / 2**20
    print(f"nha-build: {len(modules)} modules for {args.arch} ({size:.1f} MiB) in "
          f"{time.perf_counter() - start:.1f} s -> {manifest}")
    if any(m["device_code"] == "cuda_source" for m in modules):
        print("nha-build: warning: TVM found no CUDA driver library (libcuda) here, so the modules "
              "carry CUDA source, which the inference host compiles when it loads them (NVRTC or "
              "nvcc needed there); build on a host with the CUDA driver to ship compiled kernels",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
