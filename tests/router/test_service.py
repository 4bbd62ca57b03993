"""The router against a real nats-server, with fake workers and a gateway-like client."""

import asyncio

from services.router.config import PolicyConfig, RouterConfig
from services.router.service import RouterService
from shared import bus, subjects
from shared.catalog import load_catalog
from shared.protocol import CancelRequest, RouterState, decode, encode

from .fake_worker import Client, FakeWorker, eventually, make_request


def run(coro, timeout_s: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def router(url, catalog_path, **policy) -> RouterService:
    config = RouterConfig(
        nats=url,
        catalog=catalog_path,
        startup_wait_s=0.2,
        policy=PolicyConfig(**({"worker_timeout_s": 1.0, "no_worker_grace_s": 3.0} | policy)),
    )
    return RouterService(config, load_catalog(catalog_path, catalog_path.parent))


async def stream_state(nc) -> tuple[int, int]:
    js = nc.jetstream()
    stream = await js.stream_info(subjects.REQUEST_STREAM)
    consumer = await js.consumer_info(subjects.REQUEST_STREAM, subjects.ROUTER_CONSUMER)
    return stream.state.messages, consumer.num_ack_pending


def test_request_runs_on_the_reporting_worker_and_is_acked_when_its_last_token_arrives(nats_server, catalog_path):
    async def scenario():
        nc = await bus.connect(nats_server.url, "test")
        async with router(nats_server.url, catalog_path), FakeWorker(nc, "w1", ("m1",)) as w1:
            client = Client(nc)
            await client.submit(make_request("r1", "m1"))
            await eventually(lambda: "r1" in w1.holding, what="the assignment")
            [assign] = w1.assigns
            assert (assign.request.id, assign.request.model, assign.resume_token_ids) == ("r1", "m1", ())
            await w1.emit("r1", 2)
            await asyncio.sleep(0.3)
            assert await stream_state(nc) == (1, 1)  # still held while it runs
            await w1.emit("r1", 1, finish="stop")
            await eventually(lambda: client.finished("r1"), what="the final chunk")
            assert [t for c in client.chunks["r1"] for t in c.token_ids] == [0, 1, 2]
            await eventually_drained(nc)
        await nc.close()

    run(scenario())


def test_unknown_model_gets_a_404_error_chunk_and_is_acked(nats_server, catalog_path):
    async def scenario():
        nc = await bus.connect(nats_server.url, "test")
        async with router(nats_server.url, catalog_path), FakeWorker(nc, "w1", ("m1",)):
            client = Client(nc)
            await client.submit(make_request("r1", "no-such-model"))
            await eventually(lambda: client.finished("r1"), what="the error chunk")
            [chunk] = client.chunks["r1"]
            assert chunk.error.code == 404 and "'no-such-model'" in chunk.error.message and "m1" in chunk.error.message
            await eventually_drained(nc)
        await nc.close()

    run(scenario())


def test_requests_of_a_silent_worker_resume_on_another_worker(nats_server, catalog_path):
    async def scenario():
        nc = await bus.connect(nats_server.url, "test")
        async with router(nats_server.url, catalog_path), FakeWorker(nc, "w1", ("m1",)) as w1:
            client = Client(nc)
            await client.submit(make_request("r1", "m1"))
            await eventually(lambda: "r1" in w1.holding, what="the first assignment")
            await w1.emit("r1", 3)
            async with FakeWorker(nc, "w2", ("m1",)) as w2:
                await asyncio.sleep(0.3)
                w1.reporting = False
                await eventually(lambda: w2.assigns, what="the second assignment")
                assert w2.assigns[0].request.id == "r1" and w2.assigns[0].resume_token_ids == (0, 1, 2)
                await w2.emit("r1", 2, finish="length")
                await eventually(lambda: client.finished("r1"), what="the final chunk")
                tokens = sorted({(c.index + i, t) for c in client.chunks["r1"] for i, t in enumerate(c.token_ids)})
                assert [t for _, t in tokens] == [0, 1, 2, 3, 4]
                await eventually_drained(nc)
        await nc.close()

    run(scenario())


def test_cancel_reaches_the_worker_and_acks_the_request(nats_server, catalog_path):
    async def scenario():
        nc = await bus.connect(nats_server.url, "test")
        async with router(nats_server.url, catalog_path), FakeWorker(nc, "w1", ("m1",)) as w1:
            client = Client(nc)
            await client.submit(make_request("r1", "m1"))
            await eventually(lambda: "r1" in w1.holding, what="the assignment")
            await nc.publish(subjects.REQUEST_CANCEL, encode(CancelRequest("r1")))
            await eventually(lambda: w1.cancels == ["r1"], what="the cancel")
            await eventually_drained(nc)
        await nc.close()

    run(scenario())


def test_malformed_messages_are_dropped_and_the_router_keeps_serving(nats_server, catalog_path):
    async def scenario():
        nc = await bus.connect(nats_server.url, "test")
        async with router(nats_server.url, catalog_path) as svc, FakeWorker(nc, "w1", ("m1",)) as w1:
            js = nc.jetstream()
            await js.publish(subjects.REQUEST_SUBMIT, b"\x93not a request")
            await nc.publish(subjects.WORKER_STATE, b"garbage")
            await nc.publish(subjects.tokens("x"), encode(CancelRequest("x")))
            client = Client(nc)
            await client.submit(make_request("r1", "m1"))
            await eventually(lambda: "r1" in w1.holding, what="the assignment")
            await w1.emit("r1", 1, finish="stop")
            await eventually_drained(nc)
            events = svc.metrics.render()
            assert 'event="malformed_request"} 1' in events
            assert 'event="malformed_WorkerState"} 1' in events
            assert 'event="malformed_TokenChunk"} 1' in events
        await nc.close()

    run(scenario())


def test_router_state_shows_workers_and_load(nats_server, catalog_path):
    async def scenario():
        nc = await bus.connect(nats_server.url, "test")
        states: list[RouterState] = []

        async def on_state(msg):
            states.append(decode(msg.data, RouterState))

        await nc.subscribe(subjects.ROUTER_STATE, cb=on_state)
        async with router(nats_server.url, catalog_path), FakeWorker(nc, "w1", ("m1",)) as w1:
            client = Client(nc)
            await client.submit(make_request("r1", "m1"))
            await eventually(lambda: "r1" in w1.holding, what="the assignment")
            await eventually(lambda: states and states[-1].workers == ("w1",) and states[-1].models[0].running == 1)
            assert states[-1].ready and states[-1].models[0].name == "m1" and states[-1].models[0].arrivals == 1
        await nc.close()

    run(scenario())


async def eventually_drained(nc, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if await stream_state(nc) == (0, 0):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"request stream not drained: (messages, ack pending) = {await stream_state(nc)}")
