"""ONNX export: onnxruntime against the real layer and model, decode steps, the nha domain, errors."""

import pathlib
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
import torch

import nha_tvm
from nha_tvm.export import export_onnx
from nha_tvm.export.cli import main as nha_export_main
from nha_tvm.export.example_lm import NHALanguageModel, NHALanguageModelConfig
from nha_tvm.export.layer_forwards import find_layers
from nha_tvm.export.nha_math import write_strength
from nha_tvm.export.onnx_builder import FLOAT, NodeWriter
from nha_tvm.export.traced_model import DecodeGraph, PrefillGraph

from .conftest import rel_err

TOL = 1e-4
HIDDEN = 64
LENGTHS = (1, 37, 300)  # each with its own batch size, all through one exported file
BATCHES = (3, 2, 1)
CACHE_FIELDS = ("hk", "hv", "ring_k", "ring_v", "ring_g", "ring_s")
EXAMPLE_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "export" / "example_lm.json"


def make_layer(window, rope_theta, num_kv_heads=2):
    layer = nha_tvm.NativeHybridAttention(HIDDEN, num_heads=4, num_kv_heads=num_kv_heads,
                                          num_slots=8, window=window, rope_theta=rope_theta)
    with torch.no_grad():  # gates from nearly shut to nearly open, not all near sigmoid(0)
        layer.f_proj.weight.mul_(8)
    return layer


def make_lm(**overrides):
    config = NHALanguageModelConfig(vocab_size=97, hidden_size=HIDDEN, num_heads=4, num_kv_heads=2,
                                    num_slots=8, mlp_size=96, **overrides)
    model = NHALanguageModel(config)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.f_proj.weight.mul_(8)
    return model


def load_checked(path) -> onnx.ModelProto:
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def node_domains(graph: onnx.GraphProto):
    """The domain of every node, inside Loop bodies too."""
    for node in graph.node:
        yield node.domain
        for attribute in node.attribute:
            for subgraph in (attribute.g, *attribute.graphs):
                yield from node_domains(subgraph)


def dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def run_prefill_lengths(path, model, make_input, input_name):
    sess = session(path)
    for batch, length in zip(BATCHES, LENGTHS):
        x = make_input(batch, length)
        with torch.no_grad():
            expected = model(x)
        got = torch.from_numpy(sess.run(None, {input_name: x.numpy()})[0])
        assert got.shape == expected.shape
        assert rel_err(got, expected) <= TOL, f"T = {length}"


@pytest.mark.parametrize("window,rope_theta,num_kv_heads", [
    pytest.param(0, 10000.0, 2, id="W0-rope-gqa"),
    pytest.param(16, 10000.0, 2, id="W16-rope-gqa"),
    pytest.param(16, None, 2, id="W16-norope-gqa"),
    pytest.param(16, 10000.0, 4, id="W16-rope-mha"),
    pytest.param(300, 10000.0, 2, id="W300-rope-gqa"),
    pytest.param(4096, None, 4, id="W4096-norope-mha"),
])
def test_layer_standard_prefill_any_length(tmp_path, window, rope_theta, num_kv_heads):
    layer = make_layer(window, rope_theta, num_kv_heads)
    path = tmp_path / "layer.onnx"
    export_onnx(layer, torch.randn(2, 5, HIDDEN), path)
    model = load_checked(path)
    assert set(node_domains(model.graph)) <= {""} and not model.functions
    assert [value.name for value in model.graph.input] == ["x"]
    assert dims(model.graph.input[0]) == dims(model.graph.output[0]) == ["batch", "sequence", HIDDEN]
    run_prefill_lengths(path, layer, lambda batch, length: torch.randn(batch, length, HIDDEN), "x")


def test_saturated_gates_stay_finite(tmp_path):
    """Gate logits beyond -103 make log(sigmoid(f)) -inf in float32 (and the gate cumsum NaN);
    the export keeps logsigmoid finite, and decays of exp(-1000s) stay exact zeros."""
    layer = make_layer(4, 10000.0)
    with torch.no_grad():
        layer.f_proj.weight.mul_(60)
    x = torch.randn(2, 100, HIDDEN)
    with torch.no_grad():
        assert layer.f_proj(x).min() < -200
        expected = layer(x)
    path = tmp_path / "layer.onnx"
    export_onnx(layer, x, path)
    assert rel_err(torch.from_numpy(session(path).run(None, {"x": x.numpy()})[0]), expected) <= TOL


def test_write_strength_keeps_its_digits_near_zero():
    """s = 1 - exp(g) as accurate as -expm1(g), down to gates a hair from 1 (g = -1e-9)."""
    w = NodeWriter()
    w.op_into("Identity", [write_strength(w, "g")], "s")
    graph = onnx.helper.make_graph(w.nodes, "write_strength",
                                   [onnx.helper.make_tensor_value_info("g", FLOAT, ["n"])],
                                   [onnx.helper.make_tensor_value_info("s", FLOAT, ["n"])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)])
    g = -torch.logspace(-9, 2, 3001, dtype=torch.float64).float()
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"g": g.numpy()})[0]
    expected = -torch.expm1(g.double())
    assert ((torch.from_numpy(s).double() - expected).abs() / expected).max() <= 1e-6


def test_layer_nha_domain_node_with_function_body(tmp_path):
    layer = make_layer(16, 10000.0)
    path = tmp_path / "layer.onnx"
    export_onnx(layer, torch.randn(2, 5, HIDDEN), path, mode="nha-domain")
    model = load_checked(path)
    (node,) = [node for node in model.graph.node if node.domain == "nha"]
    assert node.op_type == "NativeHybridAttention"
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attributes == {"window": 16, "scale": pytest.approx(16 ** -0.5), "rope_theta": 10000.0,
                          "slots": 8}
    (function,) = model.functions
    assert (function.domain, function.name) == ("nha", "NativeHybridAttention")
    assert list(function.input) == ["q", "k", "v", "g"] and list(function.output) == ["o"]
    assert set(function.attribute) == set(attributes)
    assert {(o.domain, o.version) for o in model.opset_import} >= {("nha", 1)}
    # a runtime without the kernel inlines the body; it is standard ONNX throughout
    assert set(node_domains(onnx.inliner.inline_local_functions(model).graph)) <= {""}
    run_prefill_lengths(path, layer, lambda batch, length: torch.randn(batch, length, HIDDEN), "x")


@pytest.mark.parametrize("mode", ["standard", "nha-domain"])
def test_small_language_model_prefill(tmp_path, mode):
    lm = make_lm(window=[16, 0])
    path = tmp_path / "lm.onnx"
    export_onnx(lm, torch.randint(0, 97, (2, 8)), path, mode=mode)
    model = load_checked(path)
    nha_nodes = [node.op_type for node in model.graph.node if node.domain == "nha"]
    assert nha_nodes == (["NativeHybridAttention"] * 2 if mode == "nha-domain" else [])
    assert dims(model.graph.output[0]) == ["batch", "sequence", 97]
    run_prefill_lengths(path, lm, lambda batch, length: torch.randint(0, 97, (batch, length)),
                        "input_ids")


def zero_feeds(model: onnx.ModelProto, batch: int) -> dict:
    """position 0 and zero caches, shaped from the graph's inputs."""
    feeds = {"position": np.zeros(batch, np.int32)}
    for value in model.graph.input:
        if value.name.startswith("past."):
            shape = [batch if d == "batch" else d for d in dims(value)]
            feeds[value.name] = np.zeros(shape, np.float32)
    return feeds


def next_feeds(model: onnx.ModelProto, outputs: list) -> dict:
    """The step's outputs renamed as the next step's inputs."""
    names = [value.name for value in model.graph.output]
    feeds = {"position": outputs[names.index("next_position")]}
    feeds.update({name.replace("present.", "past.", 1): x for name, x in zip(names, outputs)
                  if name.startswith("present.")})
    return feeds


@pytest.mark.parametrize("mode", ["standard", "nha-domain"])
def test_small_language_model_20_decode_steps_equal_prefill(tmp_path, mode):
    lm = make_lm(window=[8, 0])  # the ring wraps twice in 20 steps; W = 0 is pure slot attention
    path = tmp_path / "lm_decode.onnx"
    export_onnx(lm, torch.randint(0, 97, (2, 1)), path, mode=mode, phase="decode")
    model = load_checked(path)
    names = [value.name for value in model.graph.input]
    assert names == ["input_ids", "position"] + [f"past.{i}.{f}" for i in range(2) for f in CACHE_FIELDS]
    assert len([n for n in model.graph.node if n.domain == "nha"]) == (2 if mode == "nha-domain" else 0)
    ids = torch.randint(0, 97, (3, 20))
    with torch.no_grad():
        expected = lm(ids)
    sess, feeds, steps = session(path), zero_feeds(model, 3), []
    for t in range(20):
        outputs = sess.run(None, {"input_ids": ids[:, t:t + 1].numpy(), **feeds})
        steps.append(outputs[0])
        feeds = next_feeds(model, outputs)
    assert rel_err(torch.from_numpy(np.concatenate(steps, 1)), expected) <= TOL
    assert feeds["position"].tolist() == [20] * 3


@pytest.mark.parametrize("window,rope_theta", [(0, 10000.0), (5, None), (5, 10000.0), (64, 10000.0)])
def test_layer_decode_continues_a_torch_cache(tmp_path, window, rope_theta):
    """The step graph reads and writes nha_tvm.NHACache's layout: it continues a PyTorch prefill
    and ends with the cache PyTorch's own decode steps leave."""
    layer = make_layer(window, rope_theta)
    path = tmp_path / "layer_decode.onnx"
    export_onnx(layer, torch.randn(2, 1, HIDDEN), path, phase="decode")
    model = load_checked(path)
    x = torch.randn(2, 50, HIDDEN)
    with torch.no_grad():
        expected = layer(x)
        _, cache = layer(x[:, :30], use_cache=True)
        feeds = {"position": cache.positions.numpy().copy(),
                 **{f"past.0.{f}": getattr(cache, f).numpy().copy() for f in CACHE_FIELDS}}
        _, cache = layer(x[:, 30:], cache)
    sess, steps = session(path), []
    for t in range(30, 50):
        outputs = sess.run(None, {"x": x[:, t:t + 1].numpy(), **feeds})
        steps.append(outputs[0])
        feeds = next_feeds(model, outputs)
    assert rel_err(torch.from_numpy(np.concatenate(steps, 1)), expected[:, 30:]) <= TOL
    for field in CACHE_FIELDS:
        assert rel_err(torch.from_numpy(feeds[f"past.0.{field}"]), getattr(cache, field)) <= TOL, field
    assert feeds["position"].tolist() == cache.positions.tolist()


def test_traced_forwards_compute_the_model_in_pytorch():
    """The forwards that torch.export traces run eagerly on the kernels: a prefill, and 20 decode
    steps from empty caches, equal the model's own forward (this separates a wrong trace from a
    wrong ONNX body when an export test fails)."""
    lm = make_lm(window=[8, 0])
    ids = torch.randint(0, 97, (2, 20))
    layers = find_layers(lm)
    prefill, decode = PrefillGraph(lm, layers, ["input_ids"]), DecodeGraph(lm, layers, ["input_ids"])
    with torch.no_grad():
        expected = lm(ids)
        with prefill.tracing():
            (logits,) = prefill(ids)
        assert rel_err(logits, expected) <= TOL
        position, *cache = decode.example_args((ids[:, :1],))[1:]
        steps = []
        with decode.tracing():
            for t in range(20):
                logits, position, *cache = decode(ids[:, t:t + 1], position, *cache)
                steps.append(logits)
    assert rel_err(torch.cat(steps, 1), expected) <= TOL


class _OverridesForward(nha_tvm.NativeHybridAttention):
    def forward(self, x):
        return 2 * super().forward(x)


class _CallsLayerTwice(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = make_layer(4, None)

    def forward(self, x):
        return self.attn(self.attn(x))


class _SkipsALayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = make_layer(4, None), make_layer(8, None)

    def forward(self, x):
        return self.used(x)


def _plain_layer():
    return make_layer(4, None)


def _bfloat16_layer():
    return make_layer(4, 10000.0).to(torch.bfloat16)


def _rope_with_odd_head_dim():
    return nha_tvm.NativeHybridAttention(HIDDEN, 4, head_dim=15, num_slots=8)


X = torch.randn(2, 5, HIDDEN)
X_STEP = X[:, :1]


@pytest.mark.parametrize("model,example,options,message", [
    pytest.param(_bfloat16_layer, X, {}, "float32 only", id="bfloat16"),
    pytest.param(lambda: torch.nn.Linear(HIDDEN, HIDDEN), X, {}, "contains no nha_tvm", id="no-nha"),
    pytest.param(_rope_with_odd_head_dim, X, {}, "even key dim", id="rope-odd-head-dim"),
    pytest.param(lambda: _OverridesForward(HIDDEN, 4), X, {}, "overrides forward", id="subclass"),
    pytest.param(_plain_layer, X, {"mode": "custom"}, "mode must be", id="mode"),
    pytest.param(_plain_layer, X, {"phase": "train"}, "phase must be", id="phase"),
    pytest.param(_plain_layer, X, {"opset": 17}, "opset must be", id="opset"),
    pytest.param(_plain_layer, X, {"phase": "decode"}, "takes one token", id="decode-example-length"),
    pytest.param(_plain_layer, torch.randn(HIDDEN), {}, r"\[batch, sequence", id="rank"),
    pytest.param(_CallsLayerTwice, X_STEP, {"phase": "decode"}, "runs twice", id="layer-twice"),
    pytest.param(_SkipsALayer, X_STEP, {"phase": "decode"}, "does not run", id="layer-unused"),
])
def test_unsupported_configurations_raise_before_writing(tmp_path, model, example, options, message):
    path = tmp_path / "model.onnx"
    with pytest.raises(ValueError, match=message):
        export_onnx(model(), example, path, **options)
    assert not path.exists()


def test_nha_export_command(tmp_path):
    assert shutil.which("nha-export"), "pip install -e . installs the nha-export command"
    usage = subprocess.run([sys.executable, "-m", "nha_tvm.export.cli", "--help"], check=True,
                           capture_output=True, text=True).stdout
    for flag in ("--weights", "--mode", "--phase", "--opset", "--seed"):
        assert flag in usage
    # the example config with saved weights, in the nha domain: logits as the model computes them
    config = NHALanguageModelConfig.from_json(EXAMPLE_CONFIG)
    lm = NHALanguageModel(config)
    torch.save(lm.state_dict(), tmp_path / "weights.pt")
    path = tmp_path / "lm.onnx"
    assert nha_export_main([str(EXAMPLE_CONFIG), str(path), "--weights", str(tmp_path / "weights.pt"),
                            "--mode", "nha-domain"]) == 0
    model = load_checked(path)
    assert len([n for n in model.graph.node if n.domain == "nha"]) == config.num_layers
    ids = torch.randint(0, config.vocab_size, (2, 70))
    with torch.no_grad():
        expected = lm(ids)
    assert rel_err(torch.from_numpy(session(path).run(None, {"input_ids": ids.numpy()})[0]), expected) <= TOL
