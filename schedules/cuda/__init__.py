"""CUDA default schedules (no tuning needed; correct for every shape)."""

from .chunk_attend import ChunkAttend
from .decode_step import DecodeStep
from .index_tables import IndexTables
from .premapped import PreMapped
from .thread_per_element import ThreadPerElement

RULES = [ChunkAttend(), DecodeStep(), IndexTables(), PreMapped(), ThreadPerElement()]
