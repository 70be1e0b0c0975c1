"""One ``nha-tune`` run over a record directory: search, measure, prune, describe."""

import datetime
import json
import os
import pathlib

import tvm
import tvm_ffi
from tqdm import tqdm
from tvm.s_tir import meta_schedule as ms

from ..files import write_text_atomically
from ..targets import target_for
from . import records, search
from .records import apply_trace
from .workloads import Workload


class TuningSession:
    def __init__(self, out: pathlib.Path, arch: str, target_kind: str, rpc):
        self.out, self.arch, self.rpc = out, arch, rpc
        # MetaSchedule's CPU cost features need the core count in the target
        self.target = (tvm.target.Target({"kind": "llvm", "num-cores": os.cpu_count() or 1})
                       if target_kind == "llvm" else target_for(arch))
        work = out / "work"
        self.database = ms.database.JSONDatabase(path_workload=str(work / records.WORKLOADS),
                                                 path_tuning_record=str(work / records.RECORDS))
        self.planned: dict[str, Workload] = {}
        self.timings: dict[str, tuple] = {}

    def run(self, workloads: list[Workload], trials: int, resume: bool) -> list[tuple]:
        rows = []
        for workload in workloads:
            func = workload.func()
            mod = tvm.IRModule({"main": func})
            self.planned[str(tvm_ffi.structural_hash(mod))] = workload
            done = len(self.database.get_top_k(self.database.commit_workload(mod), trials))
            todo = trials - done if resume else trials
            if todo > 0:
                with tqdm(total=todo, desc=workload.name, unit="trial") as bar:
                    search.tune(workload, self.target, self.database,
                                str(self.out / "work" / "logs" / workload.name), todo,
                                search.make_runner(workload, self.rpc), bar)
            rows.append(self._compare(workload, func, mod))
        return rows

    def _compare(self, workload: Workload, func, mod) -> tuple:
        """(kernel, bucket, default seconds, tuned seconds), both measured here when local."""
        best = records.read_database(self.out / "work").get(str(tvm_ffi.structural_hash(mod)))
        if best is None:
            return workload.kernel, workload.name.split("-", 1)[1], None, None
        _, record_line, tuned_s = best
        trace = json.dumps(json.loads(record_line)[1][0])
        if self.rpc is None:
            device = tvm.runtime.device("cpu" if self.arch == "cpu" else "cuda", 0)
            from nha_tvm.schedules import default_schedule

            default_s = search.measure(default_schedule(func, self.target).mod, workload, self.target, device)
            tuned_s = search.measure(apply_trace(func, trace).mod, workload, self.target, device)
        else:
            default_s = None  # measured remotely: tuned_s is the search's own measurement
        self.timings[workload.key()] = (default_s, tuned_s)
        return workload.kernel, workload.name.split("-", 1)[1], default_s, tuned_s

    def finish(self, shape: dict, device_name: str, args) -> None:
        """Write the best record per workload and ``metadata.json`` beside them (atomically)."""
        # the search database of this machine, and the pruned one already here (an earlier
        # run, possibly elsewhere, whose work/ did not come along)
        best = records.read_database(self.out / "work")
        for shash, found in records.read_database(self.out).items():
            if shash not in best or found[2] < best[shash][2]:
                best[shash] = found
        meta_path = self.out / records.METADATA
        entries = {}
        if meta_path.exists():
            try:
                old = json.loads(meta_path.read_text())
                if old.get("versions") == records.versions():
                    entries = {e["shash"]: e for e in old["workloads"] if e["shash"] in best}
            except (ValueError, KeyError, TypeError):
                pass
        for shash, workload in self.planned.items():
            if shash in best:
                default_s, tuned_s = self.timings.get(workload.key(), (None, best[shash][2]))
                entries[shash] = {"workload": workload.to_json(), "shash": shash,
                                  "default_ms": None if default_s is None else default_s * 1e3,
                                  "tuned_ms": None if tuned_s is None else tuned_s * 1e3}
        workload_lines, record_lines = [], []
        for index, shash in enumerate(entries):
            workload_line, record_line, _ = best[shash]
            workload_lines.append(workload_line)
            record_lines.append(json.dumps([index, json.loads(record_line)[1]]))
        write_text_atomically(self.out / records.WORKLOADS, "\n".join(workload_lines) + "\n")
        write_text_atomically(self.out / records.RECORDS, "\n".join(record_lines) + "\n")
        meta = {"arch": self.arch, "versions": records.versions(), "device": device_name,
                "date": datetime.date.today().isoformat(), "shape": shape,
                "trials_per_workload": args.trials, "workloads": list(entries.values())}
        write_text_atomically(meta_path, json.dumps(meta, indent=1))
