"""openai_schema: penalties, logit_bias, top logprobs, n, several prompts, echo and best_of; each
bad value a 400 naming the field and what it may be."""

import pytest

from services.gateway.errors import ApiError
from services.gateway.openai_schema import parse_chat, parse_completion

M = {"model": "m"}
P = M | {"prompt": "p"}
CHAT = M | {"messages": [{"role": "user", "content": "hi"}]}


def test_penalties_and_logit_bias_are_read_on_both_endpoints():
    fields = {"presence_penalty": 0.5, "frequency_penalty": -2, "repetition_penalty": 1.2,
              "logit_bias": {"17": 3.5, "5": -100, "0": 100, "0005": 1}}
    for spec in (parse_completion(P | fields), parse_chat(CHAT | fields)):
        assert (spec.presence_penalty, spec.frequency_penalty, spec.repetition_penalty) == (0.5, -2.0, 1.2)
        assert spec.logit_bias == ((0, 100.0), (5, 1.0), (17, 3.5)), "by id; '0005' is id 5 and the later entry wins"


def test_sampling_defaults_are_off():
    spec = parse_chat(CHAT | {"logit_bias": {}, "presence_penalty": None})
    assert (spec.presence_penalty, spec.frequency_penalty, spec.repetition_penalty, spec.logit_bias) == (0, 0, 1, ())
    assert (spec.n, spec.top_logprobs, spec.logprobs) == (1, 0, False)


def test_top_logprobs_of_each_endpoint():
    chat = parse_chat(CHAT | {"logprobs": True, "top_logprobs": 20})
    assert chat.logprobs and chat.top_logprobs == 20
    for k in (0, 3, 5):
        spec = parse_completion(P | {"logprobs": k})
        assert spec.logprobs and spec.top_logprobs == k, "logprobs=k: the chosen token and the k most likely"


def test_n_prompts_echo_and_best_of():
    spec = parse_completion(M | {"prompt": ["a", [1, 2]], "n": 64, "best_of": 64, "echo": True})
    assert (spec.prompts, spec.n, spec.echo) == (("a", (1, 2)), 64, True)
    assert parse_chat(CHAT | {"n": 128}).n == 128
    assert parse_completion(P | {"n": 2.0}).n == 2


BAD = [
    # endpoint, body, param, message (the field and what it may be)
    ("completions", P | {"presence_penalty": 2.5}, "presence_penalty",
     "'presence_penalty' must be between -2 and 2, got 2.5"),
    ("chat", CHAT | {"presence_penalty": "high"}, "presence_penalty", "'presence_penalty' must be a number, got string"),
    ("chat", CHAT | {"frequency_penalty": -2.01}, "frequency_penalty",
     "'frequency_penalty' must be between -2 and 2, got -2.01"),
    ("completions", P | {"repetition_penalty": 0}, "repetition_penalty", "'repetition_penalty' must be in (0, 2], got 0"),
    ("chat", CHAT | {"repetition_penalty": 2.5}, "repetition_penalty", "'repetition_penalty' must be in (0, 2], got 2.5"),
    ("chat", CHAT | {"logit_bias": [[5, 1]]}, "logit_bias", "'logit_bias' must be an object of token ids to numbers"),
    ("chat", CHAT | {"logit_bias": {"cat": 1}}, "logit_bias",
     "'logit_bias' key 'cat' is not a token id: keys must be non-negative decimal integers"),
    ("completions", P | {"logit_bias": {"-3": 1}}, "logit_bias", "key '-3' is not a token id"),
    ("completions", P | {"logit_bias": {"1.5": 1}}, "logit_bias", "key '1.5' is not a token id"),
    ("completions", P | {"logit_bias": {"": 1}}, "logit_bias", "key '' is not a token id"),
    ("chat", CHAT | {"logit_bias": {"5": 100.5}}, "logit_bias", "'logit_bias['5']' must be between -100 and 100, got 100.5"),
    ("chat", CHAT | {"logit_bias": {"5": -1e400}}, "logit_bias", "between -100 and 100, got -inf"),
    ("chat", CHAT | {"logit_bias": {"5": 10**400}}, "logit_bias", "between -100 and 100, got inf"),
    ("chat", CHAT | {"presence_penalty": -(10**400)}, "presence_penalty", "between -2 and 2, got -inf"),
    ("chat", CHAT | {"logit_bias": {"5": "up"}}, "logit_bias", "'logit_bias['5']' must be a number, got string"),
    ("chat", CHAT | {"logit_bias": {"5": True}}, "logit_bias", "must be a number, got boolean"),
    ("completions", P | {"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias",
     "'logit_bias' takes at most 300 entries, got 301"),
    ("chat", CHAT | {"top_logprobs": 2}, "top_logprobs", "'top_logprobs' requires 'logprobs' to be true"),
    ("chat", CHAT | {"top_logprobs": 2, "logprobs": False}, "top_logprobs", "requires 'logprobs' to be true"),
    ("chat", CHAT | {"logprobs": True, "top_logprobs": -1}, "top_logprobs", "'top_logprobs' must be between 0 and 20"),
    ("completions", P | {"logprobs": 6}, "logprobs", "'logprobs' must be between 0 and 5, got 6"),
    ("completions", P | {"logprobs": True}, "logprobs", "'logprobs' must be an integer, got boolean"),
    ("chat", CHAT | {"n": 0}, "n", "'n' must be between 1 and 128, got 0"),
    ("completions", P | {"n": 129}, "n", "'n' must be between 1 and 128, got 129"),
    ("completions", P | {"n": 1.5}, "n", "'n' must be an integer, got number"),
    ("completions", M | {"prompt": ["a"] * 43, "n": 3}, "n", "43 prompts with n=3 make 129 choices; a request makes at most 128"),
    ("completions", M | {"prompt": ["a"] * 129}, "prompt", "129 prompts with n=1 make 129 choices"),
    ("completions", P | {"n": 3, "best_of": 2}, "best_of", "'best_of' is not supported: only best_of equal to n (3)"),
    ("completions", P | {"echo": True, "logprobs": 2}, "echo", "the prompt's logprobs are not returned"),
    ("completions", M | {"prompt": ["a", [1, True]]}, "prompt", "'prompt[1]' must be a string or an array of token ids"),
    ("completions", M | {"prompt": [[0, -1]]}, "prompt", "'prompt[0]' token ids must be non-negative"),
]


@pytest.mark.parametrize("endpoint, body, param, message", BAD)
def test_bad_values_name_the_field(endpoint, body, param, message):
    with pytest.raises(ApiError) as e:
        (parse_chat if endpoint == "chat" else parse_completion)(body)
    assert (e.value.status, e.value.type, e.value.param) == (400, "invalid_request_error", param)
    assert message in e.value.message
