"""CPU (llvm) default schedules."""

from .index_tables import IndexTables
from .parallel_outer import ParallelOuter

RULES = [IndexTables(), ParallelOuter()]
