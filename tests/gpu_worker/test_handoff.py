"""Disaggregated prefill on one machine: a prefill worker hands a request's KV to a decode
worker through the machine's hand-off area; the decode worker computes no prefill for it,
and the client gets the same tokens as from one worker alone."""

from __future__ import annotations

import pytest
import pytest_asyncio

from services.gpu_worker.echo_engine import EchoEngine
from services.gpu_worker.engine.engine import Engine
from services.gpu_worker.engine.generate import run_to_completion
from services.gpu_worker.engine.handoff import HandoffArea
from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams
from shared.protocol import Sampling, Usage

from .conftest import GREEDY, BusClient, running_worker, token_ids, token_indexes, worker_config
from .thread_harness import Harness, plan

LLAMA = "demo-llama"
PAGE = 4 << 10
"""Two demo-llama tokens a page: the prompt's KV spans several pages."""


@pytest.fixture(scope="module")
def solo(model_store, prompt_ids) -> list[int]:
    """demo-llama's greedy tokens for the prompt, run alone: what the two workers must give."""
    p = plan(model_store, kv_page_bytes=PAGE)
    engine = Engine(p.engine, p.paths)
    try:
        params = SamplingParams(max_tokens=GREEDY.max_tokens, temperature=0, ignore_eos=True)
        return run_to_completion(engine, [EngineRequest("solo", LLAMA, prompt_ids, params)])["solo"].token_ids
    finally:
        engine.close()


@pytest.fixture
def area(tmp_path) -> HandoffArea:
    return HandoffArea(tmp_path / "kv")


def test_the_decode_worker_takes_over_the_kv_and_computes_no_prefill(model_store, prompt_ids, solo, area):
    with (
        Harness(model_store, kv_area=area, kv_page_bytes=PAGE) as prefill,
        Harness(model_store, kv_area=area, kv_page_bytes=PAGE) as decode,
    ):
        prefill.assign("r", LLAMA, prompt_ids, GREEDY)
        prefill.assign("one", LLAMA, prompt_ids, Sampling(max_tokens=1, temperature=0, ignore_eos=True))
        prefill.turn(1, LLAMA, ["r", "one"], until_prefilled=True, hand_off=True)
        handed = prefill.report(1)
        assert area.path("r").exists() and not area.path("one").exists()
        assert prefill.snapshots[-1].running == ()  # it let the request go

        first = prefill.tokens("r")
        decode.assign("r", LLAMA, prompt_ids, GREEDY, resume=first, kv_handoff="r")
        decode.turn(2, LLAMA, ["r"])
        decoded = decode.report(2)
        assert not area.path("r").exists()  # an imported entry is deleted

    assert (handed.prefilled, handed.handed_off, handed.finished) == (("r", "one"), ("r",), ("one",))
    # Both were prefilled there; "one", the same prompt, took its full pages (two tokens each)
    # from the prefix cache, all but the last token's.
    cached = (len(prompt_ids) - 1) // 2 * 2
    assert handed.prefill_tokens == len(prompt_ids) + (len(prompt_ids) - cached)
    assert prefill.chunks["r"][0].finish_reason is None and prefill.chunks["r"][0].error is None
    # The KV moved: the decode worker ran no prefill step for the request, only decode steps.
    assert (decoded.prefill_steps, decoded.prefill_tokens, decoded.reason) == (0, 0, "done")
    assert decoded.decode_steps == GREEDY.max_tokens - 1

    chunks = prefill.chunks["r"] + decode.chunks["r"]
    assert [c.index for c in chunks] == list(range(GREEDY.max_tokens))
    assert first + decode.tokens("r") == solo
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage == Usage(len(prompt_ids), GREEDY.max_tokens)


def test_without_a_usable_entry_the_decode_worker_recomputes_with_the_same_output(model_store, prompt_ids, solo, area):
    # (No prefix cache: the second request would take the first one's pages and compute less.)
    with Harness(model_store, kv_area=area, kv_page_bytes=PAGE, prefix_caching=False) as decode:
        area.directory.mkdir()
        area.path("corrupt").write_bytes(b"TPKV garbage")
        for turn_id, (request_id, entry) in enumerate((("missing", "never-written"), ("corrupt", "corrupt")), 1):
            decode.assign(request_id, LLAMA, prompt_ids, GREEDY, resume=solo[:1], kv_handoff=entry)
            decode.turn(turn_id, LLAMA, [request_id])
            report = decode.report(turn_id)
            assert (report.prefill_steps, report.prefill_tokens) == (1, len(prompt_ids) + 1)
            assert solo[:1] + decode.tokens(request_id) == solo
            assert decode.chunks[request_id][0].index == 1
        assert not area.path("corrupt").exists()  # an unusable entry is deleted too


def test_the_echo_engine_hands_requests_off_without_kv_and_takes_them_over_by_recompute(model_store, prompt_ids, area):
    echo = lambda config, paths: EchoEngine(paths)  # noqa: E731
    with (
        Harness(model_store, engine_class=echo, kv_area=area) as prefill,
        Harness(model_store, engine_class=echo, kv_area=area) as decode,
    ):
        prefill.assign("r", LLAMA, prompt_ids, GREEDY)
        prefill.turn(1, LLAMA, ["r"], until_prefilled=True, hand_off=True)
        assert prefill.report(1).handed_off == ("r",) and not area.path("r").exists()
        decode.assign("r", LLAMA, prompt_ids, GREEDY, resume=prefill.tokens("r"), kv_handoff="r")
        decode.turn(2, LLAMA, ["r"])
        assert decode.report(2).finished == ("r",)
    assert [c.index for c in prefill.chunks["r"] + decode.chunks["r"]] == list(range(GREEDY.max_tokens))


@pytest_asyncio.fixture
async def client(nats_url):
    c = await BusClient.connect(nats_url)
    yield c
    await c.close()


@pytest.mark.asyncio
async def test_two_worker_services_hand_the_kv_over_on_the_bus(nats_url, client, prompt_ids, solo, tmp_path):
    configs = [
        worker_config(nats_url, name, models=(LLAMA,), kv_page_bytes=PAGE, kv_handoff_dir=tmp_path / "kv")
        for name in ("w-prefill", "w-decode")
    ]
    async with running_worker(configs[0]), running_worker(configs[1]):
        for c in configs:
            await client.state(c.worker_id, lambda s: s.ready)
        await client.assign("w-prefill", "moved", LLAMA, prompt_ids)
        await client.state("w-prefill", lambda s: "moved" in s.running)
        handed = await client.turn("w-prefill", LLAMA, ["moved"], until_prefilled=True, hand_off=True)
        first = token_ids(client.chunks("moved"))  # published before the report
        await client.assign("w-decode", "moved", LLAMA, prompt_ids, resume=first, kv_handoff="moved")
        await client.state("w-decode", lambda s: "moved" in s.running)
        decoded = await client.turn("w-decode", LLAMA, ["moved"])
        chunks = await client.finished("moved")

    assert handed.handed_off == ("moved",) and len(first) == 1
    assert (decoded.prefill_tokens, decoded.finished) == (0, ("moved",))
    assert token_indexes(chunks) == list(range(GREEDY.max_tokens))
    assert [c.worker_id for c in chunks for _ in c.token_ids] == ["w-prefill"] + ["w-decode"] * (GREEDY.max_tokens - 1)
    assert token_ids(chunks) == solo
    assert not list((tmp_path / "kv").iterdir())
