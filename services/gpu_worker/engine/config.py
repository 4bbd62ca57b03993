"""Model and engine configuration, parsed once from a checkpoint's config.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UnsupportedModelError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class RopeConfig:
    theta: float
    kind: str = "default"
    """One of default, linear, llama3, yarn."""
    factor: float = 1.0
    original_max_position: int = 0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    truncate: bool = True


@dataclass(frozen=True)
class ModelConfig:
    name: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position: int
    rope: RopeConfig
    tie_embeddings: bool
    attention_bias: bool
    sliding_window: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        return 2 * self.num_layers * self.kv_size * dtype.itemsize


def _rope_from_hf(raw: dict, max_position: int) -> RopeConfig:
    # transformers >= 5 writes `rope_parameters` (theta inside); older checkpoints
    # write `rope_theta` beside an optional `rope_scaling`.
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind not in ("default", "linear", "llama3", "yarn"):
        raise UnsupportedModelError(
            f"rope scaling type {kind!r} is not supported "
            "(supported: default, linear, llama3, yarn)"
        )
    return RopeConfig(
        theta=theta,
        kind=kind,
        factor=float(params.get("factor", 1.0)),
        original_max_position=int(
            params.get("original_max_position_embeddings")
            or raw.get("original_max_position_embeddings")
            or max_position
        ),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        beta_fast=float(params.get("beta_fast", 32.0)),
        beta_slow=float(params.get("beta_slow", 1.0)),
        attention_factor=params.get("attention_factor"),
        truncate=bool(params.get("truncate", True)),
    )


def _as_ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def model_config_from_hf(name: str, raw: dict, generation: dict | None = None) -> ModelConfig:
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model {name!r}: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    if raw.get("hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"model {name!r}: activation {raw['hidden_act']!r} is not supported")
    hidden = int(raw["hidden_size"])
    heads = int(raw["num_attention_heads"])
    max_position = int(raw.get("max_position_embeddings", 2048))
    generation = generation or {}
    eos = _as_ids(generation.get("eos_token_id")) or _as_ids(raw.get("eos_token_id"))
    sliding = raw.get("sliding_window") if raw.get("use_sliding_window", True) else None
    return ModelConfig(
        name=name,
        model_type=model_type,
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(raw["intermediate_size"]),
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or hidden // heads),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        max_position=max_position,
        rope=_rope_from_hf(raw, max_position),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=bool(raw.get("attention_bias", model_type == "qwen2")),
        sliding_window=int(sliding) if sliding and model_type != "qwen2" else None,
        eos_token_ids=eos,
        bos_token_id=raw.get("bos_token_id"),
    )


def load_model_config(name: str, path: Path) -> ModelConfig:
    config_path = path / "config.json"
    try:
        raw = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise UnsupportedModelError(f"model {name!r}: {config_path} is missing") from None
    except json.JSONDecodeError as e:
        raise UnsupportedModelError(f"model {name!r}: {config_path} is not valid JSON ({e})") from None
    generation_path = path / "generation_config.json"
    generation = json.loads(generation_path.read_text()) if generation_path.exists() else None
    return model_config_from_hf(name, raw, generation)


@dataclass(frozen=True)
class EngineConfig:
    device: str = "cpu"
    """torch device: "cpu" or "cuda[:N]". The same code runs on both."""
    dtype: torch.dtype | None = None
    """Compute dtype; None means float32 on CPU and bfloat16 on CUDA."""
    weight_arena_bytes: int = 2 << 30
    """Device bytes preallocated for the weights of resident models."""
    kv_arena_bytes: int = 512 << 20
    """Device bytes preallocated for KV pages, shared by all models."""
    kv_page_bytes: int = 1 << 20
    """Bytes of one KV page; a model's block holds kv_page_bytes // kv_bytes_per_token tokens."""
    host_swap_bytes: int = 512 << 20
    """Host bytes for KV pages of paused (swapped-out) sequences."""
    max_batch_tokens: int = 2048
    """Upper bound on prompt tokens computed in one prefill step (longer prompts are chunked)."""
    max_batch_size: int = 64
    """Upper bound on sequences decoded together in one step."""
    prefix_caching: bool = True
    """Keep the KV pages of finished sequences' full blocks and reuse them for later prompts
    of the same model that start with the same tokens (prefix_cache.py)."""
    packed_cpu_matmul: bool = True
    """On CPU, multiply by oneDNN-packed copies of the projection weights, made when a model is
    loaded into host memory (cpu_matmul.py): 1.7-2.5x faster decode, at the cost of a second
    host copy of those weights. Ignored on CUDA and where the torch build cannot pack."""

    def __post_init__(self):
        if self.weight_arena_bytes <= 0 or self.kv_arena_bytes <= 0:
            raise ValueError("weight_arena_bytes and kv_arena_bytes must be positive")
        if self.kv_page_bytes <= 0 or self.kv_page_bytes > self.kv_arena_bytes:
            raise ValueError("kv_page_bytes must be positive and at most kv_arena_bytes")
        if self.max_batch_tokens < 1 or self.max_batch_size < 1:
            raise ValueError("max_batch_tokens and max_batch_size must be at least 1")

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        return torch.float32 if self.device == "cpu" else torch.bfloat16
