"""``nha-export``: the example NHA language model of a JSON config as an ONNX file."""

import argparse
import sys

import torch

from .example_lm import NHALanguageModel, NHALanguageModelConfig
from .exporter import MODES, OPSETS, PHASES, export_onnx


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nha-export",
        description="Export the NHA language model of nha_tvm.export.example_lm (embedding, "
                    "blocks of NativeHybridAttention and a SwiGLU MLP, LM head) to ONNX. Input: "
                    "input_ids [batch, sequence] (int64); output: the logits, named output. "
                    "Batch and sequence length stay dynamic. The graphs and the nha domain: "
                    "export/NHA_DOMAIN.md.")
    parser.add_argument("config", help="JSON file with the fields of NHALanguageModelConfig "
                                       "(example: export/example_lm.json); missing fields take "
                                       "their defaults")
    parser.add_argument("output", help="path of the .onnx file to write")
    parser.add_argument("--weights", metavar="STATE_DICT",
                        help="a torch state_dict (.pt) of the model; without it the weights are "
                             "random (seeded by --seed), enough to try a runtime")
    parser.add_argument("--mode", choices=MODES, default="standard",
                        help="standard: standard ONNX ops only; nha-domain: one "
                             "nha.NativeHybridAttention node per layer with a function body "
                             "(default: %(default)s)")
    parser.add_argument("--phase", choices=PHASES, default="prefill",
                        help="prefill: input_ids -> logits; decode: one token step with the "
                             "position and per-layer cache in and out (default: %(default)s)")
    parser.add_argument("--opset", type=int, choices=OPSETS, metavar="N",
                        help=f"ONNX opset, {OPSETS.start}..{OPSETS.stop - 1} "
                             "(default: the exporter's)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random weights without --weights (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = NHALanguageModelConfig.from_json(args.config)
        torch.manual_seed(args.seed)
        model = NHALanguageModel(config)
        if args.weights:
            model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
        length = 1 if args.phase == "decode" else 8
        example = torch.randint(0, config.vocab_size, (2, length))
        proto = export_onnx(model, example, args.output, mode=args.mode, phase=args.phase,
                            opset=args.opset)
    except (OSError, ValueError) as error:  # a bad config or weights file, an unsupported model
        parser.error(str(error))
    inputs = ", ".join(value.name for value in proto.graph.input)
    outputs = ", ".join(value.name for value in proto.graph.output)
    print(f"wrote {args.output}: {args.mode} {args.phase} graph, {len(proto.graph.node)} nodes\n"
          f"  inputs:  {inputs}\n  outputs: {outputs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
