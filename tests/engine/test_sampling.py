"""Sampling parameters as a user sees them: reproducible seeds, top-k/top-p, stops, logprobs."""

import torch

from services.gpu_worker.engine.generate import run_to_completion
from services.gpu_worker.engine.sampler import sample
from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams, Sequence

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


def test_a_seeded_top_p_request_is_reproducible_among_greedy_top_k_and_penalised_neighbours(engine, prompt_ids):
    params = dict(max_tokens=12, temperature=1.0, top_p=0.9, seed=99, ignore_eos=True)
    alone = _run(engine, prompt_ids[4], **params)
    neighbours = [
        SamplingParams(max_tokens=12, temperature=0),
        SamplingParams(max_tokens=12, temperature=1.3, top_k=5),
        SamplingParams(max_tokens=12, temperature=0.8, frequency_penalty=1.0, logit_bias=((13, 5.0),)),
    ]
    others = [EngineRequest(f"o{i}", MODEL, prompt_ids[i], p) for i, p in enumerate(neighbours)]
    batched = run_to_completion(engine, [*others, EngineRequest("r", MODEL, prompt_ids[4], SamplingParams(**params))])
    assert batched["r"].token_ids == alone.token_ids


def test_a_seeded_request_that_moved_continues_as_it_would_have(engine, prompt_ids):
    params = dict(temperature=1.0, top_p=0.95, seed=11, ignore_eos=True)
    whole = _run(engine, prompt_ids[2], max_tokens=12, **params).token_ids
    request = EngineRequest("m", MODEL, prompt_ids[2] + tuple(whole[:6]), SamplingParams(max_tokens=6, **params), resumed=6)
    assert run_to_completion(engine, [request])["m"].token_ids == whole[6:]


def test_different_seeds_differ(engine, prompt_ids):
    outs = {tuple(_run(engine, prompt_ids[2], max_tokens=16, temperature=1.0, seed=s).token_ids) for s in range(4)}
    assert len(outs) > 1


def test_top_k_1_and_tiny_top_p_are_greedy(engine, prompt_ids):
    greedy = _run(engine, prompt_ids[0], max_tokens=12, temperature=0).token_ids
    assert _run(engine, prompt_ids[0], max_tokens=12, temperature=1.5, top_k=1, seed=7).token_ids == greedy
    assert _run(engine, prompt_ids[0], max_tokens=12, temperature=1.5, top_p=1e-6, seed=7).token_ids == greedy
    # values the API accepts that float32 cannot hold: still the greedy tokens, not junk
    assert _run(engine, prompt_ids[0], max_tokens=12, temperature=1.5, top_p=1e-50, seed=7).token_ids == greedy
    assert _run(engine, prompt_ids[0], max_tokens=12, temperature=1e-39, seed=7).token_ids == greedy


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


def _draws(logits: torch.Tensor, n: int, **params) -> torch.Tensor:
    """n draws from one row of logits: n rows, each its own seeded sequence."""
    seqs = [Sequence(EngineRequest(f"s{i}", MODEL, (1,), SamplingParams(seed=i, **params)), arrival=i) for i in range(n)]
    return torch.tensor(sample(logits.expand(n, -1), seqs).token_ids)


def test_top_k_and_top_p_never_pick_outside_their_set():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]])
    assert set(_draws(logits, 300, temperature=1.0, top_k=2).tolist()) == {0, 1}
    # softmax of these logits: 0.636, 0.234, 0.086, ... -> top_p 0.8 keeps the first two
    assert set(_draws(logits, 300, temperature=1.0, top_p=0.8).tolist()) == {0, 1}
    assert set(_draws(logits, 600, temperature=5.0).tolist()) == set(range(6))


def test_sampled_frequencies_follow_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -30.0]])
    n = 20000
    for params, expected in [
        (dict(temperature=1.0), torch.softmax(logits[0], -1)),
        (dict(temperature=0.5), torch.softmax(logits[0] / 0.5, -1)),
        (dict(temperature=1.0, top_k=3), torch.softmax(logits[0, :3], -1)),
        (dict(temperature=1.0, top_p=0.7), torch.softmax(logits[0, :2], -1)),  # 0.53 + 0.20 reach 0.7
    ]:
        counts = torch.bincount(_draws(logits, n, **params), minlength=6)[: len(expected)].float() / n
        assert torch.allclose(counts, expected, atol=0.015), (params, counts, expected)
        assert counts.sum() > 0.999  # nothing outside the kept set (token 5 is never drawn)


def test_a_nucleus_wider_than_the_first_candidates_is_still_exact():
    torch.manual_seed(0)
    logits = torch.randn(1, 5000) * 0.1  # nearly flat: top_p 0.5 keeps about 2,500 tokens
    probs, order = torch.softmax(logits[0], -1).sort(descending=True)
    nucleus = set(order[: int(((probs.cumsum(-1) - probs) < 0.5).sum())].tolist())
    picks = _draws(logits, 3000, temperature=1.0, top_p=0.5)
    assert set(picks.tolist()) <= nucleus
    assert len(set(picks.tolist())) > 1000  # far past the first 64 candidates
