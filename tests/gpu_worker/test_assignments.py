"""AssignRequest to engine request and engine outputs to TokenChunks: resume arithmetic, errors, reports."""

import pytest

from services.gpu_worker.assignments import assignment, engine_request, error_info, finished_chunk, token_chunk
from services.gpu_worker.engine.engine import EngineStats, StepOutput
from services.gpu_worker.engine.errors import CheckpointError, InvalidRequestError, UnknownModelError
from services.gpu_worker.commands import ModelShape, Snapshot
from services.gpu_worker.reporter import worker_state
from shared.protocol import AssignRequest, GenerateRequest, ModelResidency, Sampling, Usage


def assign(prompt=(1, 2, 3), max_tokens=10, resume=()):
    request = GenerateRequest("r1", "demo-llama", prompt, Sampling(max_tokens=max_tokens, temperature=0), "tp.tokens.r1")
    return AssignRequest(request, resume)


def test_resumed_tokens_extend_the_prompt_and_count_against_max_tokens():
    msg = assign(max_tokens=10, resume=(7, 8, 9))
    request = engine_request(msg, context_length=None)
    assert request.prompt_token_ids == (1, 2, 3, 7, 8, 9)
    assert request.params.max_tokens == 7
    assert request.params.temperature == 0


def test_indices_and_usage_of_a_resumed_request_continue_from_the_resumed_tokens():
    a = assignment(assign(max_tokens=5, resume=(7, 8, 9)))
    first = token_chunk(a, StepOutput("r1", "demo-llama", 42, 0, None, None), "w1")
    # The re-prefill found 5 of its 6 tokens (prompt and resumed) cached: the client's prompt is 3.
    last = token_chunk(a, StepOutput("r1", "demo-llama", 43, 1, -0.5, "length", cached_tokens=5), "w1")
    assert (first.index, first.token_ids, first.worker_id) == (3, (42,), "w1")
    assert (last.index, last.finish_reason, last.logprobs) == (4, "length", (-0.5,))
    assert last.usage == Usage(prompt_tokens=3, completion_tokens=5, cached_tokens=3)


def test_the_first_chunk_carries_the_usage_so_far_and_the_middle_ones_none():
    """So that a gateway ending the request early on a stop string knows its cached tokens."""
    a = assignment(assign(prompt=(1, 2, 3, 4), max_tokens=3))
    outs = [StepOutput("r1", "demo-llama", 40 + i, i, None, "length" if i == 2 else None, cached_tokens=2) for i in range(3)]
    first, middle, last = (token_chunk(a, out, "w1") for out in outs)
    assert first.usage == Usage(prompt_tokens=4, completion_tokens=1, cached_tokens=2)
    assert middle.usage is None
    assert last.usage == Usage(prompt_tokens=4, completion_tokens=3, cached_tokens=2)


def test_every_sampling_value_reaches_the_engine_and_a_resumed_request_says_how_many_tokens_are_its_own():
    sampling = Sampling(
        max_tokens=10, temperature=0.5, logprobs=True, top_logprobs=4, presence_penalty=0.5,
        frequency_penalty=-0.25, repetition_penalty=1.1, logit_bias=((5, -100.0), (9, 2.5)),
    )
    msg = AssignRequest(GenerateRequest("r1", "demo-llama", (1, 2, 3), sampling, "tp.tokens.r1"), (7, 8))
    request = engine_request(msg, context_length=None)
    p = request.params
    assert (p.logprobs, p.top_logprobs, p.presence_penalty, p.frequency_penalty) == (True, 4, 0.5, -0.25)
    assert (p.repetition_penalty, p.logit_bias, request.resumed) == (1.1, ((5, -100.0), (9, 2.5)), 2)
    top = ((42, -0.1), (7, -2.5))
    chunk = token_chunk(assignment(msg), StepOutput("r1", "demo-llama", 42, 0, -0.1, None, top), "w1")
    assert (chunk.index, chunk.logprobs, chunk.top_logprobs) == (2, (-0.1,), (top,))


def test_a_request_whose_resumed_tokens_reached_max_tokens_just_ends():
    msg = assign(max_tokens=3, resume=(7, 8, 9))
    assert engine_request(msg, None) is None
    chunk = finished_chunk(assignment(msg), "w1")
    assert (chunk.index, chunk.token_ids, chunk.finish_reason, chunk.usage) == (3, (), "length", Usage(3, 3))


def test_catalog_context_length_caps_the_request():
    assert engine_request(assign(prompt=(1,) * 6, max_tokens=100), context_length=10).params.max_tokens == 4
    with pytest.raises(InvalidRequestError, match="10 tokens; model 'demo-llama' is served with a context window of 10"):
        engine_request(assign(prompt=(1,) * 8, resume=(2, 2)), context_length=10)


def test_invalid_max_tokens_is_left_for_the_engine_to_explain():
    assert engine_request(assign(max_tokens=0), context_length=10).params.max_tokens == 0


@pytest.mark.parametrize(
    "exc, code",
    [(InvalidRequestError("bad"), 400), (UnknownModelError("who"), 404), (CheckpointError("disk"), 500), (RuntimeError("x"), 500)],
)
def test_error_codes(exc, code):
    info = error_info(exc)
    assert info.code == code and str(exc) in info.message


def test_worker_state_from_a_snapshot():
    stats = EngineStats("demo-llama", {"demo-llama": "device"}, 100, 90, 200, 200, 0, 1, 0)
    shapes = (("demo-llama", ModelShape(512, 62_000_000)), ("demo-qwen2", ModelShape(256, 70_000_000)))
    snapshot = Snapshot(True, stats, ("r1",), turn_id=9, shapes=shapes)
    state = worker_state("w1", ["demo-llama", "demo-qwen2"], "cpu", snapshot, True, 7, 123.0)
    assert state.ready and state.active_model == "demo-llama" and state.running == ("r1",) and state.turn_id == 9
    assert state.models == (
        ModelResidency("demo-llama", "device", 512, 62_000_000),
        ModelResidency("demo-qwen2", "disk", 256, 70_000_000),
    )
    assert (state.free_kv_pages, state.total_kv_pages, state.seq, state.ts) == (90, 100, 7, 123.0)
    draining = worker_state("w1", ["demo-llama"], "cpu", Snapshot(True, stats, ()), False, 8, 124.0)
    assert not draining.ready and draining.turn_id == 0
    assert draining.models == (ModelResidency("demo-llama", "device"),)  # no shape known: zeros


def test_requests_the_engine_thread_has_not_taken_yet_are_reported_running_once():
    stats = EngineStats("demo-llama", {"demo-llama": "device"}, 100, 90, 200, 200, 0, 1, 0)
    snapshot = Snapshot(True, stats, ("r1",), running_models=("demo-llama",))
    queued = {"r1": "demo-llama", "r2": "demo-qwen2"}  # r1: taken since, the snapshot shows it
    state = worker_state("w1", ["demo-llama", "demo-qwen2"], "cpu", snapshot, True, 7, 123.0, queued=queued)
    assert (state.running, state.running_models) == (("r1", "r2"), ("demo-llama", "demo-qwen2"))


def test_worker_state_before_the_engine_exists_is_not_ready():
    state = worker_state("w1", ["demo-llama"], "cpu", None, True, 1, 0.0)
    assert not state.ready and state.models == (ModelResidency("demo-llama", "disk"),)
