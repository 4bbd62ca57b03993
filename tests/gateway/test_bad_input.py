"""Bad requests against a running gateway: each gets the right status and an OpenAI-style error,
and the gateway keeps serving afterwards."""

import asyncio
import json

import aiohttp
import pytest
import pytest_asyncio

from tests.gateway.conftest import LLAMA, LLAMA_CONTEXT, MODULE, SMOL

pytestmark = pytest.mark.asyncio(loop_scope="module")

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
OK_CHAT = {"model": SMOL, "messages": [{"role": "user", "content": "hi"}]}

CASES = [
    # name, method, path, body (bytes or JSON value), status, param, message fragment
    ("malformed json", "POST", CHAT, b'{"model": ', 400, None, "not valid JSON"),
    ("body is an array", "POST", CHAT, [1, 2], 400, None, "must be a JSON object, got array"),
    ("body is a string", "POST", COMPLETIONS, "hello", 400, None, "got string"),
    ("empty body", "POST", COMPLETIONS, b"", 400, None, "not valid JSON"),
    ("missing model", "POST", CHAT, {"messages": [{"role": "user", "content": "x"}]}, 400, "model", "'model'"),
    ("missing messages", "POST", CHAT, {"model": SMOL}, 400, "messages", "'messages'"),
    ("missing prompt", "POST", COMPLETIONS, {"model": SMOL}, 400, "prompt", "'prompt'"),
    ("unknown model", "POST", CHAT, OK_CHAT | {"model": "gpt-9"}, 404, "model", f"serves: {LLAMA}, {SMOL}"),
    ("unknown model, completions", "POST", COMPLETIONS, {"model": "nope", "prompt": "x"}, 404, "model", "'nope'"),
    ("empty messages", "POST", CHAT, OK_CHAT | {"messages": []}, 400, "messages", "at least one message"),
    ("bad role", "POST", CHAT, OK_CHAT | {"messages": [{"role": "wizard", "content": "x"}]}, 400,
     "messages[0].role", "'wizard'"),
    ("content is a number", "POST", CHAT, OK_CHAT | {"messages": [{"role": "user", "content": 7}]}, 400,
     "messages[0].content", "got integer"),
    ("negative max_tokens", "POST", CHAT, OK_CHAT | {"max_tokens": -1}, 400, "max_tokens", ">= 1, got -1"),
    ("zero max_tokens", "POST", COMPLETIONS, {"model": SMOL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens",
     ">= 1, got 0"),
    ("huge max_tokens", "POST", COMPLETIONS, {"model": SMOL, "prompt": "x", "max_tokens": 10**12}, 400, "max_tokens",
     "maximum context length is 8192 tokens"),
    ("max_tokens over the catalog cap", "POST", COMPLETIONS, {"model": LLAMA, "prompt": "x", "max_tokens": 100}, 400,
     "max_tokens", f"maximum context length is {LLAMA_CONTEXT} tokens"),
    ("prompt over the catalog cap", "POST", COMPLETIONS, {"model": LLAMA, "prompt": "word " * 100}, 400, "prompt",
     f"maximum context length is {LLAMA_CONTEXT} tokens"),
    ("max_tokens is a string", "POST", COMPLETIONS, {"model": SMOL, "prompt": "x", "max_tokens": "5"}, 400,
     "max_tokens", "must be an integer, got string"),
    ("temperature too high", "POST", CHAT, OK_CHAT | {"temperature": 3}, 400, "temperature", "between 0 and 2"),
    ("temperature negative", "POST", COMPLETIONS, {"model": SMOL, "prompt": "x", "temperature": -0.1}, 400,
     "temperature", "between 0 and 2"),
    ("temperature is a string", "POST", CHAT, OK_CHAT | {"temperature": "warm"}, 400, "temperature", "a number"),
    ("top_p zero", "POST", CHAT, OK_CHAT | {"top_p": 0}, 400, "top_p", "in (0, 1]"),
    ("top_p above one", "POST", COMPLETIONS, {"model": SMOL, "prompt": "x", "top_p": 1.01}, 400, "top_p", "(0, 1]"),
    ("n above the limit", "POST", CHAT, OK_CHAT | {"n": 129}, 400, "n", "between 1 and 128, got 129"),
    ("n is a string", "POST", CHAT, OK_CHAT | {"n": "1"}, 400, "n", "'n' must be an integer, got string"),
    ("too many choices", "POST", COMPLETIONS, {"model": SMOL, "prompt": ["x"] * 50, "n": 3}, 400, "n",
     "150 choices; a request makes at most 128"),
    ("echo with logprobs", "POST", COMPLETIONS, {"model": SMOL, "prompt": "x", "echo": True, "logprobs": 0}, 400,
     "echo", "the prompt's logprobs are not returned"),
    ("logit_bias key outside the vocabulary", "POST", CHAT, OK_CHAT | {"logit_bias": {"7": 1, "49152": -5}}, 400,
     "logit_bias", "'logit_bias' key '49152' is outside the vocabulary of model 'smollm2-135m-instruct' [0, 49152)"),
    ("logit_bias key not a number", "POST", COMPLETIONS, {"model": SMOL, "prompt": "x", "logit_bias": {"a7": 1}},
     400, "logit_bias", "key 'a7' is not a token id"),
    ("presence_penalty too high", "POST", CHAT, OK_CHAT | {"presence_penalty": 2.1}, 400, "presence_penalty",
     "between -2 and 2, got 2.1"),
    ("token id outside the vocabulary, second prompt", "POST", COMPLETIONS,
     {"model": SMOL, "prompt": [[1], [2, 49152]]}, 400, "prompt", "'prompt[1]' token ids [49152] are outside"),
    ("second prompt over the catalog cap", "POST", COMPLETIONS, {"model": LLAMA, "prompt": ["x", "word " * 100]},
     400, "prompt", "but the prompt[1] has"),
    ("token id outside the vocabulary", "POST", COMPLETIONS, {"model": SMOL, "prompt": [1, 999999]}, 400, "prompt",
     "outside the vocabulary [0, 49152)"),
    ("too many stop strings", "POST", CHAT, OK_CHAT | {"stop": list("abcde")}, 400, "stop", "at most 4"),
    ("user is a number", "POST", CHAT, OK_CHAT | {"user": 42}, 400, "user", "'user' must be a string, got integer"),
    ("user too long", "POST", COMPLETIONS, {"model": SMOL, "prompt": "x", "user": "u" * 257}, 400, "user",
     "at most 256 characters, got 257"),
    ("wrong method on completions", "GET", COMPLETIONS, None, 405, None, "GET is not allowed on /v1/completions"),
    ("wrong method on models", "DELETE", "/v1/models", None, 405, None, "use GET"),
    ("unknown path", "GET", "/v2/whatever", None, 404, None, "no route /v2/whatever"),
    ("unknown model by id", "GET", "/v1/models/gpt-9", None, 404, "model",
     f"the model 'gpt-9' does not exist; this server serves: {LLAMA}, {SMOL}"),
]


@pytest_asyncio.fixture(**MODULE)
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.parametrize("name, method, path, body, status, param, message", CASES, ids=[c[0] for c in CASES])
async def test_bad_request_gets_an_openai_error(gateway, http, name, method, path, body, status, param, message):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    async with http.request(method, gateway.base_url + path, data=data,
                            headers={"Content-Type": "application/json"}) as r:
        assert r.status == status
        assert r.content_type == "application/json"
        error = (await r.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    if status == 405:
        assert r.headers["Allow"]
    if status == 404 and param == "model":
        assert error["code"] == "model_not_found"


async def test_huge_body_gets_413_as_json(gateway, http):
    body = json.dumps({"model": SMOL, "prompt": "x" * (2 << 20)}).encode()
    async with http.post(gateway.base_url + COMPLETIONS, data=body) as r:
        assert r.status == 413
        error = (await r.json())["error"]
    assert error["code"] == "request_too_large" and "1048576 bytes" in error["message"]


async def test_a_client_sending_garbage_bytes_does_not_break_the_gateway(gateway):
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"\x00\x01garbage that is not HTTP\r\n\r\n")
    await writer.drain()
    answer = await reader.read(100)
    assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request"), answer
    writer.close()


async def test_still_serving_after_all_that(gateway, http):
    async with http.get(gateway.base_url + "/v1/models") as r:
        assert r.status == 200
        body = await r.json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"]) for m in body["data"]] == [(SMOL, "model"), (LLAMA, "model")]
    for listed in body["data"]:
        async with http.get(gateway.base_url + "/v1/models/" + listed["id"]) as r:
            assert r.status == 200 and await r.json() == listed
    async with http.get(gateway.base_url + "/metrics") as r:
        text = await r.text()
    assert 'tokenpool_gateway_requests_total{endpoint="/v1/chat/completions",status="400"}' in text
    assert 'tokenpool_gateway_errors_total{status="404",code="model_not_found"}' in text
    assert 'tokenpool_gateway_requests_total{endpoint="/v1/completions",status="413"} 1' in text
    assert 'tokenpool_gateway_requests_total{endpoint="/v1/models/{model}",status="404"} 1' in text
    assert 'tokenpool_gateway_requests_total{endpoint="/v1/models/{model}",status="200"} 2' in text
