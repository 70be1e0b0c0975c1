"""Op packages: compiled NHA modules shipped to inference hosts, and the manifest that vouches for them.

A package is a folder of TVM shared libraries (``export_library`` output, device code embedded)
and ``manifest.json``, which records for each library its kernel, static parameters (the shape
bucket: lengths and batch are symbolic in every kernel), dtypes, arch, cache key, sha256 and
whether its CUDA code is compiled, and for the whole package the nha_tvm / TVM / tvm-ffi
versions and the digest of the kernel and schedule sources. ``nha-build`` writes packages;
:func:`load_ops` or ``$NHA_TVM_OPS_DIR`` makes ``compiler.get_kernel`` serve kernels from one,
with no compiler on the host.

A shared library runs code when it is loaded, and a torn one crashes the process inside dlopen
(SIGBUS), so nothing is loaded until the manifest matches this process and every file matches
its recorded sha256.
"""

import itertools
import json
import logging
import math
import os
import pathlib
import time

import torch
import tvm
import tvm_ffi

from . import __version__
from .compiler import build, cache_key, source_digest
from .files import replaced_atomically, sha256_of, write_text_atomically
from .kernels import KERNELS
from .targets import arch_name
from .tuning.records import bucket_distance

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
# bumped whenever the manifest layout changes, so an old reader never misreads a new package
FORMAT_VERSION = 1
OPS_DIR_ENV = "NHA_TVM_OPS_DIR"
OPS_STRICT_ENV = "NHA_TVM_OPS_STRICT"
DEVICE_CODE_KINDS = ("none", "compiled", "cuda_source")


class OpPackageError(RuntimeError):
    """An op package refused before anything was loaded, or a kernel a strict package lacks."""


def build_environment() -> dict:
    """What a module's binary depends on besides its kernel, params and arch."""
    return {"nha_tvm": __version__, "tvm": tvm.__version__, "tvm_ffi": tvm_ffi.__version__,
            "kernel_sources": source_digest()}


# --- writing -------------------------------------------------------------------------------

def start_package(directory: pathlib.Path) -> None:
    """Prepare ``directory`` for a build. The old manifest goes first, so an interrupted build
    leaves no manifest vouching for a mix of old and new files."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_NAME).unlink(missing_ok=True)


def write_module(directory: pathlib.Path, kernel: str, params: dict, arch: str, *,
                 dtype: str, gate_dtype: str | None, record=None) -> dict:
    """Compile one kernel (with a tuning record's schedule, or the default) into ``directory``;
    returns its manifest entry."""
    schedule = "default" if record is None else record.digest
    key = cache_key(kernel, params, arch, schedule)
    path = directory / f"{key}.so"
    executable = build(kernel, params, arch, record)
    with replaced_atomically(path) as tmp:
        executable.export_library(tmp)
        digest = sha256_of(tmp)
    bucket = None if record is None else {"length": record.workload.length, "window": record.workload.window}
    return {"file": path.name, "kernel": kernel, "params": params, "schedule": schedule,
            "bucket": bucket, "dtype": dtype,
            "gate_dtype": gate_dtype, "arch": arch, "cache_key": key, "sha256": digest,
            "bytes": path.stat().st_size, "device_code": _device_code(executable)}


def _device_code(executable) -> str:
    """``none`` for host-only (cpu) modules; for CUDA ``compiled`` (cubin in the library) or
    ``cuda_source``: TVM compiles CUDA at build time only where the CUDA driver library is
    present, else it stores the source and compiles it (NVRTC or nvcc) when the module is loaded."""
    cuda = [module for module in executable.mod.imports if module.kind == "cuda"]
    if not cuda:
        return "none"
    # TVM's driver-less placeholder for a CUDA module is the one that cannot run
    return "compiled" if all(module.is_runnable() for module in cuda) else "cuda_source"


def write_manifest(directory: pathlib.Path, arch: str, config: dict, modules: list[dict]) -> pathlib.Path:
    """Write the manifest last (atomically): only then does the package exist for a reader."""
    manifest = {"format": FORMAT_VERSION, "arch": arch, "versions": build_environment(),
                "config": config, "modules": modules}
    path = directory / MANIFEST_NAME
    write_text_atomically(path, json.dumps(manifest, indent=2))
    return path


# --- reading and verification --------------------------------------------------------------

class OpPackage:
    """A loaded package: per (kernel, params, arch), its compiled functions with their tuned
    buckets (None for a default schedule)."""

    def __init__(self, directory: pathlib.Path, arch: str, functions: dict, strict: bool):
        self.directory, self.arch, self.strict = directory, arch, strict
        self.functions = functions
        self._warned: set = set()
        self.serial = next(_serials)  # unlike id(), never reused by a later package

    def kernel(self, kernel: str, params: dict, arch: str, length: int | None, window: int | None):
        """The packaged function of the bucket nearest the call (the package's own buckets,
        whatever records this host has), or None (with one warning per module) for the build
        path to make it; a strict package raises instead."""
        key = _lookup_key(kernel, params, arch)
        choices = self.functions.get(key)
        if choices:
            return min(choices, key=lambda c: _bucket_rank(c[0], length, window))[1]
        wanted = f"{kernel} {json.dumps(params, sort_keys=True)} for {arch}"
        if self.strict:
            raise OpPackageError(
                f"op package {self.directory} has no module for {wanted} and was loaded in strict "
                f"mode; rebuild it with nha-build for this model config and arch, or load it with "
                f"strict=False to compile missing kernels")
        if key not in self._warned:
            self._warned.add(key)
            log.warning("nha_tvm: op package %s has no module for %s; compiling it instead "
                        "(add this config to the package to avoid the compile)", self.directory, wanted)
        return None


def load_ops(directory, strict: bool = False) -> OpPackage:
    """Make the NHA torch ops use the op package in ``directory`` (written by ``nha-build``).

    The manifest must match this machine (arch) and process (nha_tvm, TVM, tvm-ffi versions and
    kernel sources) and every file its sha256, else :class:`OpPackageError` is raised before
    anything is loaded. Kernels the package lacks are compiled as usual after one warning each,
    or raise :class:`OpPackageError` when ``strict``. From the next NHA call on, each kernel the
    package has comes from it, in the package's tuned bucket nearest the call (this host's own
    tuning records play no part). ``$NHA_TVM_OPS_DIR`` (with
    ``$NHA_TVM_OPS_STRICT=1`` for strict mode) does the same on the first kernel request
    when ``load_ops`` has not been called.
    """
    global _active
    _active = _load_package(pathlib.Path(directory), strict)
    return _active


def packaged_kernel(kernel: str, params: dict, arch: str, length: int | None = None,
                    window: int | None = None):
    """The loaded package's function for this request, or None when no package is active or
    it lacks the module (the caller then builds it). Called by ``compiler.get_kernel``."""
    package = _active_package()
    return None if package is None else package.kernel(kernel, params, arch, length, window)


def packaged_choices(kernel: str, params: dict, arch: str) -> int:
    """How many modules (tuned buckets) the active package has for this request."""
    package = _active_package()
    return 0 if package is None else len(package.functions.get(_lookup_key(kernel, params, arch), ()))


_active: OpPackage | None = None
_serials = itertools.count(1)
_env_consulted = False
# Libraries are loaded through /proc/self/fd/N, and the dynamic loader returns an already loaded
# library when the same path is opened again: closing a descriptor would let a later package
# reuse its number and silently get the old library. So descriptors and modules stay open for
# the life of the process, as TVM keeps every module it loads.
_resident: list = []


def active_package_id() -> int:
    """Identifies the package in use (0 for none): compiler memoizes its lookups under it."""
    package = _active_package()
    return 0 if package is None else package.serial


def _active_package() -> OpPackage | None:
    global _active, _env_consulted
    if not _env_consulted:
        directory = os.environ.get(OPS_DIR_ENV)
        if directory and _active is None:
            strict = os.environ.get(OPS_STRICT_ENV, "").lower() in ("1", "true", "yes")
            # a refused package raises here, and again on the next request: never a silent compile
            _active = _load_package(pathlib.Path(directory), strict)
        _env_consulted = True
    return _active


def _load_package(directory: pathlib.Path, strict: bool) -> OpPackage:
    start = time.perf_counter()
    manifest = _read_manifest(directory)
    _check_compatible(manifest, directory)
    verified = []
    try:
        for entry in manifest["modules"]:
            verified.append((entry, _open_verified(directory, entry)))
    except BaseException:
        for _, fd in verified:
            os.close(fd)
        raise
    source_only = [entry["kernel"] for entry in manifest["modules"] if entry["device_code"] == "cuda_source"]
    if source_only:
        log.warning("nha_tvm: op package %s was built without the CUDA driver, so %s carry CUDA "
                    "source that TVM compiles now (NVRTC or nvcc); build the package on a host "
                    "with the CUDA driver to ship compiled device code", directory, ", ".join(source_only))
    functions = {}
    for entry, fd in verified:
        library = _load_library(fd)
        key = _lookup_key(entry["kernel"], entry["params"], entry["arch"])
        functions.setdefault(key, []).append((entry.get("bucket"), library[entry["kernel"]]))
    log.info("nha_tvm: loaded %d modules from op package %s in %.1f ms", len(verified), directory,
             1e3 * (time.perf_counter() - start))
    return OpPackage(directory, manifest["arch"], functions, strict)


def _load_library(fd: int):
    """Load the shared library open at ``fd``: the file that was hashed is the one loaded,
    even if its path is replaced in between."""
    load = tvm_ffi.get_global_func("ffi.Module.load_from_file.so")
    library = load(f"/proc/self/fd/{fd}", "so")
    _resident.append((fd, library))
    return library


def _read_manifest(directory: pathlib.Path) -> dict:
    path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise OpPackageError(f"{directory} is not an op package: it has no {MANIFEST_NAME} "
                             f"(write one with nha-build)") from None
    except (OSError, ValueError) as err:
        raise OpPackageError(f"cannot read {path}: {err}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise OpPackageError(f"{path} is malformed: {problem}")
    return manifest


def _manifest_problem(manifest) -> str | None:
    if not isinstance(manifest, dict):
        return "not a JSON object"
    if manifest.get("format") != FORMAT_VERSION:
        return (f"format {manifest.get('format')!r}, this nha_tvm reads format {FORMAT_VERSION}; "
                f"rebuild the package with this nha_tvm's nha-build")
    for field, kind in (("arch", str), ("versions", dict), ("modules", list)):
        if not isinstance(manifest.get(field), kind):
            return f"{field!r} must be a {kind.__name__}"
    for i, entry in enumerate(manifest["modules"]):
        if not isinstance(entry, dict):
            return f"modules[{i}] is not an object"
        name = entry.get("file")
        # a bare file name: the manifest vouches only for files inside the package folder
        if not isinstance(name, str) or pathlib.PurePath(name).name != name or name.startswith("."):
            return f"modules[{i}].file must be a file name inside the package, got {name!r}"
        if entry.get("kernel") not in KERNELS:
            return f"modules[{i}].kernel {entry.get('kernel')!r} is not an NHA kernel"
        if not isinstance(entry.get("params"), dict):
            return f"modules[{i}].params must be an object"
        if not isinstance(entry.get("schedule"), str):
            return f"modules[{i}].schedule must be 'default' or a tuning record digest"
        if entry.get("arch") != manifest["arch"]:
            return f"modules[{i}] is for arch {entry.get('arch')!r}, the package for {manifest['arch']!r}"
        if not isinstance(entry.get("sha256"), str):
            return f"modules[{i}].sha256 must be a hex string"
        if entry.get("device_code") not in DEVICE_CODE_KINDS:
            return f"modules[{i}].device_code must be one of {', '.join(DEVICE_CODE_KINDS)}"
    return None


def _check_compatible(manifest: dict, directory: pathlib.Path) -> None:
    arch, here = manifest["arch"], _local_archs()
    if arch not in here:
        raise OpPackageError(f"op package {directory} is for arch {arch}, but this machine has "
                             f"{', '.join(sorted(here))}; build a package for this machine with nha-build")
    expected = build_environment()
    different = [f"{name} {manifest['versions'].get(name)!r} (here {value!r})"
                 for name, value in expected.items() if manifest["versions"].get(name) != value]
    if different:
        raise OpPackageError(f"op package {directory} was built with other versions: "
                             f"{', '.join(different)}; rebuild it with nha-build using this installation")


def _local_archs() -> set[str]:
    archs = {"cpu"}
    if torch.cuda.is_available():
        archs |= {arch_name(torch.device("cuda", i)) for i in range(torch.cuda.device_count())}
    return archs


def _open_verified(directory: pathlib.Path, entry: dict) -> int:
    """An open descriptor of the entry's file, whose content matches the manifest's sha256."""
    path = directory / entry["file"]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise OpPackageError(f"op package {directory}: {entry['file']} ({entry['kernel']}) is "
                             f"listed in the manifest but cannot be opened: {err.strerror}") from None
    with open(fd, "rb", closefd=False) as f:
        digest = sha256_of(f)
    if digest != entry["sha256"]:
        os.close(fd)
        raise OpPackageError(f"op package {directory}: {entry['file']} ({entry['kernel']}) has "
                             f"sha256 {digest}, the manifest says {entry['sha256']}: the file is "
                             f"damaged or was changed, so nothing was loaded")
    return fd


def _lookup_key(kernel: str, params: dict, arch: str) -> tuple:
    return kernel, json.dumps(params, sort_keys=True), arch


def _bucket_rank(bucket: dict | None, length: int | None, window: int | None) -> float:
    """Tuned buckets by distance to the call; a default-schedule module after all of them."""
    if bucket is None:
        return math.inf
    return bucket_distance(bucket["length"], bucket["window"], length, window)


