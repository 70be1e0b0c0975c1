"""The rule interface shared by every target's schedules."""

from tvm.s_tir import Schedule


class ScheduleRule:
    """A schedule for some NHA kernels. ``apply`` returns None for kernels it does not handle."""

    kernels: tuple[str, ...] = ()

    def handles(self, func) -> bool:
        return str(func.attrs["nha.kernel"]) in self.kernels

    def apply(self, func, target) -> Schedule | None:
        raise NotImplementedError


def top_blocks(sch: Schedule):
    """The blocks directly under the function's root block, in program order."""
    return sch.get_child_blocks(sch.get_sblock("root"))


def fused_loops(sch: Schedule, block, count: int | None = None):
    """The first ``count`` loops around ``block`` (all when None), fused into one."""
    loops = sch.get_loops(block)
    loops = loops if count is None else loops[:count]
    return sch.fuse(*loops) if len(loops) > 1 else loops[0]


def bind_threads(sch: Schedule, loop, threads: int):
    """Split ``loop`` into blocks of ``threads`` GPU threads."""
    bx, tx = sch.split(loop, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
