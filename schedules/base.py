"""The rule interface shared by every target's schedules, and the knobs the tuner searches.

A rule writes one schedule function. Its decisions (threads per block, unroll depth, ...) go
through ``Knobs``: for the default schedule each knob takes its default value; under
MetaSchedule each knob is a ``sample_categorical`` instruction, so the XGBoost-guided search
explores exactly the variants the rule allows, and a tuning record is a trace of those choices.
"""

from tvm.s_tir import Schedule


class Knobs:
    """Where a schedule's decisions come from: the defaults, or samples for the search."""

    def __init__(self, sch: Schedule | None = None):
        self.sch = sch  # None: default decisions

    def choose(self, candidates, default):
        """One of ``candidates``: ``default`` for the default schedule, else a sampled value."""
        candidates = [int(c) for c in candidates]
        if self.sch is None:
            return default
        return self.sch.sample_categorical(candidates, [1.0 / len(candidates)] * len(candidates))


class ScheduleRule:
    """A schedule for some NHA kernels. ``apply`` returns None for kernels it does not handle."""

    kernels: tuple[str, ...] = ()
    tunable = True  # False: the rule has no knobs, so there is nothing to search
    pass_config: dict = {}  # TVM PassContext options its kernels are compiled with

    def handles(self, func) -> bool:
        return str(func.attrs["nha.kernel"]) in self.kernels

    def apply(self, func, target) -> Schedule | None:
        """The default schedule of ``func``, or None when this rule does not handle it."""
        if not self.handles(func):
            return None
        sch = Schedule(func)
        self.schedule(sch, Knobs())
        return sch

    def schedule(self, sch: Schedule, knobs: Knobs) -> None:
        raise NotImplementedError


def top_blocks(sch: Schedule):
    """The blocks directly under the function's root block, in program order."""
    return sch.get_child_blocks(sch.get_sblock("root"))


def fused_loops(sch: Schedule, block, count: int | None = None):
    """The first ``count`` loops around ``block`` (all when None), fused into one."""
    loops = sch.get_loops(block)
    loops = loops if count is None else loops[:count]
    return sch.fuse(*loops) if len(loops) > 1 else loops[0]


def bind_threads(sch: Schedule, loop, threads):
    """Split ``loop`` into blocks of ``threads`` GPU threads; returns the thread loop."""
    bx, tx = sch.split(loop, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    return tx


def unroll(sch: Schedule, loop, max_step) -> None:
    """Unroll the constant-extent loops under ``loop`` up to ``max_step`` iterations."""
    sch.annotate(loop, "pragma_auto_unroll_max_step", max_step)
    sch.annotate(loop, "pragma_unroll_explicit", 1)
