"""The exported ModelProto made final: nha functions attached (or inlined), axis names, metadata."""

import json

import onnx
import onnx.inliner

from .decode_function import decode_function
from .prefill_function import prefill_function
from .schema import DECODE_OP, DOMAIN, PREFILL_OP

FUNCTION_BUILDERS = {PREFILL_OP: prefill_function, DECODE_OP: decode_function}


def finish_model(proto: onnx.ModelProto, *, mode: str, axis_names: dict[tuple[str, int], str],
                 layers: list[dict]) -> onnx.ModelProto:
    """Give every nha node its function; mode "standard" then inlines all functions (leaving
    standard ops only). ``axis_names`` maps (graph input, axis) to the name its dynamic
    dimension gets everywhere; ``layers`` goes into the metadata as "nha.layers"."""
    opset = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    used = sorted({node.op_type for node in proto.graph.node if node.domain == DOMAIN})
    proto.functions.extend(FUNCTION_BUILDERS[op_type](opset) for op_type in used)
    if mode == "standard":
        proto = onnx.inliner.inline_local_functions(proto)
        kept = [entry for entry in proto.opset_import if entry.domain != DOMAIN]
        del proto.opset_import[:]
        proto.opset_import.extend(kept)
    _rename_dynamic_dims(proto.graph, axis_names)
    onnx.helper.set_model_props(proto, {"nha.layers": json.dumps(layers)})
    return proto


def _rename_dynamic_dims(graph: onnx.GraphProto, axis_names: dict[tuple[str, int], str]) -> None:
    """The exporter names dynamic dimensions s0, s1, ...; use the names of the axes instead."""
    inputs = {value.name: value for value in graph.input}
    renames = {inputs[name].type.tensor_type.shape.dim[axis].dim_param: new
               for (name, axis), new in axis_names.items()}
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]
