"""Real processes killed for real: workers, clients and the nats-server itself."""

import signal
import time

import openai
import pytest

from shared.tokenizer import Tokenizer

from .conftest import Stack, StateWatcher

SMOL = "smollm2-135m-instruct"
STORY = [{"role": "user", "content": "Tell me a long story about a dragon who learns to paint."}]


@pytest.fixture
def fresh_stack(tmp_path, catalog):
    stacks = []

    def make(workers: int) -> Stack:
        s = Stack(tmp_path, catalog).start(workers=workers)
        stacks.append(s)
        s.wait_healthy(workers=workers)
        return s

    yield make
    for s in stacks:
        s.stop()


def _client(stack):
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_worker_killed_mid_stream_second_worker_finishes_same_text(fresh_stack, model_store, greedy_reference):
    stack = fresh_stack(2)
    watcher = StateWatcher(stack.nats.url)
    tok = Tokenizer(model_store.path(SMOL))
    try:
        stream = _client(stack).chat.completions.create(model=SMOL, messages=STORY, max_tokens=40, temperature=0, stream=True)
        parts, request_id = [], None
        for chunk in stream:
            request_id = chunk.id
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
            if len(parts) == 5:
                holder = watcher.holder_of(request_id)
                assert holder is not None, "no worker reported the request"
                stack.services[holder].kill(signal.SIGKILL)
        expected = tok.decode(greedy_reference(SMOL, tuple(tok.encode_chat(STORY)), 40))
        assert "".join(parts) == expected
    finally:
        watcher.close()


def test_last_worker_killed_client_gets_a_clean_error_not_a_hang(fresh_stack):
    stack = fresh_stack(1)
    client = _client(stack)
    started = time.monotonic()
    with pytest.raises(openai.APIError):
        stream = client.chat.completions.create(model=SMOL, messages=STORY, max_tokens=200, temperature=0, stream=True)
        for n, _ in enumerate(stream):
            if n == 3:
                stack.services["worker-0"].kill(signal.SIGKILL)
    assert time.monotonic() - started < 60
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model=SMOL, messages=STORY, max_tokens=8)
    assert err.value.status_code == 503


def test_client_disconnect_cancels_the_request_on_the_worker(fresh_stack):
    stack = fresh_stack(1)
    watcher = StateWatcher(stack.nats.url)
    try:
        stream = _client(stack).chat.completions.create(model=SMOL, messages=STORY, max_tokens=300, temperature=0, stream=True)
        request_id = None
        for n, chunk in enumerate(stream):
            request_id = chunk.id
            if n == 3:
                break
        assert watcher.holder_of(request_id) == "worker-0"
        stream.close()
        assert watcher.wait_not_running(request_id, timeout=15), "the worker kept generating for a gone client"
    finally:
        watcher.close()


def test_services_reconnect_after_nats_server_restart(fresh_stack):
    stack = fresh_stack(1)
    client = _client(stack)
    assert client.completions.create(model=SMOL, prompt="Hello", max_tokens=4, temperature=0).choices[0].text
    stack.nats.stop()
    time.sleep(1.0)
    stack.nats.start()
    stack.wait_healthy(timeout=60)
    resp = client.completions.create(model=SMOL, prompt="Hello", max_tokens=4, temperature=0)
    assert resp.usage.completion_tokens == 4
