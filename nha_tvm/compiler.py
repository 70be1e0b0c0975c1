"""Build and cache: kernel definition + schedule -> compiled module, on disk and in memory.

A compiled module is keyed by everything that changes its binary: the kernel, its static
parameters (head counts, dims, slots, chunk size, dtypes), the architecture, the versions of
nha_tvm, TVM and tvm-ffi, and a digest of the kernel and schedule sources. Lengths and batch
sizes are symbolic in every kernel, so a new sequence length never recompiles.

Modules live in ``$NHA_TVM_CACHE_DIR`` (default ``~/.cache/nha_tvm``); a file is written under a
temporary name and renamed, so a crash or a concurrent build never leaves a torn module; its
sha256 is recorded beside it and checked before loading, and a module that fails either check
is rebuilt.
"""

import functools
import hashlib
import json
import logging
import os
import pathlib
import threading
import time

import tvm
import tvm_ffi

from . import __version__
from .files import replaced_atomically, sha256_of, write_text_atomically
from .kernels import KERNELS
from .targets import target_for

log = logging.getLogger(__name__)

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
_loaded: dict[str, object] = {}
_lock = threading.Lock()


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("NHA_TVM_CACHE_DIR", pathlib.Path.home() / ".cache" / "nha_tvm"))


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
    """Digest of what shapes a binary besides its key's fields: the kernel definitions, the
    schedules, the targets and the trace replay. An edit to any changes every key."""
    import nha_tvm.schedules as schedules

    h = hashlib.sha256()
    files = [*sorted((_PACKAGE_DIR / "kernels").rglob("*.py")),
             *sorted(pathlib.Path(schedules.__file__).resolve().parent.rglob("*.py")),
             _PACKAGE_DIR / "targets.py", _PACKAGE_DIR / "tuning" / "records.py"]
    for path in files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _target_text(arch: str) -> str:
    return str(target_for(arch))


def cache_key(kernel: str, params: dict, arch: str, schedule: str = "default") -> str:
    """``schedule`` is ``default`` or the digest of the tuning record the module was built from."""
    fields = {"kernel": kernel, "params": params, "arch": arch, "target": _target_text(arch),
              "schedule": schedule, "nha_tvm": __version__,
              "tvm": tvm.__version__, "tvm_ffi": tvm_ffi.__version__, "source": source_digest()}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    return f"{kernel}-{arch}-{digest}"


def build(kernel: str, params: dict, arch: str, record=None):
    """Schedule ``kernel`` for ``arch`` with a tuning record's trace (when given and it applies)
    or the default schedule, and compile it; returns the TVM executable."""
    from nha_tvm.schedules import default_schedule, rule_for

    from .tuning.records import apply_trace

    func = KERNELS[kernel](**params)
    target = target_for(arch)
    sch = None
    if record is not None:
        try:
            sch = apply_trace(func, record.trace)
            log.info("nha_tvm: %s uses the tuned record of bucket %s (%s)", kernel,
                     record.workload.name, record.source)
        except Exception as err:  # noqa: BLE001 - a trace of another bucket may not replay
            log.info("nha_tvm: the tuned record of bucket %s does not apply to %s (%s); "
                     "default schedule", record.workload.name, kernel, err)
    else:
        log.info("nha_tvm: no tuning record for %s %s on %s; default schedule", kernel, params, arch)
    if sch is None:
        sch = default_schedule(func, target)
    with tvm.transform.PassContext(config=rule_for(func, target).pass_config):
        return tvm.compile(sch.mod, target=target)


def get_kernel(kernel: str, arch: str, *, length: int | None = None, window: int | None = None,
               **params):
    """The compiled function of ``kernel`` for ``arch``: from a loaded op package, memory, the
    disk cache, or a build. ``length`` (tokens, or the decode batch) and ``window`` pick the
    nearest tuned bucket when tuning records exist."""
    # the launch path: resolved once per call signature and environment, then a dict lookup;
    # length and window enter the signature only where there are buckets to choose from, so
    # a new sequence length is no new signature
    param_items = tuple(sorted(params.items()))
    package_id, tuning_dir = op_package.active_package_id(), os.environ.get("NHA_TVM_TUNING_DIR")
    if _bucket_count(kernel, arch, param_items, package_id, tuning_dir) < 2:
        length = window = None
    return _resolve(kernel, arch, length, window, param_items, package_id, tuning_dir,
                    os.environ.get("NHA_TVM_CACHE_DIR"))


@functools.lru_cache(maxsize=None)
def _bucket_count(kernel, arch, param_items, package_id, tuning_dir) -> int:
    from .op_package import packaged_choices
    from .tuning import records

    params = dict(param_items)
    return packaged_choices(kernel, params, arch) + len(records.candidates(kernel, params, arch))


@functools.lru_cache(maxsize=4096)
def _resolve(kernel, arch, length, window, param_items, package_id, tuning_dir, cache_root):
    from .op_package import packaged_kernel

    params = dict(param_items)
    packaged = packaged_kernel(kernel, params, arch, length, window)
    if packaged is not None:
        return packaged
    record = tuned_record(kernel, params, arch, length, window)
    schedule = "default" if record is None else record.digest
    key = cache_key(kernel, params, arch, schedule)
    func = _loaded.get(key)
    if func is not None:
        return func
    with _lock:
        if key not in _loaded:
            _loaded[key] = _load_or_build(key, kernel, params, arch, record)
    return _loaded[key]


def tuned_record(kernel: str, params: dict, arch: str, length: int | None, window: int | None):
    """The tuning record of the bucket nearest ``length`` and ``window``, or None (default
    schedule)."""
    from .tuning import records

    return records.nearest(records.candidates(kernel, params, arch), length, window)


def _load_or_build(key: str, kernel: str, params: dict, arch: str, record):
    path = cache_dir() / f"{key}.so"
    if path.exists():
        problem = _verify(path)
        if problem is None:
            try:
                module = tvm.runtime.load_module(str(path))
                log.debug("nha_tvm: cache hit %s", path)
                return module[kernel]
            except Exception as err:  # noqa: BLE001 - a foreign file is rebuilt, not fatal
                problem = str(err)
        log.warning("nha_tvm: cached module %s is unusable (%s); rebuilding", path, problem)
    start = time.perf_counter()
    executable = build(kernel, params, arch, record)
    log.debug("nha_tvm: compiled %s for %s in %.2f s", kernel, arch, time.perf_counter() - start)
    try:
        _store(executable, path)
    except OSError as err:
        log.warning("nha_tvm: cannot write the module cache %s (%s); the module stays in memory "
                    "only (set NHA_TVM_CACHE_DIR to a writable folder)", path.parent, err)
        return executable[kernel]
    return tvm.runtime.load_module(str(path))[kernel]


def _store(executable, path: pathlib.Path) -> None:
    """Export under a temporary name, record its sha256, rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as tmp:
        executable.export_library(tmp)
        digest = sha256_of(tmp)
    write_text_atomically(_digest_path(path), json.dumps({"sha256": digest}))
    log.debug("nha_tvm: cached %s", path)


def _digest_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_suffix(".sha256.json")


def _verify(path: pathlib.Path) -> str | None:
    """Why the cached module must not be loaded, or None. A torn shared library crashes the
    process inside dlopen, so its digest is checked first."""
    try:
        expected = json.loads(_digest_path(path).read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no valid digest beside it"
    return None if sha256_of(path) == expected else "its sha256 differs from the one recorded"


# Imported last: op_package imports this module's names, and get_kernel runs on every launch,
# where an import statement in its body cost 1.5 us of its 5 (CPU).
from . import op_package  # noqa: E402
