"""Penalties, logit bias and top logprobs, as a user of the OpenAI parameters sees them."""

import torch

from services.gpu_worker.engine.generate import run_to_completion
from services.gpu_worker.engine.sampler import sample
from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams, Sequence

MODEL = "smollm2-135m-instruct"


def _run(engine, prompt, resumed=0, **params):
    request = EngineRequest("r", MODEL, prompt, SamplingParams(**params), resumed=resumed)
    return run_to_completion(engine, [request])["r"]


def _seq(prompt, completion, **params) -> Sequence:
    seq = Sequence(EngineRequest("s", MODEL, tuple(prompt), SamplingParams(temperature=0, **params)), arrival=0)
    seq.token_ids += completion
    return seq


def test_penalties_follow_openais_formula():
    logits = torch.tensor([[0.0, 3.0, 2.5, 1.0, -1.0]])
    # token 1 leads by 0.5; it is in the completion twice, token 3 once, token 4 only in the prompt
    seq = lambda **p: _seq([4], [1, 1, 3], **p)  # noqa: E731
    assert sample(logits, [seq()]).token_ids == [1]
    assert sample(logits, [seq(presence_penalty=0.6)]).token_ids == [2]  # 3.0 - 0.6 < 2.5
    assert sample(logits, [seq(presence_penalty=0.4)]).token_ids == [1]
    assert sample(logits, [seq(frequency_penalty=0.3)]).token_ids == [2]  # 3.0 - 2 * 0.3 < 2.5
    assert sample(logits, [seq(frequency_penalty=0.2)]).token_ids == [1]
    assert sample(logits, [seq(frequency_penalty=-2.0)]).token_ids == [1]  # negative: encourages
    assert sample(logits, [seq(repetition_penalty=1.25)]).token_ids == [2]  # 3.0 / 1.25 < 2.5
    # repetition penalty counts the prompt too, and multiplies negative logits
    only_prompt = torch.tensor([[-5.0, -0.5, -0.45, -3.0, -0.4]])
    assert sample(only_prompt, [_seq([4], [], repetition_penalty=1.2)]).token_ids == [2]


def test_logit_bias_is_added_and_logprobs_stay_the_models_own():
    logits = torch.tensor([[0.0, 3.0, 2.5, 1.0]])
    plain = sample(logits, [_seq([0], [], logprobs=True)])
    biased = sample(logits, [_seq([0], [], logprobs=True, logit_bias=((1, -1.0), (3, 0.4)))])
    assert plain.token_ids == [1] and biased.token_ids == [2]
    assert biased.logprobs[0] == torch.log_softmax(logits, -1)[0, 2].item()


def test_top_logprobs_per_row_and_none_when_no_row_asks():
    logits = torch.tensor([[0.0, 3.0, 2.5, 1.0], [4.0, 0.0, 1.0, 2.0]])
    got = sample(logits, [_seq([0], [], logprobs=True, top_logprobs=3), _seq([0], [], logprobs=True)])
    expected = torch.log_softmax(logits, -1)
    assert [t for t, _ in got.top_logprobs[0]] == [1, 2, 3]
    assert [lp for _, lp in got.top_logprobs[0]] == expected[0, [1, 2, 3]].tolist()
    assert got.top_logprobs[1] == ()
    assert sample(logits, [_seq([0], []), _seq([0], [], logprobs=True)]).top_logprobs is None


def test_top_logprobs_match_hugging_face_and_lead_with_the_greedy_token(engine, prompt_ids, model_store):
    from transformers import AutoModelForCausalLM

    out = _run(engine, prompt_ids[0], max_tokens=3, temperature=0, logprobs=True, top_logprobs=5)
    hf = AutoModelForCausalLM.from_pretrained(str(model_store.path(MODEL)), dtype=torch.float32)
    with torch.no_grad():
        logits = hf(torch.tensor([list(prompt_ids[0]) + out.token_ids])).logits[0].log_softmax(-1)
    n = len(prompt_ids[0])
    assert len(out.top_logprobs) == 3
    for i, (token, top) in enumerate(zip(out.token_ids, out.top_logprobs)):
        values, ids = logits[n - 1 + i].topk(5)
        assert [t for t, _ in top] == ids.tolist() and top[0][0] == token
        assert all(abs(a - b) < 1e-3 for (_, a), b in zip(top, values.tolist()))
        assert top[0][1] == out.logprobs[i]


def test_logit_bias_forces_and_forbids_tokens(engine, prompt_ids):
    greedy = _run(engine, prompt_ids[3], max_tokens=6, temperature=0, ignore_eos=True).token_ids
    forbidden = _run(engine, prompt_ids[3], max_tokens=6, temperature=0, ignore_eos=True, logit_bias=((greedy[0], -100.0),))
    assert greedy[0] not in forbidden.token_ids
    forced = _run(engine, prompt_ids[3], max_tokens=6, temperature=1.0, seed=3, ignore_eos=True, logit_bias=((42, 100.0),))
    assert forced.token_ids == [42] * 6


def test_frequency_penalty_breaks_a_loop(engine, prompt_ids):
    looped = _run(engine, prompt_ids[3], max_tokens=24, temperature=0, ignore_eos=True).token_ids
    penalised = _run(engine, prompt_ids[3], max_tokens=24, temperature=0, ignore_eos=True, frequency_penalty=2.0).token_ids
    assert len(set(penalised)) > len(set(looped)), (looped, penalised)


def test_a_moved_request_is_penalised_for_what_it_wrote_before_the_move(engine, prompt_ids):
    params = dict(temperature=0, ignore_eos=True, presence_penalty=0.8, frequency_penalty=0.7, repetition_penalty=1.2)
    whole = _run(engine, prompt_ids[3], max_tokens=16, **params).token_ids
    assert whole != _run(engine, prompt_ids[3], max_tokens=16, temperature=0, ignore_eos=True).token_ids
    resumed_prompt = prompt_ids[3] + tuple(whole[:8])
    assert _run(engine, resumed_prompt, resumed=8, max_tokens=8, **params).token_ids == whole[8:]
