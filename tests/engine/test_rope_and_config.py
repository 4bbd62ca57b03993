"""RoPE scaling variants and config parsing agree with Hugging Face transformers."""

import pytest
import torch

from services.gpu_worker.engine.config import model_config_from_hf
from services.gpu_worker.engine.errors import UnsupportedModelError
from services.gpu_worker.engine.rope import inverse_frequencies

BASE = dict(
    model_type="llama", vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
)

VARIANTS = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "llama3": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 2048,
    },
    "yarn": {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0, "original_max_position_embeddings": 2048},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_inverse_frequencies_match_transformers(variant):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    raw = BASE | {"rope_parameters": VARIANTS[variant]}
    hf_config = LlamaConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    if variant == "default":
        head_dim = hf_config.hidden_size // hf_config.num_attention_heads
        theta = VARIANTS[variant]["rope_theta"]
        hf_inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        hf_scale = 1.0
    else:
        hf_inv, hf_scale = ROPE_INIT_FUNCTIONS[variant](hf_config, "cpu")
    cfg = model_config_from_hf("m", raw)
    ours, scale = inverse_frequencies(cfg.rope, cfg.head_dim)
    torch.testing.assert_close(ours, hf_inv.float(), rtol=1e-6, atol=0)
    assert scale == pytest.approx(hf_scale)


def test_old_style_rope_scaling_is_read_too():
    raw = BASE | {"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
    rope = model_config_from_hf("m", raw).rope
    assert (rope.kind, rope.theta, rope.factor) == ("linear", 500000.0, 2.0)


def test_unsupported_architectures_and_rope_types_are_named():
    with pytest.raises(UnsupportedModelError, match="model_type 'gpt2' is not supported"):
        model_config_from_hf("m", BASE | {"model_type": "gpt2"})
    with pytest.raises(UnsupportedModelError, match="rope scaling type 'longrope'"):
        model_config_from_hf("m", BASE | {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}})


def test_qwen2_gets_bias_and_mistral_keeps_its_window():
    qwen = model_config_from_hf("q", BASE | {"model_type": "qwen2", "sliding_window": 4096, "use_sliding_window": False})
    assert qwen.attention_bias and qwen.sliding_window is None
    mistral = model_config_from_hf("m", BASE | {"model_type": "mistral", "sliding_window": 64})
    assert not mistral.attention_bias and mistral.sliding_window == 64
