"""CPU (llvm) default schedules."""

from .parallel_outer import ParallelOuter

RULES = [ParallelOuter()]
