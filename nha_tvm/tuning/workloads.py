"""Tuning workloads: a kernel at concrete sizes, with the index arrays a real call would pass.

MetaSchedule measures a function on arguments it allocates from the buffer shapes, so a
workload binds every symbolic size (tokens, sequences, chunks, batch, ring) and scalar
(window, scale, RoPE) to a bucket's values, and says which int32 arguments need real contents
(cu_seqlens, chunk tables, positions): random indices would read out of bounds. The trace found
for a workload replays on the symbolic kernel, which then serves every length near the bucket.
"""

import dataclasses
import json

from tvm.sym import Analyzer
from tvm import tirx

from ..kernels import KERNELS

ROPE_THETA = 10000.0
# argument index of cu_seqlens, chunk_offsets and chunk_seq (None: not an argument) in the
# kernels over packed tokens and chunks
CHUNK_TABLES = {
    "slot_state_scan": (4, 5, None),
    "chunk_attend": (7, 8, 9),
    "chunk_gate_cumsum": (1, 2, 3),
    "chunk_state_scan": (1, 2, None),
}


@dataclasses.dataclass(frozen=True)
class Workload:
    kernel: str
    params: tuple  # sorted (name, value) pairs: the kernel's static parameters
    length: int  # tokens of the single prefill sequence, or the decode batch
    window: int

    @classmethod
    def of(cls, kernel: str, params: dict, length: int, window: int) -> "Workload":
        return cls(kernel, tuple(sorted(params.items())), int(length), int(window))

    @property
    def param_dict(self) -> dict:
        return dict(self.params)

    @property
    def is_decode(self) -> bool:
        """A decode step (portable or fused): its length is the batch, not a token count."""
        return self.kernel in ("decode_step", "decode_step_cuda")

    @property
    def name(self) -> str:
        unit = "B" if self.is_decode else "T"
        return f"{self.kernel}-{unit}{self.length}-W{self.window}"

    def to_json(self) -> dict:
        return {"kernel": self.kernel, "params": self.param_dict, "length": self.length,
                "window": self.window}

    @classmethod
    def from_json(cls, obj: dict) -> "Workload":
        return cls.of(obj["kernel"], obj["params"], obj["length"], obj["window"])

    def key(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    def _sizes_and_scalars(self):
        p, T, W = self.param_dict, self.length, self.window
        if self.is_decode:
            return {"B": T, "R": max(W, 1)}, {"window": W, "scale": p["K"] ** -0.5,
                                              "use_rope": 1, "theta": ROPE_THETA, "s_from_g": 0}
        sizes = {"total": T}
        if self.kernel in CHUNK_TABLES:
            sizes.update(N=1, bounds=2, NC=T // p["C"] + 1)
        # write_s: the gate prefix sums also make the default s, as in a call without one
        scalars = {"window": min(W, T), "scale": p.get("K", 1) ** -0.5, "theta": ROPE_THETA,
                   "write_s": 1}
        return sizes, scalars

    def func(self) -> tirx.PrimFunc:
        """The kernel with every size and scalar bound to this workload's values."""
        func = KERNELS[self.kernel](**self.param_dict)
        sizes, scalars = self._sizes_and_scalars()
        buffers = [p for p in func.params if _is_buffer(p)]
        shape_vars = {dim: tirx.IntImm("int32", sizes[dim.name]) for buf in buffers
                      for dim in buf.shape if isinstance(dim, tirx.Var) and dim.name in sizes}
        analyzer = Analyzer()
        for var, value in shape_vars.items():
            analyzer.bind(var, value)
        bindings = {}
        for param in func.params:
            if _is_buffer(param):
                if not all(isinstance(d, (tirx.Var, tirx.IntImm)) for d in param.shape):
                    continue  # a derived shape (N + 1) follows from the buffers that bind N
                shape = [analyzer.simplify(d) for d in param.shape]
                bindings[param] = tirx.decl_buffer(shape, param.dtype, param.name)
            elif param.name in scalars:
                bindings[param] = tirx.const(scalars[param.name], _scalar_dtype(param))
        return func.specialize(bindings).with_attr("global_symbol", "main")

    def int_arguments(self) -> dict[int, list[int]]:
        """Contents of the int32 arguments, by argument index."""
        p, T, W = self.param_dict, self.length, self.window
        if self.kernel == "rope":
            return {1: list(range(T))}
        if self.is_decode:
            return {11: [W + 7] * T}  # steady state: the window is full
        chunks = -(-T // p["C"])
        cu, offsets, chunk_seq = CHUNK_TABLES[self.kernel]
        table = {cu: [0, T], offsets: [0, chunks]}
        if chunk_seq is not None:
            table[chunk_seq] = [0] * chunks + [1] * (T // p["C"] + 1 - chunks)
        return table


def _is_buffer(param) -> bool:
    """PrimFunc parameters are buffers (with a shape) or scalars."""
    return hasattr(param, "shape")


def _scalar_dtype(param) -> str:
    return str(param.ty.dtype)
