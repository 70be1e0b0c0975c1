"""``export_onnx``: a model with NativeHybridAttention layers as one checked ONNX file."""

import inspect
import os

import onnx
import torch
from torch import nn

from .layer_forwards import find_layers, node_attributes
from .model_proto import finish_model
from .traced_model import DecodeGraph, PrefillGraph, eval_mode
from .traced_ops import TRANSLATIONS

MODES = ("standard", "nha-domain")
PHASES = ("prefill", "decode")
# torchlib writes opset 18 and converts up; onnx's version converter stops at 25 (it has no
# adapter taking RMSNormalization to 26)
OPSETS = range(18, 26)


def export_onnx(model: nn.Module, example_inputs, path: str | os.PathLike, *,
                mode: str = "standard", phase: str = "prefill", opset: int | None = None
                ) -> onnx.ModelProto:
    """Export ``model`` (float32, containing nha_tvm.NativeHybridAttention layers) to ONNX at
    ``path`` and return the ModelProto. The graph and the nha domain: export/NHA_DOMAIN.md.

    ``example_inputs``: a tensor or a tuple of tensors for ``model(*example_inputs)``, each
    [batch, sequence, ...]; their values do not matter. Batch (and in the prefill phase the
    sequence length) stay dynamic, so one file serves any of them.

    ``mode``: "standard" writes standard ONNX ops only; "nha-domain" writes one
    nha.NativeHybridAttention node per layer with a function body.

    ``phase``: "prefill" maps the inputs to the model's outputs, named ``output`` (or
    ``output_0``, ``output_1``, ... for several). "decode" is one step: the example inputs have
    sequence length 1, and the graph takes them with ``position`` [batch] (int32, the position
    of this token) and per layer i the cache ``past.{i}.hk``, ``.hv``, ``.ring_k``, ``.ring_v``,
    ``.ring_g``, ``.ring_s`` (the tensors of nha_tvm.NHACache); it returns the outputs,
    ``next_position`` and ``present.{i}.*``, ready to feed back. Start from zeros and position 0.

    ``opset``: 18 to 25; None takes torch.onnx's default.

    Unsupported models raise ValueError (or TypeError) before anything is written; the file is
    written only after ``onnx.checker.check_model(full_check=True)`` passes.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if opset is not None and opset not in OPSETS:
        raise ValueError(f"opset must be in {OPSETS.start}..{OPSETS.stop - 1} or None, got {opset!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = find_layers(model)
    inputs = _example_inputs(example_inputs, phase)
    graph_class = PrefillGraph if phase == "prefill" else DecodeGraph
    graph = graph_class(model, layers, _input_names(model, len(inputs)))
    args = graph.example_args(inputs)

    with torch.no_grad(), eval_mode(model), graph.tracing():
        program = torch.export.export(graph, args, dynamic_shapes=(graph.dynamic_shapes(args),),
                                      strict=False)
    output_names = graph.output_names(len(program.graph_signature.user_outputs))
    onnx_program = torch.onnx.export(program, (), dynamo=True, input_names=graph.input_names,
                                     output_names=output_names, opset_version=opset,
                                     custom_translation_table=TRANSLATIONS, verbose=False)
    layer_table = [{"name": name, **node_attributes(layer), "num_heads": layer.num_heads,
                    "num_kv_heads": layer.num_kv_heads, "head_dim": layer.head_dim,
                    "value_dim": layer.value_dim} for layer, name in layers.items()]
    proto = finish_model(onnx_program.model_proto, mode=mode, axis_names=graph.axis_names,
                         layers=layer_table)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)
    return proto


def _example_inputs(example_inputs, phase: str) -> tuple[torch.Tensor, ...]:
    """The example inputs with batch (and prefill sequence) at least 2: torch.export fixes a
    dimension whose example size is 1, and these axes must stay dynamic."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if not inputs:
        raise ValueError("example_inputs is empty; give the model's input tensors")
    widened = []
    for i, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"example input {i} must be a tensor [batch, sequence, ...], got {got}")
        if phase == "decode" and x.shape[1] != 1:
            raise ValueError(f"example input {i} has sequence length {x.shape[1]}; a decode step "
                             "takes one token: give inputs [batch, 1, ...]")
        if x.shape[0] != inputs[0].shape[0]:
            raise ValueError(f"example inputs disagree on the batch size: {inputs[0].shape[0]} "
                             f"and {x.shape[0]}")
        repeats = [2 if x.shape[0] == 1 else 1, 2 if x.shape[1] == 1 and phase == "prefill" else 1]
        widened.append(x.repeat(*repeats, *[1] * (x.dim() - 2)))
    return tuple(widened)


def _input_names(model: nn.Module, count: int) -> list[str]:
    """The names of forward's first ``count`` positional parameters (input_0, ... for *args)."""
    parameters = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(parameters) >= count:
        return [p.name for p in parameters[:count]]
    return [f"input_{i}" for i in range(count)]
