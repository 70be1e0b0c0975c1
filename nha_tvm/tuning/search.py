"""MetaSchedule search of one workload over the design space of its schedule rule."""

import math
import os
import tempfile

import numpy as np
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.ir.utils import derived_object

from nha_tvm.schedules import rule_for
from nha_tvm.schedules.base import Knobs

from .workloads import Workload


def local_allocator(int_arguments: dict):
    """Argument allocator for LocalRunner: real index arrays, random floats in [-1/2, 0]
    (valid log gates, moderate logits). Self-contained: it is pickled by value into the
    runner's worker process, which then need not import nha_tvm (and torch)."""
    def allocate(device, args_info, alloc_repeat):
        import ml_dtypes
        import numpy as np
        import tvm

        def tensor(index, dtype, shape):
            if index in int_arguments:
                return tvm.runtime.tensor(np.array(int_arguments[index], dtype=dtype), device=device)
            values = np.random.uniform(-0.5, 0.0, size=shape)
            return tvm.runtime.tensor(values.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype), device=device)

        return [[tensor(i, dtype, shape) for i, (_, dtype, shape) in enumerate(args_info)]
                for _ in range(alloc_repeat)]
    return allocate


def rpc_allocator(int_arguments: dict):
    """The same arguments for RPCRunner, created on the remote device."""
    allocate = local_allocator(int_arguments)
    return lambda session, device, args_info, alloc_repeat: allocate(device, args_info, alloc_repeat)


def local_builder():
    """LocalBuilder whose workers compile with ``tvm.driver.build`` alone: TVM's default build
    function first imports every tensor intrinsic (20+ s per worker on a busy 2-core machine,
    and the pool restarts for every batch); NHA kernels tensorize nothing."""
    def build(mod, target, _params):
        from tvm.driver import build as tvm_build

        return tvm_build(mod, target=target)
    return ms.builder.LocalBuilder(f_build=build, timeout_sec=120, max_workers=os.cpu_count() or 1)


EVALUATOR = ms.runner.EvaluatorConfig(number=3, repeat=2, min_repeat_ms=10, enable_cpu_cache_flush=False)


def make_runner(workload: Workload, rpc: tuple[str, int, str] | None):
    ints = workload.int_arguments()
    if rpc is None:
        return ms.runner.LocalRunner(evaluator_config=EVALUATOR, f_alloc_argument=local_allocator(ints))
    host, port, key = rpc
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key, session_timeout_sec=120)
    return ms.runner.RPCRunner(config, evaluator_config=EVALUATOR, f_alloc_argument=rpc_allocator(ints))


def design_space(func, target):
    """The schedule rule of ``func`` with its knobs sampled: the space the search explores."""
    rule = rule_for(func, target)
    postprocs = [ms.postproc.VerifyGPUCode()] if target.kind.name == "cuda" else []
    return ms.space_generator.ScheduleFn(lambda sch: rule.schedule(sch, Knobs(sch)),
                                         sch_rules=[], postprocs=postprocs, mutator_probs={})


@derived_object
class ProgressBar(ms.measure_callback.PyMeasureCallback):
    """Advances a tqdm bar per measured candidate and shows the best latency so far."""

    def __init__(self, bar):
        self.bar = bar
        self.best = math.inf

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        for result in runner_results:
            if result.error_msg is None and result.run_secs:
                self.best = min(self.best, float(np.mean([float(x) for x in result.run_secs])))
        self.bar.update(len(runner_results))
        if self.best < math.inf:
            self.bar.set_postfix_str(f"best {self.best * 1e3:.4f} ms")


def evolutionary_search():
    """Evolutionary search sized for design spaces of tens to hundreds of points (the
    defaults, a population of 512, spend minutes per round looking for unmeasured ones)."""
    return ms.search_strategy.EvolutionarySearch(
        population_size=64, init_measured_ratio=0.2, init_min_unmeasured=8, max_fail_count=8,
        genetic_num_iters=2, genetic_mutate_prob=0.85, genetic_max_fail_count=4, eps_greedy=0.05)


def tune(workload: Workload, target, database, work_dir: str, trials: int, runner, bar) -> None:
    """Run the search for ``trials`` candidates; every measured record lands in ``database``."""
    func = workload.func()
    ms.tune_tir(func, target, work_dir=work_dir, max_trials_global=trials,
                num_trials_per_iter=min(trials, 32), space=design_space(func, target),
                builder=local_builder(), runner=runner, database=database, cost_model="xgb", strategy=evolutionary_search(),
                measure_callbacks=ms.measure_callback.MeasureCallback.create("default") + [ProgressBar(bar)],
                task_scheduler="round-robin", num_tuning_cores=os.cpu_count() or 1)


def measure(sch_mod, workload: Workload, target, device) -> float:
    """Median seconds of one call of a scheduled workload, measured in this process."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.so")
        tvm.compile(sch_mod, target=target).export_library(path)
        module = tvm.runtime.load_module(path)
        args = local_allocator(workload.int_arguments())(
            device, [("TENSOR", p.dtype, [int(d) for d in p.shape]) for p in _buffers(sch_mod)], 1)[0]
        timer = module.time_evaluator("main", device, number=EVALUATOR.number, repeat=EVALUATOR.repeat,
                                      min_repeat_ms=EVALUATOR.min_repeat_ms)
        return float(np.median(timer(*args).results))


def _buffers(mod):
    return [p for p in mod["main"].params if hasattr(p, "shape")]
