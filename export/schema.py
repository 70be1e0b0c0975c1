"""The ``nha`` ONNX domain: op names, inputs, outputs and attributes (documented in NHA_DOMAIN.md)."""

import onnx
from onnx import helper
from onnx.defs import OpSchema

DOMAIN = "nha"
DOMAIN_VERSION = 1
PREFILL_OP = "NativeHybridAttention"
DECODE_OP = "NativeHybridAttentionDecode"

PREFILL_INPUTS = ("q", "k", "v", "g")
PREFILL_OUTPUTS = ("o",)
CACHE_FIELDS = ("hk", "hv", "ring_k", "ring_v", "ring_g", "ring_s")  # the order of nha_tvm.NHACache
DECODE_INPUTS = ("q", "k", "v", "g", *CACHE_FIELDS, "position")
DECODE_OUTPUTS = ("o", *(f"{name}_out" for name in CACHE_FIELDS))

ATTRIBUTE_TYPES = {
    "window": onnx.AttributeProto.INT,
    "scale": onnx.AttributeProto.FLOAT,
    "rope_theta": onnx.AttributeProto.FLOAT,  # 0 means no RoPE
    "slots": onnx.AttributeProto.INT,
}


def make_function(op_type: str, inputs, outputs, nodes, opset: int) -> onnx.FunctionProto:
    """The FunctionProto of one nha op; its body uses the default domain at ``opset``, the
    version of the model it goes into (ONNX requires the two to agree)."""
    return helper.make_function(DOMAIN, op_type, list(inputs), list(outputs), nodes,
                                [helper.make_opsetid("", opset)], list(ATTRIBUTE_TYPES))


def op_schema(op_type: str, inputs, outputs) -> OpSchema:
    """An OpSchema for the exporter's node recorder. It is handed to onnxscript directly and
    never registered with onnx, so a checker sees the model-local function, as any consumer would."""
    def parameter(name):
        return OpSchema.FormalParameter(name, "I" if name == "position" else "T")
    return OpSchema(
        op_type, DOMAIN, DOMAIN_VERSION,
        inputs=[parameter(name) for name in inputs], outputs=[parameter(name) for name in outputs],
        type_constraints=[("T", ["tensor(float)"], ""), ("I", ["tensor(int32)"], "")],
        attributes=[OpSchema.Attribute(name, OpSchema.AttrType(kind), "")
                    for name, kind in ATTRIBUTE_TYPES.items()],
    )
