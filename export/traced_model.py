"""The model as torch.export traces it, for a prefill graph or a decode step: the example
arguments, the names of the graph's inputs and outputs, and which axes stay dynamic."""

from contextlib import contextmanager

import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.export import Dim

from nha_tvm.decode_cache import NHACache
from nha_tvm.layer import NativeHybridAttention

from .layer_forwards import DecodeStep, traced_forwards
from .schema import CACHE_FIELDS


class PrefillGraph(nn.Module):
    """inputs [batch, sequence, ...] -> the model's outputs as a flat tuple."""

    def __init__(self, model: nn.Module, layers: dict[NativeHybridAttention, str],
                 model_input_names: list[str]):
        super().__init__()
        self.model, self.layers = model, layers
        self.input_names = model_input_names
        self.axis_names = {(name, axis): label for name in model_input_names
                           for axis, label in ((0, "batch"), (1, "sequence"))}

    def example_args(self, inputs: tuple) -> tuple:
        return inputs

    def dynamic_shapes(self, args: tuple) -> tuple:
        batch, sequence = Dim("batch"), Dim("sequence")
        return tuple({0: batch, 1: sequence} for _ in args)

    def output_names(self, count: int) -> list[str]:
        return _model_output_names(count)

    def tracing(self):
        return traced_forwards(self.layers)

    def forward(self, *inputs):
        return _flat_outputs(self.model(*inputs))


class DecodeGraph(nn.Module):
    """(inputs [batch, 1, ...], position, caches) -> (outputs, position + 1, updated caches)."""

    def __init__(self, model: nn.Module, layers: dict[NativeHybridAttention, str],
                 model_input_names: list[str]):
        super().__init__()
        self.model, self.layers = model, layers
        self.step = DecodeStep(layers)
        self.n_inputs = len(model_input_names)
        self.input_names = model_input_names + ["position"] + _cache_names("past", len(layers))
        self.axis_names = {(name, 0): "batch" for name in self.input_names}

    def example_args(self, inputs: tuple) -> tuple:
        """The inputs, position 0 and every layer's empty cache."""
        batch, device = inputs[0].shape[0], inputs[0].device
        caches = [NHACache.empty(batch, layer.num_kv_heads, layer.head_dim, layer.value_dim,
                                 layer.num_slots, layer.window, device=device)
                  for layer in self.layers]
        position = torch.zeros(batch, dtype=torch.int32, device=device)
        return (*inputs, position, *(getattr(cache, f) for cache in caches for f in CACHE_FIELDS))

    def dynamic_shapes(self, args: tuple) -> tuple:
        batch = Dim("batch")
        return tuple({0: batch} for _ in args)

    def output_names(self, count: int) -> list[str]:
        cache_names = _cache_names("present", len(self.layers))
        return _model_output_names(count - 1 - len(cache_names)) + ["next_position"] + cache_names

    def tracing(self):
        return traced_forwards(self.layers, self.step)

    def forward(self, *args):
        inputs, position, flat_cache = args[:self.n_inputs], args[self.n_inputs], args[self.n_inputs + 1:]
        n = len(CACHE_FIELDS)
        self.step.begin(position, [flat_cache[i:i + n] for i in range(0, len(flat_cache), n)])
        outputs = _flat_outputs(self.model(*inputs))
        return (*outputs, position + 1, *(x for cache in self.step.end() for x in cache))


@contextmanager
def eval_mode(model: nn.Module):
    """Trace inference behaviour (no dropout), then give every module its own mode back."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def _cache_names(prefix: str, n_layers: int) -> list[str]:
    return [f"{prefix}.{i}.{field}" for i in range(n_layers) for field in CACHE_FIELDS]


def _model_output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _flat_outputs(outputs) -> tuple:
    leaves = pytree.tree_leaves(outputs)
    if not all(isinstance(x, torch.Tensor) for x in leaves):
        raise ValueError("the model must return tensors (or tuples, lists, dicts of them); got "
                         + ", ".join(sorted({type(x).__name__ for x in leaves})))
    return tuple(leaves)
