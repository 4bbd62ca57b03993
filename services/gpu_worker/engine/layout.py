"""Where each weight of a model lives inside one flat buffer.

A model's weights are one contiguous buffer, in host memory and (when resident) in the
device arena, so that switching a model in is a single bulk copy. q/k/v and gate/up
projections are packed into one matrix each so a layer runs two fewer matmuls.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch

from .config import ModelConfig

ALIGN_ELEMENTS = 64


@dataclass(frozen=True)
class TensorSlot:
    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return prod(self.shape)


@dataclass(frozen=True)
class WeightLayout:
    slots: dict[str, TensorSlot]
    numel: int

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            name: flat[s.offset : s.offset + s.numel].view(s.shape) for name, s in self.slots.items()
        }


def layer_prefix(i: int) -> str:
    return f"layers.{i}."


def weight_layout(cfg: ModelConfig) -> WeightLayout:
    shapes: list[tuple[str, tuple[int, ...]]] = [("embed", (cfg.vocab_size, cfg.hidden_size))]
    qkv_rows = cfg.q_size + 2 * cfg.kv_size
    for i in range(cfg.num_layers):
        p = layer_prefix(i)
        shapes += [
            (p + "input_norm", (cfg.hidden_size,)),
            (p + "qkv", (qkv_rows, cfg.hidden_size)),
        ]
        if cfg.attention_bias:
            shapes.append((p + "qkv_bias", (qkv_rows,)))
        shapes += [
            (p + "o", (cfg.hidden_size, cfg.q_size)),
            (p + "post_norm", (cfg.hidden_size,)),
            (p + "gate_up", (2 * cfg.intermediate_size, cfg.hidden_size)),
            (p + "down", (cfg.hidden_size, cfg.intermediate_size)),
        ]
    shapes.append(("final_norm", (cfg.hidden_size,)))
    if not cfg.tie_embeddings:
        shapes.append(("lm_head", (cfg.vocab_size, cfg.hidden_size)))

    slots, offset = {}, 0
    for name, shape in shapes:
        slots[name] = TensorSlot(name, shape, offset)
        offset += -(-prod(shape) // ALIGN_ELEMENTS) * ALIGN_ELEMENTS
    return WeightLayout(slots, offset)


def hf_tensor_targets(cfg: ModelConfig) -> dict[str, tuple[str, int, int]]:
    """Maps each Hugging Face tensor name to (our slot, first row, last row + 1)."""
    q, kv, inter = cfg.q_size, cfg.kv_size, cfg.intermediate_size
    targets = {
        "model.embed_tokens.weight": ("embed", 0, cfg.vocab_size),
        "model.norm.weight": ("final_norm", 0, cfg.hidden_size),
    }
    if not cfg.tie_embeddings:
        targets["lm_head.weight"] = ("lm_head", 0, cfg.vocab_size)
    for i in range(cfg.num_layers):
        hf, p = f"model.layers.{i}.", layer_prefix(i)
        targets |= {
            hf + "input_layernorm.weight": (p + "input_norm", 0, cfg.hidden_size),
            hf + "post_attention_layernorm.weight": (p + "post_norm", 0, cfg.hidden_size),
            hf + "self_attn.q_proj.weight": (p + "qkv", 0, q),
            hf + "self_attn.k_proj.weight": (p + "qkv", q, q + kv),
            hf + "self_attn.v_proj.weight": (p + "qkv", q + kv, q + 2 * kv),
            hf + "self_attn.o_proj.weight": (p + "o", 0, cfg.hidden_size),
            hf + "mlp.gate_proj.weight": (p + "gate_up", 0, inter),
            hf + "mlp.up_proj.weight": (p + "gate_up", inter, 2 * inter),
            hf + "mlp.down_proj.weight": (p + "down", 0, cfg.hidden_size),
        }
        if cfg.attention_bias:
            targets |= {
                hf + "self_attn.q_proj.bias": (p + "qkv_bias", 0, q),
                hf + "self_attn.k_proj.bias": (p + "qkv_bias", q, q + kv),
                hf + "self_attn.v_proj.bias": (p + "qkv_bias", q + kv, q + 2 * kv),
            }
    return targets
