"""Sampling parameters as a user sees them: reproducible seeds, top-k/top-p, stops, logprobs."""

import torch

from services.gpu_worker.engine.generate import run_to_completion
from services.gpu_worker.engine.sampler import _sample_row
from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams

MODEL = "smollm2-135m-instruct"


def _run(engine, prompt, **params):
    done = run_to_completion(engine, [EngineRequest("r", MODEL, prompt, SamplingParams(**params))])
    return done["r"]


def test_same_seed_same_tokens_even_inside_a_batch(engine, prompt_ids):
    alone = _run(engine, prompt_ids[2], max_tokens=16, temperature=0.9, seed=1234)
    others = [EngineRequest(f"o{i}", MODEL, ids, SamplingParams(max_tokens=16, temperature=1.0)) for i, ids in enumerate(prompt_ids[3:6])]
    batched = run_to_completion(
        engine, [EngineRequest("r", MODEL, prompt_ids[2], SamplingParams(max_tokens=16, temperature=0.9, seed=1234)), *others]
    )
    assert batched["r"].token_ids == alone.token_ids


def test_different_seeds_differ(engine, prompt_ids):
    outs = {tuple(_run(engine, prompt_ids[2], max_tokens=16, temperature=1.0, seed=s).token_ids) for s in range(4)}
    assert len(outs) > 1


def test_top_k_1_and_tiny_top_p_are_greedy(engine, prompt_ids):
    greedy = _run(engine, prompt_ids[0], max_tokens=12, temperature=0).token_ids
    assert _run(engine, prompt_ids[0], max_tokens=12, temperature=1.5, top_k=1, seed=7).token_ids == greedy
    assert _run(engine, prompt_ids[0], max_tokens=12, temperature=1.5, top_p=1e-6, seed=7).token_ids == greedy


def test_max_tokens_gives_exactly_that_many_and_length(engine, prompt_ids):
    out = _run(engine, prompt_ids[1], max_tokens=5, temperature=0, ignore_eos=True)
    assert len(out.token_ids) == 5 and out.finish_reason == "length"


def test_eos_ends_a_chat_answer(engine, tokenizer):
    prompt = tuple(tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}]))
    out = _run(engine, prompt, max_tokens=64, temperature=0)
    assert out.finish_reason == "stop" and out.token_ids[-1] == 2  # <|im_end|>
    assert "Paris" in tokenizer.decode(out.token_ids)


def test_stop_string_ends_generation_at_the_token_that_completes_it(engine, prompt_ids, tokenizer):
    greedy = _run(engine, prompt_ids[0], max_tokens=32, temperature=0).token_ids
    text = tokenizer.decode(greedy)
    assert "." in text
    out = _run(engine, prompt_ids[0], max_tokens=32, temperature=0, stop=(".",))
    assert out.finish_reason == "stop"
    assert out.token_ids == greedy[: len(out.token_ids)]
    assert "." in tokenizer.decode(out.token_ids) and "." not in tokenizer.decode(out.token_ids[:-1])


def test_stop_token_ids(engine, prompt_ids):
    greedy = _run(engine, prompt_ids[1], max_tokens=16, temperature=0, ignore_eos=True).token_ids
    stop_at = greedy[3]
    first = greedy.index(stop_at)
    out = _run(engine, prompt_ids[1], max_tokens=16, temperature=0, stop_token_ids=(stop_at,))
    assert out.token_ids == greedy[: first + 1] and out.finish_reason == "stop"


def test_logprobs_are_the_models_own(engine, prompt_ids, model_store):
    from transformers import AutoModelForCausalLM

    out = _run(engine, prompt_ids[0], max_tokens=3, temperature=0, logprobs=True)
    hf = AutoModelForCausalLM.from_pretrained(str(model_store.path(MODEL)), dtype=torch.float32)
    ids = torch.tensor([list(prompt_ids[0]) + out.token_ids])
    with torch.no_grad():
        logits = hf(ids).logits[0].log_softmax(-1)
    n = len(prompt_ids[0])
    expected = [logits[n - 1 + i, t].item() for i, t in enumerate(out.token_ids)]
    assert len(out.logprobs) == 3
    assert all(abs(a - b) < 1e-3 for a, b in zip(out.logprobs, expected)), (out.logprobs, expected)


def test_top_k_and_top_p_never_pick_outside_their_set():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, -1.0])
    g = torch.Generator().manual_seed(0)
    picks_k = {_sample_row(logits, SamplingParams(temperature=1.0, top_k=2), g) for _ in range(300)}
    assert picks_k == {0, 1}
    # softmax of these logits: 0.636, 0.234, 0.086, ... -> top_p 0.8 keeps the first two
    picks_p = {_sample_row(logits, SamplingParams(temperature=1.0, top_p=0.8), g) for _ in range(300)}
    assert picks_p == {0, 1}
    picks_all = {_sample_row(logits, SamplingParams(temperature=5.0), g) for _ in range(600)}
    assert picks_all == set(range(6))
