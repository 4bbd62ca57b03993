"""Greedy output of our engine equals Hugging Face transformers' generate, alone and batched."""

import pytest

from services.gpu_worker.engine.generate import run_to_completion
from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams

from .conftest import ALL_MODELS, NEW_TOKENS

GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0)


@pytest.mark.parametrize("model", ALL_MODELS)
def test_each_prompt_alone_matches_transformers(engine, prompt_ids, hf_greedy, model):
    expected = hf_greedy(model)
    for i, ids in enumerate(prompt_ids):
        done = run_to_completion(engine, [EngineRequest(f"r{i}", model, ids, GREEDY)])
        assert done[f"r{i}"].token_ids == expected[i], f"prompt {i} diverged"
    assert engine.stats().free_pages == engine.stats().total_pages


@pytest.mark.parametrize("model", ALL_MODELS)
def test_prompts_of_different_lengths_batched_match_transformers(engine, prompt_ids, hf_greedy, model):
    expected = hf_greedy(model)
    lengths = {len(ids) for ids in prompt_ids}
    assert len(lengths) >= 6, "the batch should mix prompt lengths"
    requests = [EngineRequest(f"r{i}", model, ids, GREEDY) for i, ids in enumerate(prompt_ids)]
    done = run_to_completion(engine, requests)
    assert [done[f"r{i}"].token_ids for i in range(len(prompt_ids))] == expected
    assert engine.stats().free_pages == engine.stats().total_pages


def test_requests_joining_a_running_batch_keep_parity(engine, prompt_ids, hf_greedy):
    """Continuous batching: requests arrive while others are mid-decode and leave at different times."""
    model = "demo-llama"
    expected = hf_greedy(model)
    engine.activate(model)
    outputs: dict[str, list[int]] = {}
    pending = list(enumerate(prompt_ids))
    steps = 0
    while pending or engine.has_work():
        if pending and steps % 3 == 0:
            i, ids = pending.pop(0)
            max_tokens = NEW_TOKENS - 4 * (i % 3)  # leave at different steps
            engine.add_request(EngineRequest(f"r{i}", model, ids, SamplingParams(max_tokens=max_tokens, temperature=0)))
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out.token_id)
        steps += 1
    for i in range(len(prompt_ids)):
        n = NEW_TOKENS - 4 * (i % 3)
        assert outputs[f"r{i}"] == expected[i][:n]
