"""choices: one GenerateRequest per choice, in OpenAI's index order, seeds per choice, usage of the whole."""

from services.gateway.choices import Choice, choice_seed, plan_choices, sampling_of, total_usage
from services.gateway.openai_schema import parse_chat, parse_completion
from shared.protocol import GenerateRequest, Sampling, Usage

BASE = GenerateRequest("cmpl-abc", "m", (), Sampling(seed=10, temperature=0.7), "tp.tokens.gw.x", "default", 1.0, "t")


def test_each_prompt_gets_n_choices_in_index_order():
    choices = plan_choices(BASE, [(1, 2), (3,)], [5, 9], n=2, echoes=["one two", "three"])
    assert [c.index for c in choices] == [0, 1, 2, 3]
    assert [c.request.id for c in choices] == ["cmpl-abc-0", "cmpl-abc-1", "cmpl-abc-2", "cmpl-abc-3"]
    assert [c.request.prompt_token_ids for c in choices] == [(1, 2), (1, 2), (3,), (3,)]
    assert [c.request.sampling.max_tokens for c in choices] == [5, 5, 9, 9]
    assert [c.request.sampling.seed for c in choices] == [10, 11, 12, 13]
    assert [c.echo for c in choices] == ["one two", "one two", "three", "three"]
    assert [c.counts_prompt for c in choices] == [True, False, True, False]
    assert {c.request.sampling.temperature for c in choices} == {0.7}
    assert {(c.request.tenant, c.request.token_subject) for c in choices} == {("t", "tp.tokens.gw.x")}


def test_a_lone_choice_is_the_request_as_it_was():
    (choice,) = plan_choices(BASE, [(1, 2)], [5], n=1)
    assert choice.request.id == "cmpl-abc" and choice.request.sampling.seed == 10 and choice.echo == ""


def test_seeds_wrap_below_two_to_the_63_and_no_seed_stays_none():
    assert choice_seed(2**63 - 1, 0) == 2**63 - 1 and choice_seed(2**63 - 1, 1) == 0
    assert choice_seed(None, 3) is None
    unseeded = GenerateRequest("c", "m", (), Sampling(), "s")
    assert {c.request.sampling.seed for c in plan_choices(unseeded, [(1,)], [4], n=3)} == {None}


def test_usage_counts_each_prompt_once_and_every_choice_completion():
    choices = plan_choices(BASE, [(1, 2), (3,)], [5, 9], n=2)
    usages = [Usage(2, 5), Usage(2, 4), Usage(1, 9), Usage(1, 1)]
    assert total_usage(zip(choices, usages)) == Usage(3, 19)
    assert total_usage([(Choice(0, BASE), Usage(7, 3))]) == Usage(7, 3)


def test_sampling_carries_every_field_of_the_spec():
    spec = parse_completion({"model": "m", "prompt": "p", "logprobs": 3, "presence_penalty": 1, "frequency_penalty": -1,
                             "repetition_penalty": 1.3, "logit_bias": {"9": -100}, "top_k": 4, "seed": 2,
                             "stop": "x", "ignore_eos": True})
    assert sampling_of(spec) == Sampling(
        max_tokens=Sampling().max_tokens, temperature=1.0, top_p=1.0, top_k=4, seed=2, stop=("x",), ignore_eos=True,
        logprobs=True, top_logprobs=3, presence_penalty=1.0, frequency_penalty=-1.0, repetition_penalty=1.3,
        logit_bias=((9, -100.0),),
    )
    chat = parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert sampling_of(chat).top_logprobs == 0 and not sampling_of(chat).logprobs
