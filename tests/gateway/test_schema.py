"""openai_schema: request bodies to GenerationSpec, and every mistake to a 400 naming the field."""

import pytest

from services.gateway.errors import ApiError
from services.gateway.openai_schema import (
    GenerationSpec,
    parse_chat,
    parse_completion,
    parse_json_body,
    resolve_max_tokens,
)

M = {"model": "m"}
USER = {"messages": [{"role": "user", "content": "hi"}]}


def test_completion_defaults_follow_openai():
    spec = parse_completion(M | {"prompt": "hello"})
    assert spec == GenerationSpec("completions", "m", ("hello",), None, 16)
    assert spec.n == 1 and not spec.echo and spec.logit_bias == () and spec.repetition_penalty == 1.0
    assert spec.temperature == 1.0 and spec.top_p == 1.0 and not spec.stream and not spec.logprobs


@pytest.mark.parametrize(
    "prompt, expected",
    [("text", ("text",)), (["text"], ("text",)), ([1, 2, 3], ((1, 2, 3),)), ([[4, 5]], ((4, 5),)),
     (["a", "b"], ("a", "b")), ([[1], [2, 3]], ((1,), (2, 3))), (["a", [7]], ("a", (7,)))],
)
def test_completion_prompt_forms(prompt, expected):
    assert parse_completion(M | {"prompt": prompt}).prompts == expected


def test_completion_options_are_read():
    spec = parse_completion(
        M | {"prompt": "p", "max_tokens": 5, "temperature": 0, "top_p": 0.5, "top_k": 3, "seed": 7, "stop": "\n",
             "stream": True, "stream_options": {"include_usage": True}, "logprobs": 1, "ignore_eos": True, "n": 1,
             "echo": False, "best_of": 1, "presence_penalty": 0, "user": "someone"}
    )
    assert (spec.max_tokens, spec.temperature, spec.top_p, spec.top_k, spec.seed) == (5, 0.0, 0.5, 3, 7)
    assert spec.stop == ("\n",) and spec.stream and spec.include_usage and spec.logprobs and spec.ignore_eos


def test_chat_messages_are_flattened_to_text():
    spec = parse_chat(M | {"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": "really"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ], "max_completion_tokens": 9, "logprobs": True, "top_logprobs": 0})
    assert spec.messages == ({"role": "system", "content": "be brief"}, {"role": "system", "content": "really"},
                             {"role": "user", "content": "ab"})
    assert spec.max_tokens == 9 and spec.logprobs
    assert parse_chat(M | USER).max_tokens is None  # the context window decides


BAD_COMPLETIONS = [
    ({"prompt": "p"}, "model", "you must provide the 'model' parameter"),
    (M, "prompt", "you must provide the 'prompt' parameter"),
    ({"model": 3, "prompt": "p"}, "model", "'model' must be a non-empty string, got integer"),
    (M | {"prompt": 5}, "prompt", "must be a string or an array of token ids, got integer"),
    (M | {"prompt": []}, "prompt", "'prompt' must not be empty"),
    (M | {"prompt": ["a", []]}, "prompt", "'prompt[1]' must not be empty"),
    (M | {"prompt": [[1], [2, "x"]]}, "prompt", "'prompt[1]' must be a string or an array of token ids"),
    (M | {"prompt": [1, -2]}, "prompt", "non-negative"),
    (M | {"prompt": [1, True]}, "prompt", "array of token ids"),
    (M | {"prompt": "p", "max_tokens": 0}, "max_tokens", "'max_tokens' must be >= 1, got 0"),
    (M | {"prompt": "p", "max_tokens": -5}, "max_tokens", "'max_tokens' must be >= 1, got -5"),
    (M | {"prompt": "p", "max_tokens": "10"}, "max_tokens", "'max_tokens' must be an integer, got string"),
    (M | {"prompt": "p", "max_tokens": 2.5}, "max_tokens", "must be an integer, got number"),
    (M | {"prompt": "p", "temperature": 2.5}, "temperature", "'temperature' must be between 0 and 2, got 2.5"),
    (M | {"prompt": "p", "temperature": -1}, "temperature", "between 0 and 2"),
    (M | {"prompt": "p", "temperature": "hot"}, "temperature", "must be a number, got string"),
    (M | {"prompt": "p", "top_p": 0}, "top_p", "'top_p' must be in (0, 1], got 0"),
    (M | {"prompt": "p", "top_p": 1.5}, "top_p", "in (0, 1]"),
    (M | {"prompt": "p", "top_k": -1}, "top_k", "'top_k' must be >= 0"),
    (M | {"prompt": "p", "n": 0}, "n", "'n' must be between 1 and 128, got 0"),
    (M | {"prompt": "p", "seed": -1}, "seed", "'seed' must be between 0 and"),
    (M | {"prompt": "p", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 strings, got 5"),
    (M | {"prompt": "p", "stop": [1]}, "stop", "string or an array of strings"),
    (M | {"prompt": "p", "stop": ""}, "stop", "must not be empty"),
    (M | {"prompt": "p", "stream": "yes"}, "stream", "'stream' must be a boolean, got string"),
    (M | {"prompt": "p", "stream_options": {"include_usage": True}}, "stream_options", "only allowed when 'stream'"),
    (M | {"prompt": "p", "echo": "yes"}, "echo", "'echo' must be a boolean, got string"),
    (M | {"prompt": "p", "logprobs": 6}, "logprobs", "'logprobs' must be between 0 and 5, got 6"),
    (M | {"prompt": "p", "best_of": 3}, "best_of", "only best_of equal to n (1)"),
    (M | {"prompt": "p", "frequency_penalty": 2.5}, "frequency_penalty", "between -2 and 2, got 2.5"),
]


@pytest.mark.parametrize("body, param, message", BAD_COMPLETIONS)
def test_bad_completion_bodies_name_the_field(body, param, message):
    with pytest.raises(ApiError) as e:
        parse_completion(body)
    assert (e.value.status, e.value.type, e.value.param) == (400, "invalid_request_error", param)
    assert message in e.value.message


BAD_CHATS = [
    (M, "messages", "you must provide the 'messages' parameter"),
    (M | {"messages": []}, "messages", "at least one message"),
    (M | {"messages": "hi"}, "messages", "'messages' must be an array, got string"),
    (M | {"messages": ["hi"]}, "messages[0]", "must be an object, got string"),
    (M | {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "got 'robot'"),
    (M | {"messages": [{"content": "x"}]}, "messages[0].role", "must be one of system, developer, user, assistant"),
    (M | {"messages": [{"role": "user"}]}, "messages[0].content", "got null"),
    (M | {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content", "only text content is supported"),
    (M | USER | {"top_logprobs": 21, "logprobs": True}, "top_logprobs", "between 0 and 20, got 21"),
    (M | USER | {"max_completion_tokens": 0}, "max_completion_tokens", ">= 1"),
    (M | USER | {"tools": [{"type": "function"}]}, "tools", "not supported"),
    (M | USER | {"logprobs": 1}, "logprobs", "must be a boolean"),
]


@pytest.mark.parametrize("body, param, message", BAD_CHATS)
def test_bad_chat_bodies_name_the_field(body, param, message):
    with pytest.raises(ApiError) as e:
        parse_chat(body)
    assert (e.value.status, e.value.param) == (400, param)
    assert message in e.value.message


@pytest.mark.parametrize(
    "raw, message",
    [(b"{not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object, got array"), (b'"x"', "got string"),
     (b"\xff\xfe", "not UTF-8"), (b'{"temperature": NaN}', "not valid JSON"), (b"", "not valid JSON")],
)
def test_bodies_that_are_not_json_objects(raw, message):
    with pytest.raises(ApiError) as e:
        parse_json_body(raw)
    assert e.value.status == 400 and message in e.value.message


def test_max_tokens_must_fit_the_context_window():
    spec = parse_completion(M | {"prompt": "p", "max_tokens": 50})
    assert resolve_max_tokens(spec, 10, 64) == 50
    with pytest.raises(ApiError) as e:
        resolve_max_tokens(spec, 20, 64)
    assert e.value.code == "context_length_exceeded" and e.value.param == "max_tokens"
    assert "maximum context length is 64 tokens" in e.value.message and "at most 44" in e.value.message


def test_prompt_must_leave_room_and_chat_fills_the_window():
    chat = parse_chat(M | USER)
    assert resolve_max_tokens(chat, 10, 64) == 54
    with pytest.raises(ApiError) as e:
        resolve_max_tokens(chat, 64, 64)
    assert e.value.param == "messages" and "64 tokens" in e.value.message
    with pytest.raises(ApiError) as e:
        resolve_max_tokens(parse_completion(M | {"prompt": ""}), 0, 64)
    assert "empty after tokenization" in e.value.message
