"""Several choices, top logprobs, penalties, echo and GET /v1/models/{id}: the official openai client
against a real gateway, with the echo worker answering every choice over real NATS."""

import asyncio
import json

import aiohttp
import openai
import pytest

from tests.gateway.conftest import SMOL, eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEXT = "héllo 🌍 wörld and more"


async def sse_events(gateway, path: str, body: dict) -> list:
    """The stream's events, [DONE] as the string."""
    async with aiohttp.ClientSession() as http, http.post(gateway.base_url + path, json=body) as r:
        assert r.status == 200, await r.text()
        lines = [line[6:] for line in (await r.text()).splitlines() if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


async def test_n_choices_of_a_completion_with_usage_counting_the_prompt_once(client, tokenizer):
    resp = await client.completions.create(model=SMOL, prompt=TEXT, max_tokens=100, n=3, best_of=3)
    n = len(tokenizer.encode(TEXT))
    assert [(c.index, c.text, c.finish_reason) for c in resp.choices] == [(i, TEXT, "stop") for i in range(3)]
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (n, 3 * n, 4 * n)


async def test_n_choices_streamed_in_chat_each_open_and_finished_once(gateway, client, tokenizer):
    body = {"model": SMOL, "messages": [{"role": "user", "content": TEXT}], "max_tokens": 4, "n": 3,
            "stream": True, "stream_options": {"include_usage": True}}
    events = await sse_events(gateway, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    usage = events[-2]
    assert usage["choices"] == [] and [e for e in events[:-2] if not e["choices"]] == [], "one usage chunk, last"
    prompt = len(tokenizer.encode_chat(body["messages"]))
    assert usage["usage"] == {"prompt_tokens": prompt, "completion_tokens": 12, "total_tokens": prompt + 12,
                              "prompt_tokens_details": {"cached_tokens": 0}}
    expected = tokenizer.decode(tokenizer.encode(TEXT, add_special_tokens=False)[:4])
    for i in range(3):
        mine = [e["choices"][0] for e in events[:-2] if e["choices"][0]["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine) == expected
        assert [c["finish_reason"] for c in mine if c["finish_reason"]] == ["length"] == [mine[-1]["finish_reason"]]
    assert len({e["id"] for e in events[:-1]}) == 1


async def test_a_list_of_prompts_times_n(client, tokenizer):
    prompts = ["first prompt", "the second one"]
    resp = await client.completions.create(model=SMOL, prompt=prompts, max_tokens=50, n=2)
    assert [(c.index, c.text) for c in resp.choices] == [(0, prompts[0]), (1, prompts[0]), (2, prompts[1]),
                                                         (3, prompts[1])]
    lengths = [len(tokenizer.encode(p)) for p in prompts]
    assert resp.usage.prompt_tokens == sum(lengths) and resp.usage.completion_tokens == 2 * sum(lengths)
    ids = [tokenizer.encode(p) for p in prompts]
    stream = await client.completions.create(model=SMOL, prompt=ids, max_tokens=50, stream=True)
    texts = {0: "", 1: ""}
    async for chunk in stream:
        texts[chunk.choices[0].index] += chunk.choices[0].text
    assert texts == {0: prompts[0], 1: prompts[1]}


async def test_each_choice_is_its_own_request_with_its_own_seed(client, echo_worker):
    resp = await client.completions.create(model=SMOL, prompt="seeded probe", max_tokens=3, n=3, seed=2**63 - 2)
    sent = sorted(echo_worker.find_all("seeded probe"), key=lambda r: r.id)
    assert [r.id for r in sent] == [f"{resp.id}-{k}" for k in range(3)]
    assert [r.sampling.seed for r in sent] == [2**63 - 2, 2**63 - 1, 0]
    await client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "unseeded probe"}],
                                         max_tokens=3, n=2)
    assert [r.sampling.seed for r in echo_worker.find_all("unseeded probe")] == [None, None]


async def test_penalties_and_logit_bias_reach_the_worker(client, echo_worker):
    await client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "penalty probe"}], max_tokens=3, presence_penalty=0.5,
        frequency_penalty=-1.5, logit_bias={"17": 3.5, "5": -100}, extra_body={"repetition_penalty": 1.25},
    )
    sampling = echo_worker.find("penalty probe").sampling
    assert (sampling.presence_penalty, sampling.frequency_penalty, sampling.repetition_penalty) == (0.5, -1.5, 1.25)
    assert sampling.logit_bias == ((5, -100.0), (17, 3.5))


async def test_one_failing_choice_fails_the_request_and_cancels_the_others(client, echo_worker):
    with pytest.raises(openai.InternalServerError, match="choice 1 failed"):
        await client.completions.create(model=SMOL, prompt="plain [fail-one-late]", max_tokens=50, n=3)
    for k in (0, 2):
        request = await eventually(lambda: next((r for r in echo_worker.find_all("plain [fail-one-late]")
                                                 if r.id.endswith(f"-{k}")), None))
        cancel = await eventually(lambda: echo_worker.cancelled(request.id))
        assert cancel.reason == "another choice failed"
    failed = next(r for r in echo_worker.find_all("plain [fail-one-late]") if r.id.endswith("-1"))
    assert echo_worker.cancelled(failed.id) is None, "the failed choice has ended: nothing to cancel"


async def test_a_choice_failing_before_any_token_is_the_http_status_of_the_stream(client, echo_worker):
    with pytest.raises(openai.InternalServerError, match="choice 1 failed"):
        await client.completions.create(model=SMOL, prompt="early [fail-one-now]", max_tokens=50, n=3, stream=True)
    others = [r for r in echo_worker.find_all("early [fail-one-now]") if not r.id.endswith("-1")]
    assert len(others) == 2
    for request in others:
        await eventually(lambda: echo_worker.cancelled(request.id))


async def test_a_choice_failing_mid_stream_ends_the_stream_with_an_error_event(gateway, client, echo_worker):
    events = await sse_events(gateway, "/v1/completions",
                              {"model": SMOL, "prompt": "streamed [fail-one-late]", "n": 3, "stream": True})
    assert events[-1] == "[DONE]" and events[-2]["error"]["message"] == "choice 1 failed"
    assert {e["choices"][0]["index"] for e in events[:-2]} == {0, 2}, "the others streamed until then"
    for request in [r for r in echo_worker.find_all("streamed [fail-one-late]") if not r.id.endswith("-1")]:
        assert (await eventually(lambda: echo_worker.cancelled(request.id))).reason == "another choice failed"


async def test_client_leaving_cancels_every_choice(gateway, client, echo_worker):
    async with aiohttp.ClientSession() as http:
        body = {"model": SMOL, "prompt": "leave [slow]", "stream": True, "max_tokens": 500, "n": 2}
        resp = await http.post(gateway.base_url + "/v1/completions", json=body)
        request_id = json.loads((await resp.content.readline())[6:])["id"]
        resp.close()
    for k in (0, 1):
        assert (await eventually(lambda: echo_worker.cancelled(f"{request_id}-{k}"))).reason == "client disconnected"
    await eventually(lambda: gateway.core.inflight == 0)


async def test_chat_top_logprobs_streamed_or_not(client, tokenizer):
    messages = [{"role": "user", "content": "one two three four"}]
    ids = tokenizer.encode("one two three four", add_special_tokens=False)

    def expected(t):
        return [(tokenizer.decode([t + i], skip_special_tokens=False), -0.5 - i) for i in range(2)]

    resp = await client.chat.completions.create(model=SMOL, messages=messages, max_tokens=10, logprobs=True,
                                                top_logprobs=2)
    content = resp.choices[0].logprobs.content
    assert [[(a.token, a.logprob) for a in c.top_logprobs] for c in content] == [expected(t) for t in ids]
    assert content[0].top_logprobs[0].bytes == list(content[0].top_logprobs[0].token.encode())
    stream = await client.chat.completions.create(model=SMOL, messages=messages, max_tokens=10, logprobs=True,
                                                  top_logprobs=2, stream=True)
    streamed = [c for chunk in [x async for x in stream] if chunk.choices and chunk.choices[0].logprobs
                for c in chunk.choices[0].logprobs.content]
    assert [[(a.token, a.logprob) for a in c.top_logprobs] for c in streamed] == [expected(t) for t in ids]


async def test_completion_top_logprobs_in_the_legacy_shape(client, tokenizer):
    ids = tokenizer.encode("one two three")
    resp = await client.completions.create(model=SMOL, prompt="one two three", max_tokens=10, logprobs=3)
    tops = resp.choices[0].logprobs.top_logprobs
    assert tops == [{tokenizer.decode([t + i], skip_special_tokens=False): -0.5 - i for i in range(3)} for t in ids]
    plain = await client.completions.create(model=SMOL, prompt="one two three", max_tokens=10, logprobs=0)
    assert plain.choices[0].logprobs.top_logprobs is None and plain.choices[0].logprobs.token_logprobs == [-0.5] * 3
    stream = await client.completions.create(model=SMOL, prompt="one two three", max_tokens=10, logprobs=1,
                                             stream=True)
    streamed = [top for chunk in [x async for x in stream] if chunk.choices and chunk.choices[0].logprobs
                for top in chunk.choices[0].logprobs.top_logprobs]
    assert streamed == [{tokenizer.decode([t]): -0.5} for t in ids]


async def test_echo_puts_the_prompt_before_each_choice(client, tokenizer):
    resp = await client.completions.create(model=SMOL, prompt=TEXT, max_tokens=100, echo=True, n=2)
    assert [c.text for c in resp.choices] == [TEXT + TEXT] * 2
    by_ids = await client.completions.create(model=SMOL, prompt=tokenizer.encode("just ids"), max_tokens=3, echo=True)
    assert by_ids.choices[0].text == "just idsjust ids"
    stream = await client.completions.create(model=SMOL, prompt=["a b c", "d e"], max_tokens=100, echo=True,
                                             stream=True)
    first = {}
    texts = {0: "", 1: ""}
    async for chunk in stream:
        if chunk.choices:
            first.setdefault(chunk.choices[0].index, chunk.choices[0].text)
            texts[chunk.choices[0].index] += chunk.choices[0].text
    assert first[0].startswith("a b c") and first[1].startswith("d e")
    assert texts == {0: "a b ca b c", 1: "d ed e"}


async def test_a_model_by_id(gateway):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.base_url}/v1/models/{SMOL}") as r:
            assert r.status == 200
            assert await r.json() == {"id": SMOL, "object": "model", "created": 0, "owned_by": "tokenpool",
                                      "max_model_len": 8192}
    c = openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key="unused", max_retries=0)
    assert (await c.models.retrieve(SMOL)).id == SMOL
    with pytest.raises(openai.NotFoundError) as e:
        await c.models.retrieve("gpt-9")
    assert e.value.body["code"] == "model_not_found" and SMOL in e.value.body["message"]
    await c.close()


async def test_many_choices_at_once_all_complete(client):
    resp, streamed = await asyncio.gather(
        client.completions.create(model=SMOL, prompt="wide", max_tokens=5, n=128),
        client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "wide chat"}], max_tokens=5,
                                       n=64, stream=True),
    )
    assert [c.index for c in resp.choices] == list(range(128)) and {c.text for c in resp.choices} == {"wide"}
    finishes = [c.choices[0].index async for c in streamed if c.choices and c.choices[0].finish_reason]
    assert sorted(finishes) == list(range(64))
