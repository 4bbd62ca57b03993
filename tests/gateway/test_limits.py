"""The gateway's own limits: the stall timeout (504) and the in-flight limit (429)."""

import asyncio

import aiohttp
import pytest

from tests.gateway.conftest import SMOL, eventually, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def post(http, gw, body):
    async with http.post(gw.base_url + "/v1/completions", json={"model": SMOL} | body) as r:
        return r.status, r.headers, await r.json()


async def test_no_token_for_stall_timeout_is_504_and_cancels(make_gateway, router, echo_worker):
    async with make_gateway(stall_timeout_s=0.5) as gw, aiohttp.ClientSession() as http:
        await wait_ready(gw)
        for stream in (False, True):
            marker = f"[stall] {stream}"
            status, _, body = await post(http, gw, {"prompt": marker, "stream": stream})
            assert status == 504
            assert body["error"]["type"] == "timeout_error" and "no token arrived for 0.5 s" in body["error"]["message"]
            request = await eventually(lambda: echo_worker.find(marker))
            assert (await eventually(lambda: echo_worker.cancelled(request.id))).reason == "stalled"


async def test_beyond_max_inflight_is_429_with_retry_after(make_gateway, router, echo_worker):
    async with make_gateway(max_inflight=1) as gw, aiohttp.ClientSession() as http:
        await wait_ready(gw)
        slow = await http.post(gw.base_url + "/v1/completions",
                               json={"model": SMOL, "prompt": "hold [slow]", "stream": True, "max_tokens": 500})
        assert (await slow.content.readline()).startswith(b"data: ")
        status, headers, body = await post(http, gw, {"prompt": "one more"})
        assert status == 429 and headers["Retry-After"] == "1"
        assert body["error"]["code"] == "overloaded" and "limit of 1 requests" in body["error"]["message"]
        slow.close()
        await eventually(lambda: gw.core.inflight == 0)
        status, _, body = await post(http, gw, {"prompt": "one more"})
        assert status == 200 and body["choices"][0]["text"] == "one more"


async def test_stopping_waits_for_an_open_request(make_gateway, router, echo_worker):
    async with make_gateway() as gw, aiohttp.ClientSession() as http:
        await wait_ready(gw)
        pending = asyncio.create_task(post(http, gw, {"prompt": "finish me", "max_tokens": 30}))
        await eventually(lambda: echo_worker.find("finish me"))
    status, _, body = await pending
    assert status == 200 and body["choices"][0]["text"] == "finish me"
