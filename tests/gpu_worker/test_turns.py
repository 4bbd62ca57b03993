"""The engine thread runs the router's turns: what each turn computes, why it ends, what it reports."""

import math

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.gpu_worker import engine_thread
from services.gpu_worker.engine.engine import Engine
from services.gpu_worker.engine.generate import run_to_completion
from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams

from .thread_harness import ENDLESS, SHORT, FakeClock, Harness, plan

LLAMA, QWEN = "demo-llama", "demo-qwen2"


@pytest.fixture(scope="module")
def solo(model_store, prompt_ids) -> dict[str, list[int]]:
    """Each model's greedy tokens for the prompt, run alone on the engine: what turns must reproduce."""
    p = plan(model_store)
    engine = Engine(p.engine, p.paths)
    try:
        params = SamplingParams(max_tokens=SHORT.max_tokens, temperature=0, ignore_eos=True)
        requests = [EngineRequest(m, m, prompt_ids, params) for m in (LLAMA, QWEN)]
        return {m: c.token_ids for m, c in run_to_completion(engine, requests).items()}
    finally:
        engine.close()


def test_an_assigned_request_waits_for_a_turn_and_a_turn_without_limit_runs_it_to_the_end(model_store, prompt_ids, solo):
    with Harness(model_store) as w:
        w.assign("r1", LLAMA, prompt_ids)
        w.assign("bad", LLAMA, prompt_ids, SHORT.__class__(max_tokens=0))
        w.turn(1, LLAMA, ["not-here"])
        assert w.report(1).reason == "idle"
        assert not w.chunks["r1"] and "r1" in w.snapshots[-1].running  # held, nothing computed
        assert w.chunks["bad"][0].error.code == 400  # refused at once, no turn needed

        w.turn(2, LLAMA, ["r1"])
        report = w.report(2)

    assert w.tokens("r1") == solo[LLAMA]
    assert report.reason == "done" and report.model == LLAMA and report.worker_id == "w"
    assert (report.prefill_steps, report.prefill_tokens) == (1, len(prompt_ids))
    assert report.decode_steps == report.decode_tokens == SHORT.max_tokens - 1
    # decode step k attends to the prompt and the k tokens produced before it plus its own input
    assert report.decode_context_tokens == sum(len(prompt_ids) + k for k in range(1, SHORT.max_tokens))
    assert report.prefilled == report.finished == ("r1",)
    assert report.prefill_s > 0 and report.decode_s > 0 and report.switch_s >= 0


def test_a_prefill_turn_stops_at_the_first_tokens_and_a_decode_turn_continues(model_store, prompt_ids, solo):
    with Harness(model_store) as w:
        w.assign("a", QWEN, prompt_ids)
        w.assign("b", QWEN, prompt_ids)
        w.turn(1, QWEN, ["a", "b"], until_prefilled=True)
        prefill = w.report(1)
        after_prefill = {r: len(w.tokens(r)) for r in ("a", "b")}
        assert set(w.snapshots[-1].running) == {"a", "b"}  # still held
        w.turn(2, QWEN, ["a", "b"])
        decode = w.report(2)

    assert prefill.reason == "prefilled" and prefill.prefilled == ("a", "b") and prefill.decode_steps == 0
    assert after_prefill == {"a": 1, "b": 1}
    assert decode.reason == "done" and decode.prefilled == () and decode.finished == ("a", "b")
    assert decode.prefill_steps == 0 and decode.decode_tokens == 2 * (SHORT.max_tokens - 1)
    assert w.tokens("a") == w.tokens("b") == solo[QWEN]


def test_a_quota_ends_a_turn_between_steps_and_the_next_turn_goes_on(model_store, prompt_ids, solo):
    with Harness(model_store) as w:
        w.assign("q", LLAMA, prompt_ids)
        w.turn(1, LLAMA, ["q"], quota_s=0.0)  # a quota spent by any step: one step
        first = w.report(1)
        w.turn(2, LLAMA, ["q"], quota_s=1e-6)
        second = w.report(2)
        assert len(w.tokens("q")) == 2
        w.turn(3, LLAMA, ["q"])
        third = w.report(3)

    assert (first.reason, first.prefill_steps, first.decode_steps, first.prefilled) == ("quota", 1, 0, ("q",))
    assert (second.reason, second.prefill_steps, second.decode_steps, second.prefilled) == ("quota", 0, 1, ())
    assert third.reason == "done" and third.finished == ("q",)
    assert w.tokens("q") == solo[LLAMA]


def test_a_new_turn_replaces_the_running_one_at_a_step_boundary(model_store, prompt_ids):
    clock = FakeClock()
    with Harness(model_store, clock=clock) as w:
        w.assign("long", LLAMA, prompt_ids, ENDLESS)
        clock.advance(2.5)
        w.turn(1, LLAMA, ["long"])
        w.pump(lambda: len(w.tokens("long")) >= 3, what="a few tokens")
        assert w.snapshots[-1].turn_id == 1
        w.turn(2, LLAMA, ["long"], quota_s=0.0)
        w.pump(lambda: len(w.reports) == 2, what="two reports")
        w.turn(3, LLAMA, ["long"])
        w.turn(4, LLAMA, ["long"])  # 3 is replaced at its first step boundary, or before it started
        w.turn(5, LLAMA, ["long"], quota_s=0.0)
        w.report(5)
        assert w.snapshots[-1].turn_id == 0
        w.cancel("long")

    assert [(r.turn_id, r.reason) for r in w.reports] == [
        (1, "replaced"), (2, "quota"), (3, "replaced"), (4, "replaced"), (5, "quota")
    ]
    assert w.reports[0].idle_s == 2.5  # waited with nothing to run before turn 1
    assert w.reports[0].decode_steps >= 1 and w.reports[1].decode_steps == 1
    assert all(r.idle_s == 0 for r in w.reports[1:])  # each took over from the one before
    chunks = w.chunks["long"]
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.error is None for c in chunks)


def test_two_models_take_turns_parking_each_others_kv_and_keep_their_tokens(model_store, prompt_ids, solo):
    with Harness(model_store) as w:
        w.assign("l", LLAMA, prompt_ids)
        w.assign("q", QWEN, prompt_ids)
        turn_id, parked_seen, switches = 0, 0, []
        while not (w.chunks["l"] and w.chunks["l"][-1].finish_reason) or not (w.chunks["q"] and w.chunks["q"][-1].finish_reason):
            for model, mine, other in ((LLAMA, "l", "q"), (QWEN, "q", "l")):
                turn_id += 1
                w.turn(turn_id, model, [mine], quota_s=0.0, park=(other,))
                switches.append(w.report(turn_id).switch_s)
                stats = w.snapshots[-1].stats
                parked_seen += stats.swapped == 1 and stats.active == model
        stats = w.snapshots[-1].stats

    assert w.tokens("l") == solo[LLAMA] and w.tokens("q") == solo[QWEN]
    assert parked_seen >= 4  # the other model's KV sat in host memory while this one computed
    assert all(s >= 0 for s in switches)
    assert stats.free_pages == stats.total_pages and stats.free_host_pages == stats.total_host_pages


def test_a_prefetch_copies_the_next_model_while_the_turn_computes(model_store, prompt_ids):
    with Harness(model_store) as w:
        tiers = dict(w.snapshots[-1].stats.models)
        assert tiers == {LLAMA: "device", QWEN: "host"}  # the first model is active after start-up
        w.assign("l", LLAMA, prompt_ids)
        w.turn(1, LLAMA, ["l"], quota_s=0.0, prefetch=QWEN)
        report = w.report(1)
        w.turn(2, QWEN, [], prefetch=LLAMA)  # already on the device: nothing to do
        w.report(2)
        w.cancel("l")

    assert report.reason == "quota"
    assert dict(w.snapshots[-1].stats.models) == {LLAMA: "device", QWEN: "device"}


def test_cancel_during_a_turn_stops_the_request_and_ends_the_turn(model_store, prompt_ids):
    with Harness(model_store) as w:
        w.assign("c", QWEN, prompt_ids, ENDLESS)
        w.turn(1, QWEN, ["c"])
        w.pump(lambda: len(w.tokens("c")) >= 2, what="two tokens")
        w.cancel("c")
        report = w.report(1)
        produced = len(w.chunks["c"])
        w.turn(2, QWEN, ["c"])
        assert w.report(2).reason == "idle"
        stats = w.snapshots[-1].stats

    assert report.reason == "done" and report.finished == ()
    assert len(w.chunks["c"]) == produced and all(c.finish_reason is None and c.error is None for c in w.chunks["c"])
    assert stats.free_pages == stats.total_pages and not w.snapshots[-1].running


def test_cancelling_one_of_two_leaves_the_turn_running_for_the_other(model_store, prompt_ids, solo):
    with Harness(model_store) as w:
        w.assign("x", LLAMA, prompt_ids, ENDLESS)
        w.assign("y", LLAMA, prompt_ids)
        w.turn(1, LLAMA, ["x", "y"])
        w.pump(lambda: len(w.tokens("x")) >= 2, what="two tokens")
        w.cancel("x")
        report = w.report(1)

    assert report.reason == "done" and report.finished == ("y",)
    assert w.tokens("y") == solo[LLAMA]


def test_stop_during_a_turn_releases_everything_silently(model_store, prompt_ids):
    w = Harness(model_store)
    w.assign("s", LLAMA, prompt_ids, ENDLESS)
    w.turn(1, LLAMA, ["s"])
    w.pump(lambda: len(w.tokens("s")) >= 2, what="two tokens")
    w.stop()

    assert all(c.error is None and c.finish_reason is None for c in w.chunks["s"])
    assert not w.snapshots[-1].running
    assert not w.reports  # the router learns from the worker's last state that it left


def test_turns_for_unknown_models_or_other_models_requests_do_nothing_harmful(model_store, prompt_ids, solo, caplog):
    with Harness(model_store) as w:
        w.assign("l", LLAMA, prompt_ids)
        w.assign("q", QWEN, prompt_ids)
        w.turn(1, "no-such-model", ["l"])
        w.report(1)
        w.turn(2, QWEN, ["l"])  # l is demo-llama's: ignored
        w.report(2)
        w.turn(3, QWEN, ["l", "q"])
        third = w.report(3)

    assert [(r.turn_id, r.reason) for r in w.reports[:2]] == [(1, "idle"), (2, "idle")]
    assert third.reason == "done" and third.finished == ("q",)
    assert w.tokens("q") == solo[QWEN] and not w.chunks["l"]
    assert "lists request l of demo-llama; ignoring that request" in caplog.text


class EngineWithOneBadStep(Engine):
    """A real engine whose first step of demo-qwen2 raises, as a CUDA error or a bug would."""

    failed = False

    def step(self, request_ids=None):
        if self.active == QWEN and not self.failed:
            self.failed = True
            raise RuntimeError("simulated device fault")
        return super().step(request_ids)


def test_a_failing_step_fails_the_turns_requests_with_500_and_the_worker_goes_on(model_store, prompt_ids, solo):
    with Harness(model_store, engine_class=EngineWithOneBadStep) as w:
        w.assign("ok", LLAMA, prompt_ids)
        w.assign("doomed", QWEN, prompt_ids)
        w.assign("waiting", QWEN, prompt_ids)
        w.turn(1, QWEN, ["doomed"])
        failed = w.report(1)
        w.turn(2, QWEN, ["waiting"])
        w.report(2)
        w.turn(3, LLAMA, ["ok"])
        w.report(3)

    assert failed.reason == "error"
    doomed = w.chunks["doomed"][-1]
    assert doomed.error.code == 500 and "simulated device fault" in doomed.error.message
    assert w.tokens("waiting") == solo[QWEN]  # not in the failed turn: untouched
    assert w.tokens("ok") == solo[LLAMA]
    assert [r.reason for r in w.reports] == ["error", "done", "done"]


def test_the_snapshot_names_the_running_turn_and_each_models_shape(model_store, prompt_ids):
    with Harness(model_store) as w:
        idle = w.snapshots[-1]
        w.assign("t", LLAMA, prompt_ids, ENDLESS)
        w.turn(42, LLAMA, ["t"])
        w.pump(lambda: w.tokens("t"), what="a token")
        running = w.snapshots[-1]
        w.cancel("t")
        w.report(42)
        after = w.snapshots[-1]

    assert (idle.turn_id, running.turn_id, after.turn_id) == (0, 42, 0)
    shapes = dict(idle.shapes)
    assert set(shapes) == {LLAMA, QWEN}
    assert all(s.block_tokens > 0 and s.weight_bytes > 0 for s in shapes.values())
    assert math.isfinite(shapes[LLAMA].weight_bytes)


def test_each_turn_is_a_span_with_what_the_router_asked_and_how_it_went(model_store, prompt_ids, monkeypatch):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(engine_thread, "tracer", lambda: provider.get_tracer("test"))
    with Harness(model_store) as w:
        w.assign("q", QWEN, prompt_ids)
        w.turn(1, QWEN, ["q"], quota_s=0.0)
        w.report(1)
        w.turn(2, QWEN, ["q"])
        w.report(2)

    spans = exporter.get_finished_spans()
    turns = [dict(s.attributes) for s in spans if s.name == "worker.turn"]
    assert [(t["turn_id"], t["model"], t["reason"]) for t in turns] == [(1, QWEN, "quota"), (2, QWEN, "done")]
    assert (turns[0]["quota_s"], turns[0]["prefill_steps"], turns[0]["decode_steps"]) == (0.0, 1, 0)
    assert (turns[1]["quota_s"], turns[1]["decode_steps"]) == (math.inf, SHORT.max_tokens - 1)
    assert all(t["switch_s"] >= 0 for t in turns)
    switch = next(s for s in spans if s.name == "worker.model_switch")
    first_turn = next(s for s in spans if s.name == "worker.turn")
    assert dict(switch.attributes) == {"from": LLAMA, "to": QWEN}
    assert switch.parent.span_id == first_turn.context.span_id


def test_a_newcomer_assigned_while_a_finished_admitting_turn_lingers_joins_that_turn(model_store, prompt_ids, solo):
    clock = FakeClock()
    with Harness(model_store, clock=clock, linger_s=0.005) as w:
        w.assign("r1", LLAMA, prompt_ids)
        w.turn(1, LLAMA, ["r1"], admit_new=True)
        w.finished("r1")
        w.assign("r2", LLAMA, prompt_ids)  # the clock stands still: the turn still lingers
        w.finished("r2")
        assert not w.reports, "the turn ended before its linger was over"
        clock.advance(0.01)
        report = w.report(1)
    assert report.reason == "done" and report.finished == ("r1", "r2")
    assert w.tokens("r2") == solo[LLAMA]
