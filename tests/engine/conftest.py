import pytest
import torch

from services.gpu_worker.engine.config import EngineConfig
from services.gpu_worker.engine.engine import Engine
from shared.tokenizer import Tokenizer

SMOLLM = "smollm2-135m-instruct"
DEMOS = ("demo-llama", "demo-qwen2", "demo-mistral")
ALL_MODELS = (SMOLLM, *DEMOS)

PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Write a haiku about the sea.",
    "1, 2, 3, 4, 5,",
    "Once upon a time, in a land far away, there lived a princess who loved to read "
    "books about dragons, knights and castles floating in the sky. One morning she",
    "Q: What is the boiling point of water at sea level?\nA:",
    "import numpy as np\n\nx = np.arange(10)\n",
    "Translate to French: I would like a cup of coffee, please. Thank you very much for "
    "your help with the luggage yesterday evening at the station.",
)
NEW_TOKENS = 32


def small_config(**overrides) -> EngineConfig:
    values = dict(weight_arena_bytes=768 << 20, kv_arena_bytes=64 << 20, kv_page_bytes=1 << 20, host_swap_bytes=64 << 20)
    return EngineConfig(**(values | overrides))


@pytest.fixture(scope="session")
def tokenizer(model_store) -> Tokenizer:
    return Tokenizer(model_store.path(SMOLLM))


@pytest.fixture(scope="session")
def prompt_ids(tokenizer) -> list[tuple[int, ...]]:
    return [tuple(tokenizer.encode(p)) for p in PROMPTS]


@pytest.fixture
def engine(model_store):
    e = Engine(small_config(), {n: model_store.path(n) for n in ALL_MODELS})
    yield e
    e.close()


@pytest.fixture(scope="session")
def hf_greedy(model_store, prompt_ids):
    """Hugging Face transformers' greedy generate, each prompt alone: {model: [token ids per prompt]}."""
    from transformers import AutoModelForCausalLM

    cache = {}

    def reference(model: str) -> list[list[int]]:
        if model not in cache:
            hf = AutoModelForCausalLM.from_pretrained(str(model_store.path(model)), dtype=torch.float32)
            outputs = []
            for ids in prompt_ids:
                x = torch.tensor([ids])
                out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS, do_sample=False)
                outputs.append(out[0, len(ids) :].tolist())
            cache[model] = outputs
        return cache[model]

    return reference
