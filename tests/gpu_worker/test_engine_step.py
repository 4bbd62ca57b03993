"""Engine.step(request_ids): a turn's batch steps alone, the rest of the model waits, outputs do not change."""

import pytest

from services.gpu_worker.config import WorkerConfig, plan_engine
from services.gpu_worker.engine.engine import Engine, StepInfo
from services.gpu_worker.engine.generate import run_to_completion
from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams
from shared.catalog import load_catalog

from .conftest import CATALOG

MODEL = "demo-llama"
PARAMS = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)


def make_engine(model_store, **overrides) -> Engine:
    config = WorkerConfig(models=(MODEL,), catalog=CATALOG, **overrides)
    plan = plan_engine(config, load_catalog(CATALOG, model_store.root))
    engine = Engine(plan.engine, plan.paths)
    engine.activate(MODEL)
    return engine


@pytest.fixture
def engine(model_store):
    e = make_engine(model_store)
    yield e
    e.close()


@pytest.fixture(scope="module")
def solo(model_store, prompt_ids) -> list[int]:
    e = make_engine(model_store)
    try:
        return run_to_completion(e, [EngineRequest("solo", MODEL, prompt_ids, PARAMS)])["solo"].token_ids
    finally:
        e.close()


def tokens_of(outputs, request_id):
    return [o.token_id for o in outputs if o.request_id == request_id]


def test_only_the_listed_requests_step_and_last_step_says_what_was_computed(engine, prompt_ids, solo):
    engine.add_request(EngineRequest("a", MODEL, prompt_ids, PARAMS))
    engine.add_request(EngineRequest("b", MODEL, prompt_ids, PARAMS))
    n = len(prompt_ids)

    first = engine.step(["a"])
    assert [o.request_id for o in first] == ["a"]
    assert engine.last_step == StepInfo(is_prefill=True, num_seqs=1, num_tokens=n, context_tokens=n)
    second = engine.step(["a", "not-here"])
    assert engine.last_step == StepInfo(is_prefill=False, num_seqs=1, num_tokens=1, context_tokens=n + 1)
    assert engine.sequence("b").num_cached == 0 and not engine.sequence("b").pages  # b waited, untouched

    outputs = first + second
    while engine.has_work():
        outputs += engine.step()  # both now: b's prefill first, then decodes of a and b together
    assert tokens_of(outputs, "a") == tokens_of(outputs, "b") == solo


def test_a_step_with_nothing_listed_runs_nothing(engine, prompt_ids):
    engine.add_request(EngineRequest("a", MODEL, prompt_ids, PARAMS))
    assert engine.step([]) == [] and engine.last_step is None
    assert engine.step(["other"]) == [] and engine.last_step is None
    assert engine.sequence("a").num_cached == 0


def test_only_listed_requests_come_back_from_host_memory(engine, prompt_ids, solo):
    for r in ("a", "b"):
        engine.add_request(EngineRequest(r, MODEL, prompt_ids, PARAMS))
    outputs = engine.step()
    assert engine.swap_out(model=MODEL) == 2

    outputs += engine.step(["b"])
    assert engine.stats().swapped == 1 and engine.sequence("a").host_pages and engine.sequence("b").pages
    while engine.has_work():
        outputs += engine.step(["a", "b"])
    assert tokens_of(outputs, "a") == tokens_of(outputs, "b") == solo
    stats = engine.stats()
    assert stats.free_pages == stats.total_pages and stats.free_host_pages == stats.total_host_pages


def test_with_one_kv_page_the_listed_request_parks_the_other_and_both_keep_their_tokens(model_store, prompt_ids, solo):
    engine = make_engine(model_store, kv_arena_bytes=1 << 20, kv_page_bytes=1 << 20)
    try:
        assert engine.stats().total_pages == 1
        for r in ("a", "b"):
            engine.add_request(EngineRequest(r, MODEL, prompt_ids, PARAMS))
        outputs = []
        while engine.has_work():
            for r in ("a", "b"):  # one step each, alternating: each step needs the other parked
                outputs += engine.step([r])
                assert engine.last_step is not None or not engine.sequence(r)
        assert tokens_of(outputs, "a") == tokens_of(outputs, "b") == solo
        assert engine.stats().free_pages == 1
    finally:
        engine.close()
