"""The official openai client against a real gateway, with an echo worker answering over real NATS.

The echo worker sends its chunks out of order, duplicated and overlapping; the client must
still see exactly the text and usage it would expect.
"""

import asyncio
import json

import aiohttp
import openai
import pytest

from tests.gateway.conftest import SMOL, eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEXT = "héllo 🌍 wörld, 日本語 and more words to echo"


async def test_completion_echoes_the_prompt_with_usage(client, tokenizer):
    resp = await client.completions.create(model=SMOL, prompt=TEXT, max_tokens=100)
    n = len(tokenizer.encode(TEXT))
    assert resp.choices[0].text == TEXT
    assert resp.choices[0].finish_reason == "stop"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (n, n, 2 * n)
    assert resp.id.startswith("cmpl-") and len(resp.id) == 5 + 32 and resp.model == SMOL
    assert resp.object == "text_completion" and resp.created > 0


async def test_max_tokens_cuts_the_completion(client, tokenizer):
    ids = tokenizer.encode(TEXT)
    resp = await client.completions.create(model=SMOL, prompt=TEXT, max_tokens=5)
    assert resp.choices[0].text == tokenizer.decode(ids[:5])
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 5


async def test_token_id_prompt(client, tokenizer):
    resp = await client.completions.create(model=SMOL, prompt=tokenizer.encode("just ids"), max_tokens=10)
    assert resp.choices[0].text == "just ids"


async def test_a_batch_of_chunks_on_the_gateways_inbox_reaches_each_request(client, gateway):
    """Workers send one TokenBatch per flush to the gateway's inbox; bytes that are not tokens
    and chunks of requests the gateway does not know are dropped, the rest streams as usual."""
    before = gateway.core.upstream.unreadable
    prompt = "[batched] " + TEXT
    batched, plain = await asyncio.gather(
        client.completions.create(model=SMOL, prompt=prompt, max_tokens=100, stream=True),
        client.completions.create(model=SMOL, prompt=TEXT, max_tokens=100),
    )
    texts = [c.choices[0].text async for c in batched if c.choices]
    assert "".join(texts) == prompt and plain.choices[0].text == TEXT
    assert gateway.core.upstream.unreadable == before + 1


async def test_streamed_completion_with_usage(client, tokenizer):
    stream = await client.completions.create(
        model=SMOL, prompt=TEXT, max_tokens=100, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == TEXT
    assert not any("\ufffd" in t for t in texts)  # half an emoji is never sent
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(tokenizer.encode(TEXT))
    assert len({c.id for c in chunks}) == 1


async def test_chat_answers_as_the_assistant(client, tokenizer):
    messages = [{"role": "system", "content": "Echo me."}, {"role": "user", "content": TEXT}]
    resp = await client.chat.completions.create(model=SMOL, messages=messages, max_tokens=100)
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == TEXT and choice.finish_reason == "stop"
    assert resp.usage.prompt_tokens == len(tokenizer.encode_chat(messages))
    assert resp.usage.completion_tokens == len(tokenizer.encode(TEXT))
    assert resp.id.startswith("chatcmpl-") and resp.object == "chat.completion"


async def test_streamed_chat_opens_with_the_role_and_ends_with_usage(client):
    stream = await client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": [{"type": "text", "text": TEXT}]}],
        max_completion_tokens=100, stream=True, stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert all(c.object == "chat.completion.chunk" for c in chunks)


async def test_stop_strings_trim_the_text_streamed_or_not(client):
    prompt = "alpha beta gamma delta epsilon"
    resp = await client.completions.create(model=SMOL, prompt=prompt, max_tokens=50, stop=[" gam", "zzz"])
    assert resp.choices[0].text == "alpha beta" and resp.choices[0].finish_reason == "stop"
    stream = await client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": prompt}], max_tokens=50, stop="ta ga", stream=True
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "alpha be"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_logprobs_of_the_chosen_tokens(client, tokenizer):
    resp = await client.completions.create(model=SMOL, prompt="one two three", max_tokens=10, logprobs=1)
    lp = resp.choices[0].logprobs
    assert "".join(lp.tokens) == "one two three" and lp.token_logprobs == [-0.5] * 3
    assert lp.text_offset == [0, 3, 7]
    chat = await client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "one two"}], max_tokens=10, logprobs=True
    )
    content = chat.choices[0].logprobs.content
    assert [(c.token, c.logprob) for c in content] == [("one", -0.5), (" two", -0.5)]


async def test_a_router_429_becomes_http_429_with_retry_after(client):
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as e:
            await client.completions.create(model=SMOL, prompt="please [429]", stream=stream)
        assert e.value.status_code == 429 and e.value.response.headers["retry-after"] == "1"
        assert e.value.body["message"] == "queue full"


async def test_a_failure_mid_stream_reaches_the_client_as_an_error_event(client):
    stream = await client.completions.create(model=SMOL, prompt="then [fail-mid] here", max_tokens=20, stream=True)
    texts = []
    with pytest.raises(openai.APIError, match="worker lost its GPU"):
        async for chunk in stream:
            texts.append(chunk.choices[0].text)
    assert "".join(texts) == "then ["


async def test_concurrent_requests_do_not_mix(client):
    prompts = [f"request number {i} 🎉" for i in range(16)]
    results = await asyncio.gather(
        *(client.completions.create(model=SMOL, prompt=p, max_tokens=50, stream=i % 2 == 0) for i, p in enumerate(prompts))
    )
    texts = []
    for r in results:
        if isinstance(r, openai.AsyncStream):
            texts.append("".join([c.choices[0].text async for c in r if c.choices]))
        else:
            texts.append(r.choices[0].text)
    assert texts == prompts


async def test_client_leaving_mid_stream_cancels_the_request(gateway, client, echo_worker):
    async with aiohttp.ClientSession() as http:
        body = {"model": SMOL, "prompt": "go [slow]", "stream": True, "max_tokens": 500}
        resp = await http.post(gateway.base_url + "/v1/completions", json=body)
        first = await resp.content.readline()
        assert first.startswith(b"data: {")
        request_id = json.loads(first[6:])["id"]
        resp.close()
    cancel = await eventually(lambda: echo_worker.cancelled(request_id))
    assert cancel.reason == "client disconnected"


async def test_client_leaving_while_waiting_cancels_the_request(gateway, client, echo_worker):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as http:
        with pytest.raises(asyncio.TimeoutError):
            await http.post(gateway.base_url + "/v1/completions", json={"model": SMOL, "prompt": "wait [stall] 1"})
    request = await eventually(lambda: echo_worker.find("wait [stall] 1"))
    await eventually(lambda: echo_worker.cancelled(request.id))


async def test_metrics_count_what_happened(gateway, client):
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.base_url + "/metrics") as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await r.text()
    assert 'tokenpool_gateway_requests_total{endpoint="/v1/completions",status="200"}' in text
    assert 'tokenpool_gateway_requests_total{endpoint="/v1/completions",status="429"} 2' in text
    assert f'tokenpool_gateway_ttft_seconds_count{{model="{SMOL}"}}' in text
    assert f'tokenpool_gateway_token_latency_seconds_bucket{{model="{SMOL}",le="+Inf"}}' in text
    assert f'tokenpool_gateway_tokens_out_total{{model="{SMOL}"}}' in text
    assert 'tokenpool_gateway_cancelled_total{reason="client disconnected"}' in text
    assert "tokenpool_gateway_inflight_requests 0" in text


async def test_the_openai_user_field_travels_as_the_requests_tenant(client, echo_worker):
    await client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "tenant probe one"}],
                                         max_tokens=3, user="team-blue")
    await client.completions.create(model=SMOL, prompt="tenant probe two", max_tokens=3)
    assert echo_worker.find("tenant probe one").tenant == "team-blue"
    assert echo_worker.find("tenant probe two").tenant == "", "no user: the shared default tenant"
