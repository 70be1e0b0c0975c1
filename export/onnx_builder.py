"""A small writer of ONNX nodes: fresh value names, constants, attribute references.

The NHA function bodies are written with it node by node (``onnx.helper`` underneath), which
keeps Loop bodies and attribute references explicit instead of relying on a tracer.
"""

import itertools

import numpy as np
import onnx
from onnx import helper, numpy_helper

FLOAT = onnx.TensorProto.FLOAT
INT64 = onnx.TensorProto.INT64
BOOL = onnx.TensorProto.BOOL


class NodeWriter:
    """Appends nodes to ``self.nodes``; every value it creates gets a name unique in the function.

    A Loop body gets its own writer through :meth:`subgraph_writer`, which shares the name counter:
    a subgraph may read the outer values but must not redefine their names.
    """

    def __init__(self, counter=None):
        self.nodes: list[onnx.NodeProto] = []
        self._counter = itertools.count() if counter is None else counter

    def subgraph_writer(self) -> "NodeWriter":
        return NodeWriter(self._counter)

    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._counter)}"

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attributes):
        """One node; returns its output name, or a tuple of names when ``outputs > 1``."""
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attributes))
        return names[0] if outputs == 1 else tuple(names)

    def op_into(self, op_type: str, inputs, output: str, **attributes) -> str:
        """One node writing the given name (a function output)."""
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output

    def const(self, value, dtype=np.int64) -> str:
        """A Constant node holding ``value`` as a tensor of ``dtype`` (scalars stay rank 0)."""
        tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype), self.fresh("const"))
        return self.op("Constant", value=tensor)

    def attribute(self, name: str, attr_type: int) -> str:
        """A rank-0 Constant holding the enclosing function's attribute ``name``."""
        value_field = {onnx.AttributeProto.INT: "value_int", onnx.AttributeProto.FLOAT: "value_float"}
        out = self.fresh(name)
        node = helper.make_node("Constant", [], [out])
        node.attribute.append(helper.make_attribute_ref(value_field[attr_type], attr_type,
                                                        ref_attr_name=name))
        self.nodes.append(node)
        return out

    # shape helpers used by both NHA bodies

    def dim(self, x: str, axis: int) -> str:
        """x.shape[axis] (axis >= 0) as an int64 tensor of shape [1]."""
        return self.op("Shape", x, start=axis, end=axis + 1)

    def scalar(self, x: str) -> str:
        """A shape-[1] tensor as a rank-0 one (what Range and Loop want)."""
        return self.op("Squeeze", x, self.const([0]))

    def concat(self, *parts: str, axis: int = 0) -> str:
        return self.op("Concat", *parts, axis=axis)

    def unsqueeze(self, x: str, *axes: int) -> str:
        return self.op("Unsqueeze", x, self.const(list(axes)))

    def transpose(self, x: str, *perm: int) -> str:
        return self.op("Transpose", x, perm=list(perm))

    def slice(self, x: str, start: str, end: str, axis: int) -> str:
        """x[start:end] along ``axis``; start and end are int64 tensors of shape [1]."""
        return self.op("Slice", x, start, end, self.const([axis]))
