"""A full pool shared among tenants (the OpenAI `user` field), over real processes: one tenant's
burst does not make another tenant's lone request wait for the whole burst.

The worker runs the echo engine (fixed step time, no model math) and the router lets it hold
two requests at once, so the pool is full after two and the rest queue at the router.
"""

import asyncio
import time

import pytest

from .conftest import Stack, run_async, write_catalog

MODEL = "demo-llama"
BURST = 8
TOKENS = 60  # 1.8 s a request at least: the burst is seen queued well before a slot frees
STEP_S = 0.03


def start_stack(tmp_path_factory, model_store, fair: bool) -> Stack:
    catalog = write_catalog(tmp_path_factory.mktemp("catalog") / "catalog.toml", model_store.root, (MODEL,))
    s = Stack(tmp_path_factory.mktemp(f"stack-fair-{fair}"), catalog)
    s.nats.start()
    s.start_service("router", "services.router", "--max-running-per-worker", "2",
                    *(() if fair else ("--no-tenant-fairness",)))
    s.start_service("worker-0", "services.gpu_worker", "--worker-id", "worker-0", "--engine", "echo",
                    "--echo-step-s", str(STEP_S))
    s.start_service("gateway", "services.gateway", "--host", "127.0.0.1", "--port", str(s.port))
    s.wait_healthy()
    return s


def first_token_order(stack: Stack) -> list[str]:
    """Tenant "big" streams a burst; once it waits at the router, "small" asks once. The
    requests in the order their first token reached the client."""
    from openai import AsyncOpenAI

    firsts: dict[str, float] = {}

    async def one(client, name: str, tenant: str):
        stream = await client.completions.create(
            model=MODEL, prompt=f"request {name}", max_tokens=TOKENS, stream=True, user=tenant,
            extra_body={"ignore_eos": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                firsts.setdefault(name, time.monotonic())

    seen = []

    async def at_the_router() -> int:
        status, body = await asyncio.to_thread(stack.health)
        seen.append((status, body.get("models")))
        load = body.get("models", {}).get(MODEL, {}) if status == 200 else {}
        return load.get("queued", 0) + load.get("running", 0)

    async def main():
        client = AsyncOpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
        try:
            burst = [asyncio.create_task(one(client, f"big{i}", "big")) for i in range(BURST)]
            deadline = asyncio.get_running_loop().time() + 10
            # The router's state (every 0.5 s) shows the whole burst in: two running, six queued.
            while await at_the_router() < BURST:
                failed = [t.exception() for t in burst if t.done() and t.exception()]
                assert not failed, f"burst requests failed: {failed[:2]}"
                assert asyncio.get_running_loop().time() < deadline, (
                    f"the burst did not reach the router in 10 s; health said {seen[-3:]}\n{stack.services['router'].log()}"
                )
                await asyncio.sleep(0.05)
            await asyncio.gather(one(client, "small", "small"), *burst)
        finally:
            await client.close()

    run_async(asyncio.wait_for(main(), 120))
    return sorted(firsts, key=firsts.get)


@pytest.mark.parametrize("fair", [True, False], ids=["fair", "fcfs"])
def test_a_lone_request_of_another_tenant_takes_the_next_free_slot(tmp_path_factory, model_store, fair):
    stack = start_stack(tmp_path_factory, model_store, fair)
    try:
        order = first_token_order(stack)
    finally:
        stack.stop()

    assert sorted(order) == sorted([f"big{i}" for i in range(BURST)] + ["small"]), "every request streamed"
    ahead = order.index("small")
    if fair:
        assert ahead <= 3, f"fair: small waited for one free slot, not the burst; order {order}"
    else:
        assert ahead >= BURST - 2, f"FCFS (the baseline): small waited for the burst; order {order}"
