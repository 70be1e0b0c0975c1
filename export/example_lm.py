"""A small NHA language model: the example model of ``nha-export`` and of the export tests.

Token embedding, pre-norm blocks (NativeHybridAttention, then a SwiGLU MLP, each around a
residual), a final RMSNorm and the LM head. ``NHALanguageModelConfig`` is its JSON config.
"""

import dataclasses
import json
import os

import torch.nn.functional as F
from torch import nn

from nha_tvm.layer import NativeHybridAttention


@dataclasses.dataclass
class NHALanguageModelConfig:
    vocab_size: int = 256
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None  # None: as many as num_heads
    head_dim: int | None = None  # None: hidden_size // num_heads
    num_slots: int = 16
    window: int | list[int] = 16  # one W for all layers, or one per layer
    rope_theta: float | None = 10000.0  # None: no RoPE
    mlp_size: int = 256
    norm_eps: float = 1e-5

    def windows(self) -> list[int]:
        if isinstance(self.window, int):
            return [self.window] * self.num_layers
        if len(self.window) != self.num_layers:
            raise ValueError(f"window lists {len(self.window)} values for {self.num_layers} layers")
        return list(self.window)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "NHALanguageModelConfig":
        with open(path) as file:
            values = json.load(file)
        unknown = set(values) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown config keys {sorted(unknown)}")
        return cls(**values)


class _Block(nn.Module):
    def __init__(self, config: NHALanguageModelConfig, window: int):
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = NativeHybridAttention(
            config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim,
            num_slots=config.num_slots, window=window, rope_theta=config.rope_theta,
            norm_eps=config.norm_eps)
        self.mlp_norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.gate_up = nn.Linear(config.hidden_size, 2 * config.mlp_size, bias=False)
        self.down = nn.Linear(config.mlp_size, config.hidden_size, bias=False)

    def forward(self, x):
        x = x + self.attn(self.attn_norm(x))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class NHALanguageModel(nn.Module):
    """input_ids [B, T] -> logits [B, T, vocab_size]."""

    def __init__(self, config: NHALanguageModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(_Block(config, window) for window in config.windows())
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))
