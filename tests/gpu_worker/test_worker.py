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
from shared.protocol import Placement, Sampling, Usage, WorkerPlacement, encode

from .conftest import GREEDY, BusClient, running_worker, take_turns, token_ids, token_indexes, worker_config

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
        held = await client.state("w-greedy", lambda s: "greedy-1" in s.running)
        assert not client.chunks("greedy-1")  # a request waits for a turn
        prefill = await client.turn("w-greedy", "demo-qwen2", ["greedy-1"], until_prefilled=True)
        decode = await client.turn("w-greedy", "demo-qwen2", ["greedy-1"])
        chunks = await client.finished("greedy-1")

    assert held.turn_id == 0
    assert (prefill.worker_id, prefill.model, prefill.reason, prefill.prefilled) == ("w-greedy", "demo-qwen2", "prefilled", ("greedy-1",))
    assert (prefill.prefill_steps, prefill.prefill_tokens, prefill.decode_steps) == (1, len(prompt_ids), 0)
    assert (decode.reason, decode.finished, decode.prefill_steps) == ("done", ("greedy-1",), 0)
    assert decode.decode_steps == decode.decode_tokens == GREEDY.max_tokens - 1

    assert token_indexes(chunks) == list(range(GREEDY.max_tokens))
    assert all(c.worker_id == "w-greedy" and c.error is None for c in chunks)
    assert [c.finish_reason for c in chunks] == [None] * (GREEDY.max_tokens - 1) + ["length"]
    assert chunks[-1].usage.prompt_tokens == len(prompt_ids)
    assert chunks[-1].usage.completion_tokens == GREEDY.max_tokens
    assert chunks[0].usage == Usage(len(prompt_ids), 1)  # the usage so far comes first too
    assert all(c.usage is None for c in chunks[1:-1])
    assert token_ids(chunks) == solo_greedy(config, model_store, "demo-qwen2", prompt_ids, GREEDY.max_tokens)


async def test_two_models_progress_together_in_alternating_turns(nats_url, client, prompt_ids):
    sampling = Sampling(max_tokens=48, temperature=0, ignore_eos=True)
    async with running_worker(worker_config(nats_url, "w-two")):
        await client.state("w-two", lambda s: s.ready)
        await client.assign("w-two", "two-llama", "demo-llama", prompt_ids, sampling)
        await client.assign("w-two", "two-qwen", "demo-qwen2", prompt_ids, sampling)
        reports = await take_turns(client, "w-two", {"demo-llama": ["two-llama"], "demo-qwen2": ["two-qwen"]}, 0.0, park=False)
        llama = await client.finished("two-llama")
        qwen = await client.finished("two-qwen")

    assert {r.reason for r in reports} <= {"quota", "done", "idle"} and reports[-1].reason in ("done", "idle")

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
        report = await client.turn("w-resume", "demo-llama", ["resume-1"])
        chunks = await client.finished("resume-1")

    # re-prefilled with the prompt and the resumed tokens: its first token on this worker
    assert report.prefilled == ("resume-1",) and report.prefill_tokens == len(prompt_ids) + 10

    assert token_indexes(chunks) == list(range(10, GREEDY.max_tokens))
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
        await client.turn("w-bad", "demo-qwen2", ["good-after"])
        good = await client.finished("good-after")

    assert len(long) == 1 and long[0].index == 0 and long[0].error.code == 400
    assert "2048 tokens" in long[0].error.message and "context window" in long[0].error.message
    assert zero[0].error.code == 400 and "max_tokens=0" in zero[0].error.message
    assert unknown[0].error.code == 404 and "no-such-model" in unknown[0].error.message
    assert good[-1].finish_reason == "length" and len(token_ids(good)) == GREEDY.max_tokens


async def test_cancel_stops_the_tokens_and_frees_the_kv_pages(nats_url, client, prompt_ids):
    endless = Sampling(max_tokens=4000, temperature=0, ignore_eos=True)
    async with running_worker(worker_config(nats_url, "w-cancel")):
        await client.state("w-cancel", lambda s: s.ready)
        await client.assign("w-cancel", "cancel-1", "demo-llama", prompt_ids, endless)
        turn_id = await client.run_turn("w-cancel", "demo-llama", ["cancel-1"])
        busy = await client.state("w-cancel", lambda s: s.turn_id == turn_id and s.free_kv_pages < s.total_kv_pages)
        await client.until(lambda: len(client.chunks("cancel-1")) >= 3, what="a few tokens")
        await client.cancel("w-cancel", "cancel-1")
        report = await client.report(turn_id)
        idle = await client.state("w-cancel", lambda s: not s.running)
        produced = len(client.chunks("cancel-1"))
        await asyncio.sleep(0.5)

    assert "cancel-1" in busy.running
    assert report.reason == "done" and report.finished == ()
    assert idle.free_kv_pages == idle.total_kv_pages == busy.total_kv_pages and idle.turn_id == 0
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
    assert all(m.block_tokens > 0 and m.weight_bytes > 0 for m in first.models) and first.turn_id == 0
    assert all(m.host_bytes > m.weight_bytes for m in first.models), "a CPU worker's packed copies count"
    assert first.max_running == 32, "a CPU worker asks the router for 32 requests at once"
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
        await client.turn("w-place", "demo-qwen2", ["place-1"])
        chunks = await client.finished("place-1")
        await kv.delete(subjects.PLACEMENT_KEY)

    assert dict((m.name, m.tier) for m in placed.models)["demo-llama"] != "disk"
    assert chunks[-1].finish_reason == "length"


async def test_models_sharing_one_kv_page_take_turns_and_keep_their_tokens(nats_url, client, model_store, prompt_ids):
    # One KV page: each turn parks the other model's KV in host memory; its next turn brings it back.
    config = worker_config(nats_url, "w-tight", kv_arena_bytes=1 << 20, kv_page_bytes=1 << 20)
    async with running_worker(config):
        await client.state("w-tight", lambda s: s.ready and s.total_kv_pages == 1)
        await client.assign("w-tight", "tight-llama", "demo-llama", prompt_ids)
        await client.assign("w-tight", "tight-qwen", "demo-qwen2", prompt_ids)
        requests = {"demo-llama": ["tight-llama"], "demo-qwen2": ["tight-qwen"]}
        reports = await take_turns(client, "w-tight", requests, quota_s=0.01)
        llama = await client.finished("tight-llama")
        qwen = await client.finished("tight-qwen")
        idle = await client.state("w-tight", lambda s: not s.running)

    assert token_ids(llama) == solo_greedy(config, model_store, "demo-llama", prompt_ids, GREEDY.max_tokens)
    assert token_ids(qwen) == solo_greedy(config, model_store, "demo-qwen2", prompt_ids, GREEDY.max_tokens)
    order = [c.request_id for c in client.arrivals]
    assert sum(a != b for a, b in zip(order, order[1:])) >= 2
    assert idle.free_kv_pages == 1
    assert any(r.switch_s > 0 for r in reports)  # weights were switched and KV brought back


async def test_a_new_turn_replaces_the_running_one_and_both_are_reported_in_order(nats_url, client, prompt_ids):
    endless = Sampling(max_tokens=4000, temperature=0, ignore_eos=True)
    async with running_worker(worker_config(nats_url, "w-turns")):
        await client.state("w-turns", lambda s: s.ready)
        await client.assign("w-turns", "turns-1", "demo-llama", prompt_ids, endless)
        first = await client.run_turn("w-turns", "demo-llama", ["turns-1"])
        running = await client.state("w-turns", lambda s: s.turn_id == first)
        await client.until(lambda: len(client.chunks("turns-1")) >= 2, what="two tokens")
        second = await client.run_turn("w-turns", "demo-llama", ["turns-1"], quota_s=0.0)
        await client.report(second)
        await client.cancel("w-turns", "turns-1")
        idle = await client.state("w-turns", lambda s: s.turn_id == 0 and not s.running)

    reports = [r for r in client.reports if r.worker_id == "w-turns"]
    assert [(r.turn_id, r.reason) for r in reports] == [(first, "replaced"), (second, "quota")]
    assert reports[0].idle_s > 0 and reports[1].idle_s == 0  # idle before the first; none between
    assert "turns-1" in running.running and idle.free_kv_pages == idle.total_kv_pages
