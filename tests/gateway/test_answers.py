"""answers and responses: what the client reads of several choices, and logprobs in both endpoints' shapes."""

import json
import math

from services.gateway.answers import CollectedAnswer, StreamedAnswer
from services.gateway.choices import plan_choices
from services.gateway.openai_schema import parse_chat, parse_completion
from services.gateway.responses import ResponseHead
from services.gateway.stream import Update
from shared.protocol import GenerateRequest, Sampling, Usage

TEXTS = {1: "a", 2: "b", 3: "c", 4: "dd"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "x"}]}


def token_text(t: int) -> str:
    return TEXTS[t]


def choices(prompts, n, echoes=()):
    base = GenerateRequest("id", "m", (), Sampling(), "s")
    return plan_choices(base, prompts, [8] * len(prompts), n, echoes)


def events_of(answer, index, update):
    return [e.decode() for e in answer.events(index, update)]


def payload(event: str):
    body = event.removeprefix("data: ").strip()
    return body if body == "[DONE]" else json.loads(body)


def test_chat_stream_of_two_choices_interleaves_and_ends_once():
    spec = parse_chat(CHAT | {"n": 2, "stream": True, "stream_options": {"include_usage": True}})
    answer = StreamedAnswer(ResponseHead("id", "chat", 1, "m"), choices([(1,)], 2), spec, token_text)
    sent = events_of(answer, 1, Update(text="b", token_ids=[2]))
    sent += events_of(answer, 0, Update(text="a", token_ids=[1], finish_reason="stop", usage=Usage(4, 1, 0)))
    assert not answer.done
    # Choice 1 found the prompt in the prefix cache; the prompt counts once, as choice 0 found it.
    sent += events_of(answer, 1, Update(text="c", token_ids=[3], finish_reason="length", usage=Usage(4, 2, 3)))
    assert answer.done
    bodies = [payload(e) for e in sent]
    assert bodies[-1] == "[DONE]" and sent.count("data: [DONE]\n\n") == 1
    assert bodies[-2]["choices"] == [] and bodies[-2]["usage"] == {
        "prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7, "prompt_tokens_details": {"cached_tokens": 0}}
    rows = [(b["choices"][0]["index"], b["choices"][0]["delta"], b["choices"][0]["finish_reason"]) for b in bodies[:-2]]
    assert rows == [
        (1, {"role": "assistant", "content": ""}, None), (1, {"content": "b"}, None),
        (0, {"role": "assistant", "content": ""}, None), (0, {"content": "a"}, None), (0, {}, "stop"),
        (1, {"content": "c"}, None), (1, {}, "length"),
    ]


def test_completion_stream_echoes_the_prompt_in_the_first_chunk_of_each_choice():
    spec = parse_completion({"model": "m", "prompt": ["P0", "P1"], "echo": True, "stream": True})
    answer = StreamedAnswer(ResponseHead("id", "completions", 1, "m"), choices([(1,), (2,)], 1, ["P0", "P1"]), spec,
                            token_text)
    texts = []
    for index, update in [(1, Update(text="", token_ids=[2])), (0, Update(text="a", token_ids=[1])),
                          (0, Update(text="b", token_ids=[2], finish_reason="stop", usage=Usage(1, 2))),
                          (1, Update(text="c", finish_reason="stop", usage=Usage(1, 1)))]:
        texts += [(b["choices"][0]["index"], b["choices"][0]["text"]) for b in map(payload, events_of(answer, index, update))
                  if b != "[DONE]" and b["choices"][0]["text"]]
    assert texts == [(1, "P1"), (0, "P0a"), (0, "b"), (1, "c")]


def test_collected_choices_come_sorted_with_usage_counting_each_prompt_once():
    spec = parse_completion({"model": "m", "prompt": ["x", "y"], "n": 2, "echo": True})
    answer = CollectedAnswer(ResponseHead("id", "completions", 1, "m"), choices([(1,), (2, 3)], 2, ["x", "y"]), spec,
                             token_text)
    for index in (3, 1, 0, 2):
        answer.add(index, Update(text=f"t{index}", token_ids=[1]))
        answer.add(index, Update(text="!", finish_reason="stop", usage=Usage(1 + index // 2, 1, index % 2)))
    body = answer.body()
    assert [(c["index"], c["text"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "xt0!", "stop"), (1, "xt1!", "stop"), (2, "yt2!", "stop"), (3, "yt3!", "stop")]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
                             "prompt_tokens_details": {"cached_tokens": 0}}, "each prompt's first choice found none"


TOPS = [((1, -0.1), (2, -2.0), (4, -3.0)), ((2, -0.2), (1, -1.0), (3, -math.inf))]


def test_chat_top_logprobs_list_token_logprob_and_bytes():
    head = ResponseHead("id", "chat", 1, "m")
    got = head.logprobs([1, 2], [-0.1, -0.2], TOPS, token_text, top=2)
    assert got["content"][0] == {"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": [
        {"token": "a", "logprob": -0.1, "bytes": [97]}, {"token": "b", "logprob": -2.0, "bytes": [98]}]}
    assert head.logprobs([1], [-0.1], [None], token_text, top=0)["content"][0]["top_logprobs"] == []


def test_completion_top_logprobs_are_text_to_logprob_per_position_or_null():
    head = ResponseHead("id", "completions", 1, "m")
    got = head.logprobs([1, 2], [-0.1, -0.2], TOPS, token_text, top=3, offset=5)
    assert got["tokens"] == ["a", "b"] and got["token_logprobs"] == [-0.1, -0.2] and got["text_offset"] == [5, 6]
    assert got["top_logprobs"] == [{"a": -0.1, "b": -2.0, "dd": -3.0}, {"b": -0.2, "a": -1.0, "c": -9999.0}]
    json.dumps(got, allow_nan=False)  # -inf became a number JSON can carry
    assert head.logprobs([1], [-0.1], [TOPS[0]], token_text, top=0)["top_logprobs"] is None
