"""The Llama-family decoder (Llama 2/3, Qwen2/2.5, Mistral, SmolLM2) over engine-owned weights.

Tokens of all sequences in a step are packed into one [tokens, hidden] matrix, so every
matmul runs on the whole batch without padding; only attention looks at sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


class DecoderModel:
    """Holds views into the model's resident weights; built once when the model lands on the device."""

    def __init__(self, cfg: ModelConfig, views: dict[str, torch.Tensor], device: torch.device):
        self.cfg = cfg
        self.embed = views["embed"]
        self.final_norm = views["final_norm"]
        self.lm_head = views["embed"] if cfg.tie_embeddings else views["lm_head"]
        self.layers = [
            LayerWeights(
                input_norm=views[p + "input_norm"],
                qkv=views[p + "qkv"],
                qkv_bias=views.get(p + "qkv_bias"),
                o=views[p + "o"],
                post_norm=views[p + "post_norm"],
                gate_up=views[p + "gate_up"],
                down=views[p + "down"],
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
        n = input_ids.shape[0]
        x = F.embedding(input_ids, self.embed)
        cos, sin = self.rotary_tables(positions, x.dtype)
        eps = cfg.rms_norm_eps
        for i, w in enumerate(self.layers):
            h = _rms_norm(x, w.input_norm, eps)
            qkv = F.linear(h, w.qkv, w.qkv_bias)
            q, k, v = qkv.split((cfg.q_size, cfg.kv_size, cfg.kv_size), dim=-1)
            q = apply_rotary(q.view(n, cfg.num_heads, cfg.head_dim), cos, sin)
            k = apply_rotary(k.view(n, cfg.num_kv_heads, cfg.head_dim), cos, sin)
            v = v.view(n, cfg.num_kv_heads, cfg.head_dim)
            x = x + F.linear(paged_attention(q, k, v, kv[:, i], attn), w.o)
            h = _rms_norm(x, w.post_norm, eps)
            gate, up = F.linear(h, w.gate_up).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w.down)
        x = _rms_norm(x[logits_index], self.final_norm, eps)
        return F.linear(x, self.lm_head).float()


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    return weight * F.rms_norm(x.float(), weight.shape, None, eps).to(x.dtype)
