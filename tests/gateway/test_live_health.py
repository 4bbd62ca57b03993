"""/health and request admission follow RouterState reports on a real NATS (no router publishing here)."""

import asyncio

import aiohttp
import pytest
import pytest_asyncio

from shared import subjects
from shared.protocol import encode
from tests.gateway.conftest import MODULE, SMOL, router_state

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(**MODULE)
async def gw(make_gateway):
    async with make_gateway(router_stale_s=1.0) as gw:
        yield gw


@pytest_asyncio.fixture(**MODULE)
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def get_health(http, gw):
    async with http.get(gw.base_url + "/health") as r:
        return r.status, await r.json()


async def wait_health(http, gw, status: int):
    for _ in range(100):
        got, body = await get_health(http, gw)
        if got == status:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"/health never answered {status}; last: {got} {body}")


async def complete(http, gw):
    async with http.post(gw.base_url + "/v1/completions", json={"model": SMOL, "prompt": "hi"}) as r:
        return r.status, r.headers.get("Retry-After"), await r.json()


async def test_unhealthy_before_any_router_and_requests_get_503(http, gw):
    status, body = await get_health(http, gw)
    assert status == 503 and body["code"] == "no_router" and "no router is alive" in body["reason"]
    status, retry_after, body = await complete(http, gw)
    assert status == 503 and retry_after == "1"
    assert body["error"]["code"] == "no_router" and "no RouterState" in body["error"]["message"]


async def test_a_router_without_workers_is_not_enough(http, gw, nc):
    await nc.publish(subjects.ROUTER_STATE, encode(router_state(workers=())))
    for _ in range(100):
        status, body = await get_health(http, gw)
        if body.get("code") == "no_worker":
            break
        await asyncio.sleep(0.05)
    assert status == 503 and "reports no live worker" in body["reason"]
    status, _, body = await complete(http, gw)
    assert status == 503 and body["error"]["code"] == "no_worker"


async def test_healthy_after_a_ready_router_state_then_stale_again(http, gw, nc):
    await nc.publish(subjects.ROUTER_STATE, encode(router_state(workers=("w1", "w2"))))
    body = await wait_health(http, gw, 200)
    assert body["status"] == "ok" and body["workers"] == ["w1", "w2"] and body["router"] == "test-router"
    body = await wait_health(http, gw, 503)  # router_stale_s=1.0 passes without another report
    assert body["code"] == "no_router"
