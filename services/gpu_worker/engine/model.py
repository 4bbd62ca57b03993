"""The Llama-family decoder (Llama 2/3, Qwen2/2.5, Mistral, SmolLM2) over engine-owned weights.

Tokens of all sequences in a step are packed into one [tokens, hidden] matrix, so every
matmul runs on the whole batch without padding; only attention looks at sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import cpu_matmul
from .attention import AttentionBatch, paged_attention
from .config import ModelConfig
from .layout import layer_prefix
from .rope import apply_rotary, inverse_frequencies


@dataclass(frozen=True)
class LayerWeights:
    input_norm: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


PROJECTIONS = ("qkv", "o", "gate_up", "down")
"""Each layer's weights that multiply activations (the rest are norms and biases)."""


def projection_weights(cfg: ModelConfig, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The matrices the model multiplies by, by slot name; the LM head as "lm_head" even when tied."""
    weights = {p + name: views[p + name] for p in map(layer_prefix, range(cfg.num_layers)) for name in PROJECTIONS}
    weights["lm_head"] = views["embed"] if cfg.tie_embeddings else views["lm_head"]
    return weights


class DecoderModel:
    """Holds views into the model's resident weights; built once when the model lands on the device.

    With `packed` (CPU: `cpu_matmul.pack` of every `projection_weights` entry), the projections
    multiply by those instead of the views."""

    def __init__(
        self,
        cfg: ModelConfig,
        views: dict[str, torch.Tensor],
        device: torch.device,
        packed: dict[str, torch.Tensor] | None = None,
    ):
        self.cfg = cfg
        self.embed = views["embed"]
        self.final_norm = views["final_norm"]
        mats = packed if packed is not None else projection_weights(cfg, views)
        self._linear = cpu_matmul.linear if packed is not None else F.linear
        self.lm_head = mats["lm_head"]
        self.layers = [
            LayerWeights(
                input_norm=views[p + "input_norm"],
                qkv=mats[p + "qkv"],
                qkv_bias=views.get(p + "qkv_bias"),
                o=mats[p + "o"],
                post_norm=views[p + "post_norm"],
                gate_up=mats[p + "gate_up"],
                down=mats[p + "down"],
            )
            for p in (layer_prefix(i) for i in range(cfg.num_layers))
        ]
        inv_freq, self.rope_scale = inverse_frequencies(cfg.rope, cfg.head_dim)
        self.inv_freq = inv_freq.to(device)

    def rotary_tables(self, positions: torch.Tensor, dtype: torch.dtype):
        angles = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((angles, angles), dim=-1)
        return (emb.cos() * self.rope_scale).to(dtype), (emb.sin() * self.rope_scale).to(dtype)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # [tokens]
        positions: torch.Tensor,  # [tokens]
        kv: torch.Tensor,  # [pages, layers, 2, block_tokens, kv_heads, head_dim]
        attn: AttentionBatch,
        logits_index: torch.Tensor,  # rows whose next-token logits are wanted
    ) -> torch.Tensor:
        cfg = self.cfg
        linear = self._linear
        n = input_ids.shape[0]
        x = F.embedding(input_ids, self.embed)
        cos, sin = self.rotary_tables(positions, x.dtype)
        eps = cfg.rms_norm_eps
        for i, w in enumerate(self.layers):
            h = _rms_norm(x, w.input_norm, eps)
            qkv = linear(h, w.qkv, w.qkv_bias)
            q, k, v = qkv.split((cfg.q_size, cfg.kv_size, cfg.kv_size), dim=-1)
            q = apply_rotary(q.view(n, cfg.num_heads, cfg.head_dim), cos, sin)
            k = apply_rotary(k.view(n, cfg.num_kv_heads, cfg.head_dim), cos, sin)
            v = v.view(n, cfg.num_kv_heads, cfg.head_dim)
            x = x + linear(paged_attention(q, k, v, kv[:, i], attn), w.o)
            h = _rms_norm(x, w.post_norm, eps)
            gate, up = linear(h, w.gate_up).chunk(2, dim=-1)
            x = x + linear(F.silu(gate) * up, w.down)
        x = _rms_norm(x[logits_index], self.final_norm, eps)
        return linear(x, self.lm_head).float()


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    return weight * F.rms_norm(x.float(), weight.shape, None, eps).to(x.dtype)
