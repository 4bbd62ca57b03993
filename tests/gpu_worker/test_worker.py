"""The worker on a real nats-server with the real engine: what a router and a client see on the bus."""

import asyncio

import pytest
import pytest_asyncio

from services.gpu_worker.config import plan_engine
from services.gpu_worker.engine.engine import Engine
from services.gpu_worker.engine.generate import run_to_completion
from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams
from shared import bus, subjects
from shared.catalog import load_catalog
from shared.protocol import Placement, Sampling, WorkerPlacement, encode

from .conftest import GREEDY, BusClient, running_worker, token_ids, worker_config

pytestmark = pytest.mark.asyncio


def solo_greedy(config, model_store, model, prompt, max_tokens) -> list[int]:
    """The engine alone, same configuration, no bus: the tokens the worker must reproduce."""
    plan = plan_engine(config, load_catalog(config.catalog, model_store.root))
    engine = Engine(plan.engine, plan.paths)
    try:
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        return run_to_completion(engine, [EngineRequest("solo", model, prompt, params)])["solo"].token_ids
    finally:
        engine.close()


@pytest_asyncio.fixture
async def client(nats_url):
    c = await BusClient.connect(nats_url)
    yield c
    await c.close()


async def test_tokens_stream_in_order_and_match_the_engine_run_alone(nats_url, client, model_store, prompt_ids):
    config = worker_config(nats_url, "w-greedy")
    async with running_worker(config):
        await client.state("w-greedy", lambda s: s.ready)
        await client.assign("w-greedy", "greedy-1", "demo-qwen2", prompt_ids)
        chunks = await client.finished("greedy-1")

    assert [c.index for c in chunks] == list(range(GREEDY.max_tokens))
    assert all(len(c.token_ids) == 1 and c.worker_id == "w-greedy" and c.error is None for c in chunks)
    assert [c.finish_reason for c in chunks] == [None] * (GREEDY.max_tokens - 1) + ["length"]
    assert chunks[-1].usage.prompt_tokens == len(prompt_ids)
    assert chunks[-1].usage.completion_tokens == GREEDY.max_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert token_ids(chunks) == solo_greedy(config, model_store, "demo-qwen2", prompt_ids, GREEDY.max_tokens)


async def test_two_models_progress_together(nats_url, client, prompt_ids):
    sampling = Sampling(max_tokens=48, temperature=0, ignore_eos=True)
    async with running_worker(worker_config(nats_url, "w-two", min_turn_steps=2)):
        await client.state("w-two", lambda s: s.ready)
        await client.assign("w-two", "two-llama", "demo-llama", prompt_ids, sampling)
        await client.assign("w-two", "two-qwen", "demo-qwen2", prompt_ids, sampling)
        llama = await client.finished("two-llama")
        qwen = await client.finished("two-qwen")

    assert len(llama) == len(qwen) == 48 and llama[-1].finish_reason == qwen[-1].finish_reason == "length"
    order = [c.request_id for c in client.arrivals]
    # Neither request waited for the other to finish: their chunks interleave.
    assert order.index("two-qwen") < len(order) - 1 - order[::-1].index("two-llama")
    assert order.index("two-llama") < len(order) - 1 - order[::-1].index("two-qwen")
    switches = sum(a != b for a, b in zip(order, order[1:]))
    assert switches >= 4


async def test_a_resumed_request_continues_where_a_solo_run_would(nats_url, client, model_store, prompt_ids):
    config = worker_config(nats_url, "w-resume")
    solo = solo_greedy(config, model_store, "demo-llama", prompt_ids, GREEDY.max_tokens)
    resumed = solo[:10]
    async with running_worker(config):
        await client.state("w-resume", lambda s: s.ready)
        await client.assign("w-resume", "resume-1", "demo-llama", prompt_ids, GREEDY, resume=resumed)
        chunks = await client.finished("resume-1")

    assert [c.index for c in chunks] == list(range(10, GREEDY.max_tokens))
    assert token_ids(chunks) == solo[10:]
    assert chunks[-1].usage.prompt_tokens == len(prompt_ids)
    assert chunks[-1].usage.completion_tokens == GREEDY.max_tokens


async def test_bad_requests_get_a_clear_error_and_the_worker_keeps_serving(nats_url, client, prompt_ids):
    async with running_worker(worker_config(nats_url, "w-bad")):
        await client.state("w-bad", lambda s: s.ready)
        await client.assign("w-bad", "bad-long", "demo-qwen2", [5] * 2048)
        await client.assign("w-bad", "bad-zero", "demo-llama", prompt_ids, Sampling(max_tokens=0))
        await client.assign("w-bad", "bad-model", "no-such-model", prompt_ids)
        long, zero, unknown = [await client.finished(r) for r in ("bad-long", "bad-zero", "bad-model")]
        await client.assign("w-bad", "good-after", "demo-qwen2", prompt_ids)
        good = await client.finished("good-after")

    assert len(long) == 1 and long[0].index == 0 and long[0].error.code == 400
    assert "2048 tokens" in long[0].error.message and "context window" in long[0].error.message
    assert zero[0].error.code == 400 and "max_tokens=0" in zero[0].error.message
    assert unknown[0].error.code == 404 and "no-such-model" in unknown[0].error.message
    assert good[-1].finish_reason == "length" and len(good) == GREEDY.max_tokens


async def test_cancel_stops_the_tokens_and_frees_the_kv_pages(nats_url, client, prompt_ids):
    endless = Sampling(max_tokens=4000, temperature=0, ignore_eos=True)
    async with running_worker(worker_config(nats_url, "w-cancel")):
        await client.state("w-cancel", lambda s: s.ready)
        await client.assign("w-cancel", "cancel-1", "demo-llama", prompt_ids, endless)
        busy = await client.state("w-cancel", lambda s: "cancel-1" in s.running and s.free_kv_pages < s.total_kv_pages)
        await client.until(lambda: len(client.chunks("cancel-1")) >= 3, what="a few tokens")
        await client.cancel("w-cancel", "cancel-1")
        idle = await client.state("w-cancel", lambda s: not s.running)
        produced = len(client.chunks("cancel-1"))
        await asyncio.sleep(0.5)

    assert idle.free_kv_pages == idle.total_kv_pages == busy.total_kv_pages
    chunks = client.chunks("cancel-1")
    assert len(chunks) == produced < 4000
    assert all(c.finish_reason is None and c.error is None for c in chunks)


async def test_reports_arrive_periodically_with_the_models_loaded(nats_url, client):
    async with running_worker(worker_config(nats_url, "w-report")):
        first = await client.state("w-report", lambda s: s.ready)
        await asyncio.sleep(1.0)
    reports = [s for s in client.states if s.worker_id == "w-report" and s.seq > first.seq]
    assert len(reports) >= 3  # every 0.2 s, and a last one on the way out
    assert [s.seq for s in reports] == sorted(s.seq for s in reports)
    assert first.serving == ("demo-llama", "demo-qwen2") and first.device == "cpu"
    assert all(m.tier in ("host", "device") for m in first.models)
    assert first.active_model == "demo-llama" and first.free_kv_pages == first.total_kv_pages > 0
    assert not reports[-1].ready  # the worker said it stopped taking work


async def test_models_not_placed_here_leave_host_memory_and_still_serve(nats_url, client, prompt_ids):
    async with running_worker(worker_config(nats_url, "w-place")):
        await client.state("w-place", lambda s: s.ready)
        kv = await bus.placement_bucket(client.nc)
        placement = Placement(1, (WorkerPlacement("w-place", ("demo-llama",)), WorkerPlacement("other", ())), 0.0)
        await kv.put(subjects.PLACEMENT_KEY, encode(placement))
        placed = await client.state("w-place", lambda s: dict((m.name, m.tier) for m in s.models)["demo-qwen2"] == "disk")
        await client.assign("w-place", "place-1", "demo-qwen2", prompt_ids)
        chunks = await client.finished("place-1")
        await kv.delete(subjects.PLACEMENT_KEY)

    assert dict((m.name, m.tier) for m in placed.models)["demo-llama"] != "disk"
    assert chunks[-1].finish_reason == "length"


async def test_models_sharing_one_kv_page_take_turns_and_keep_their_tokens(nats_url, client, model_store, prompt_ids):
    # One KV page: each switch has to park the other model's KV in host memory and bring it back.
    config = worker_config(nats_url, "w-tight", kv_arena_bytes=1 << 20, kv_page_bytes=1 << 20, min_turn_steps=3)
    async with running_worker(config):
        await client.state("w-tight", lambda s: s.ready and s.total_kv_pages == 1)
        await client.assign("w-tight", "tight-llama", "demo-llama", prompt_ids)
        await client.assign("w-tight", "tight-qwen", "demo-qwen2", prompt_ids)
        llama = await client.finished("tight-llama")
        qwen = await client.finished("tight-qwen")
        idle = await client.state("w-tight", lambda s: not s.running)

    assert token_ids(llama) == solo_greedy(config, model_store, "demo-llama", prompt_ids, GREEDY.max_tokens)
    assert token_ids(qwen) == solo_greedy(config, model_store, "demo-qwen2", prompt_ids, GREEDY.max_tokens)
    order = [c.request_id for c in client.arrivals]
    assert sum(a != b for a, b in zip(order, order[1:])) >= 2
    assert idle.free_kv_pages == 1
