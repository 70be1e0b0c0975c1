"""Tuning records at build time: the shipped databases, then the user's, one record per kernel.

A record directory (``<root>/<arch>/``) holds a pruned MetaSchedule JSON database
(``database_workload.json``, ``database_tuning_record.json``: the best record per workload) and
``metadata.json`` (versions, device, date, and the workloads it covers). A directory written by
another TVM, tvm-ffi or nha_tvm version, or for another arch, is ignored with a warning; a
corrupt one too: the kernels then use their default schedules.
"""

import dataclasses
import functools
import json
import logging
import math
import os
import pathlib

import tvm
import tvm_ffi

from .. import __version__
from .workloads import Workload

log = logging.getLogger(__name__)

METADATA = "metadata.json"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
FAILED_SECONDS = 1e9


@dataclasses.dataclass(frozen=True)
class Record:
    workload: Workload
    trace: str  # the trace as JSON text
    seconds: float
    source: str  # the directory it came from

    @property
    def digest(self) -> str:
        import hashlib

        return hashlib.sha256(self.trace.encode()).hexdigest()[:12]


def user_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("NHA_TVM_TUNING_DIR", pathlib.Path.home() / ".cache" / "nha_tvm" / "tuning"))


def shipped_dir() -> pathlib.Path:
    import nha_tvm.tuning_logs as shipped

    return pathlib.Path(shipped.__file__).resolve().parent


def versions() -> dict:
    return {"nha_tvm": __version__, "tvm": tvm.__version__, "tvm_ffi": tvm_ffi.__version__}


def read_database(arch_dir: pathlib.Path) -> dict[str, tuple[str, str, float]]:
    """shash -> (workload line, best record line, seconds) of a MetaSchedule JSON database.
    Lines that do not parse (a run killed mid-write) are skipped."""
    # a line that does not parse keeps its place: records refer to workloads by line number
    workloads = [(None if line is None else json.loads(line)[0], line)
                 for line in _lines(arch_dir / WORKLOADS)]
    best: dict[str, tuple[str, str, float]] = {}
    for line in _lines(arch_dir / RECORDS):
        if line is None:
            continue
        index, record = json.loads(line)
        run_secs = [float(x) for x in record[1]]
        if not run_secs or index >= len(workloads) or workloads[index][0] is None:
            continue
        if max(run_secs) >= FAILED_SECONDS:
            continue  # MetaSchedule records a candidate that failed to build or run as 1e10 s
        seconds = sum(run_secs) / len(run_secs)
        shash, workload_line = workloads[index]
        if shash not in best or seconds < best[shash][2]:
            best[shash] = (workload_line, line, seconds)
    return best


def _lines(path: pathlib.Path):
    """The non-empty lines of a JSON-lines file, None for one that does not parse (a run
    killed mid-write)."""
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            json.loads(line)
        except ValueError:
            log.warning("nha_tvm: skipping a truncated line in %s", path)
            yield None
            continue
        yield line


@functools.lru_cache(maxsize=None)
def load_dir(arch_dir: str, arch: str) -> tuple[Record, ...]:
    """The records of one directory, or none (with one warning) when it is unusable."""
    path = pathlib.Path(arch_dir)
    if not (path / METADATA).exists():
        return ()
    try:
        meta = json.loads((path / METADATA).read_text())
        if meta.get("arch") != arch:
            log.warning("nha_tvm: ignoring tuning records in %s: made for arch %s, not %s", path, meta.get("arch"), arch)
            return ()
        if meta.get("versions") != versions():
            log.warning("nha_tvm: ignoring tuning records in %s: made with %s, running %s", path, meta.get("versions"), versions())
            return ()
        database = read_database(path)
        records = []
        for entry in meta["workloads"]:
            if entry["shash"] in database:
                _, record_line, seconds = database[entry["shash"]]
                trace = json.dumps(json.loads(record_line)[1][0])
                records.append(Record(Workload.from_json(entry["workload"]), trace, seconds, str(path)))
        return tuple(records)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        log.warning("nha_tvm: ignoring corrupt tuning records in %s (%s); using default schedules", path, err)
        return ()


def candidates(kernel: str, params: dict, arch: str) -> tuple[Record, ...]:
    """Records of ``kernel`` with exactly these static parameters, shipped ones first."""
    return _candidates(kernel, json.dumps(params, sort_keys=True), arch, str(user_dir()))


@functools.lru_cache(maxsize=None)
def _candidates(kernel: str, params_json: str, arch: str, user_root: str) -> tuple[Record, ...]:
    params = json.loads(params_json)
    found = []
    for root in (shipped_dir(), pathlib.Path(user_root)):
        for record in load_dir(str(root / arch), arch):
            if record.workload.kernel == kernel and record.workload.param_dict == params:
                found.append(record)
    return tuple(found)


def bucket_distance(bucket_length: int, bucket_window: int, length: int | None,
                    window: int | None) -> float:
    """How far a tuned bucket is from a call: log-scale distance in length and in window."""
    d = 0.0 if not length or length < 1 else abs(math.log(bucket_length / length))
    if window is not None:
        d += abs(math.log((bucket_window + 1) / (window + 1)))
    return d


def nearest(records: tuple[Record, ...], length: int | None, window: int | None = None) -> Record | None:
    """The record whose bucket is nearest ``length`` and ``window``; among equals the fastest.
    Without a length, the fastest record."""
    if not records:
        return None
    return min(records, key=lambda r: (bucket_distance(r.workload.length, r.workload.window, length, window),
                                       r.seconds))


def apply_trace(func, trace_json: str):
    """``func`` scheduled by a recorded trace (its sampled decisions replayed)."""
    from tvm.s_tir import Schedule
    from tvm.s_tir.schedule import Trace

    sch = Schedule(func)
    Trace.apply_json_to_schedule(json.loads(trace_json), sch)
    return sch
