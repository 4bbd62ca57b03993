"""The official openai client against the real stack: chat and completions, streamed or not."""

import asyncio
import json
import subprocess
import sys

import pytest

from shared.tokenizer import Tokenizer

from .conftest import run_async

SMOL, LLAMA, QWEN = "smollm2-135m-instruct", "demo-llama", "demo-qwen2"


@pytest.fixture(scope="module")
def tok(model_store):
    return Tokenizer(model_store.path(SMOL))  # the demo models share SmolLM2's tokenizer


def test_chat_on_two_models_matches_the_engine_alone(client, tok, greedy_reference):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    for model in (SMOL, QWEN):
        resp = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0)
        expected = greedy_reference(model, tuple(tok.encode_chat(messages)), 24)
        assert resp.choices[0].message.content == tok.decode(expected)
        assert resp.choices[0].message.role == "assistant"
        assert resp.usage.prompt_tokens == len(tok.encode_chat(messages))
        assert resp.usage.completion_tokens == len(expected)
        assert resp.choices[0].finish_reason == ("stop" if len(expected) < 24 else "length")


def test_streamed_chat_equals_non_streamed(client):
    messages = [{"role": "user", "content": "Name three colours."}]
    plain = client.chat.completions.create(model=SMOL, messages=messages, max_tokens=20, temperature=0)
    stream = client.chat.completions.create(
        model=SMOL, messages=messages, max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        plain.choices[0].finish_reason
    ]


def test_completions_streamed_and_not_on_two_models(client, tok, greedy_reference):
    prompt = "The capital of France is"
    for model in (SMOL, LLAMA):
        expected = tok.decode(greedy_reference(model, tuple(tok.encode(prompt)), 16))
        plain = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0)
        assert plain.choices[0].text == expected
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model=model, prompt=prompt, max_tokens=16, temperature=0, stream=True) if c.choices)
        assert streamed == expected


def test_greedy_text_equals_tokenpool_generate(client):
    prompt = "Write one sentence about the sea."
    cmd = [sys.executable, "-m", "services.cli", "generate", "--model", SMOL, "--chat", "--prompt", prompt,
           "--max-tokens", "20", "--json"]
    generated = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout)
    resp = client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": prompt}], max_tokens=20, temperature=0
    )
    assert resp.choices[0].message.content == generated["text"]


def test_twenty_concurrent_streams_over_three_models_all_complete_in_order(stack, tok, greedy_reference):
    from openai import AsyncOpenAI

    prompts = [f"Item {i}: the quick brown fox" for i in range(20)]
    models = [(SMOL, LLAMA, QWEN)[i % 3] for i in range(20)]

    async def one(client, model, prompt):
        stream = await client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0, stream=True)
        parts, reasons = [], []
        async for chunk in stream:
            if chunk.choices:
                parts.append(chunk.choices[0].text)
                reasons.append(chunk.choices[0].finish_reason)
        return "".join(parts), [r for r in reasons if r]

    async def main():
        client = AsyncOpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0, timeout=300)
        try:
            return await asyncio.gather(*(one(client, m, p) for m, p in zip(models, prompts)))
        finally:
            await client.close()

    results = run_async(main())
    for model, prompt, (text, reasons) in zip(models, prompts, results):
        assert text == tok.decode(greedy_reference(model, tuple(tok.encode(prompt)), 12)), (model, prompt)
        assert len(reasons) == 1


def test_models_and_health(client, stack):
    assert {m.id for m in client.models.list().data} == {SMOL, LLAMA, QWEN}
    status, body = stack.health()
    assert status == 200 and body["status"] == "ok"
    assert client.models.retrieve(QWEN).id == QWEN


def test_n_seeded_choices_differ_and_the_same_request_gives_them_again(client, tok):
    messages = [{"role": "user", "content": "Tell me a short story."}]
    ask = dict(model=SMOL, messages=messages, max_tokens=12, temperature=1.0, top_p=0.95, seed=5, n=3)
    first, again = client.chat.completions.create(**ask), client.chat.completions.create(**ask)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1
    assert first.usage.prompt_tokens == len(tok.encode_chat(messages))
    assert 3 <= first.usage.completion_tokens <= 36


def test_several_prompts_each_get_their_greedy_text(client, tok, greedy_reference):
    prompts = ["The capital of France is", "def fibonacci(n):"]
    resp = client.completions.create(model=SMOL, prompt=prompts, max_tokens=8, temperature=0, n=2)
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    for c in resp.choices:
        expected = tok.decode(greedy_reference(SMOL, tuple(tok.encode(prompts[c.index // 2])), 8))
        assert c.text == expected
    assert resp.usage.prompt_tokens == sum(len(tok.encode(p)) for p in prompts)


def test_top_logprobs_lead_with_the_greedy_token(client):
    resp = client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=6, temperature=0,
        logprobs=True, top_logprobs=3,
    )
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens
    for item in content:
        assert len(item.top_logprobs) == 3
        assert item.top_logprobs[0].token == item.token and item.top_logprobs[0].logprob == item.logprob
        assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob >= item.top_logprobs[2].logprob


def test_logit_bias_forces_a_token_and_a_frequency_penalty_changes_a_loop(client, tok):
    prompt = "1, 2, 3, 4, 5,"
    (forced,) = tok.encode(" banana")
    resp = client.completions.create(model=SMOL, prompt=prompt, max_tokens=4, temperature=0, logit_bias={str(forced): 100})
    assert resp.choices[0].text == " banana" * 4
    plain = client.completions.create(model=SMOL, prompt=prompt, max_tokens=24, temperature=0)
    penalised = client.completions.create(model=SMOL, prompt=prompt, max_tokens=24, temperature=0, frequency_penalty=2.0)
    assert penalised.choices[0].text != plain.choices[0].text


def test_a_chat_that_repeats_a_system_prompt_finds_it_cached_and_answers_as_without(client, tok, greedy_reference):
    """The second question after the same system prompt reuses its KV on the worker: the usage
    says how many prompt tokens came from the cache (OpenAI's prompt_tokens_details), and the
    answer is the engine's greedy one all the same."""
    system = ("You are the archivist of the harbour museum of Port Ellery. You answer visitors in one "
              "sentence and name the room where the object they ask about is kept. ") * 3
    answers = []
    for question in ("Where is the old lighthouse lens?", "Where are the ship models?"):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        resp = client.chat.completions.create(model=SMOL, messages=messages, max_tokens=12, temperature=0)
        expected = greedy_reference(SMOL, tuple(tok.encode_chat(messages)), 12)
        assert resp.choices[0].message.content == tok.decode(expected)
        answers.append(resp.usage)
    first, second = answers
    assert first.prompt_tokens_details.cached_tokens == 0, "nobody sent this system prompt before"
    shared = len(tok.encode_chat([{"role": "system", "content": system}]))
    assert shared // 2 < second.prompt_tokens_details.cached_tokens < second.prompt_tokens
