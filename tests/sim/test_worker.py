"""The simulated worker against the RunTurn contract, driven by hand (no router)."""

import dataclasses
import math

import pytest

from services.sim.cost import CostModel
from services.sim.device import DeviceLayout, pages_for
from services.sim.events import EventLoop
from services.sim.worker import Outbox, SimWorker, SimWorkerConfig
from shared.protocol import AssignRequest, GenerateRequest, RunTurn, Sampling


class Rig:
    def __init__(self, models=("a", "b"), arch="qwen2.5-7b", config=None):
        self.loop = EventLoop()
        self.cost = CostModel.for_models("H100", {m: arch for m in models})
        self.chunks, self.reports = [], []
        self.published = []
        """(time, chunk) as the worker published them (a stretch's chunks carry several tokens)."""
        outbox = Outbox(self._chunks, self.reports.append, lambda s: None)
        self.worker = SimWorker("w", self.loop, self.cost, list(models), outbox, config)

    def _chunks(self, chunks, made_at=None):
        """Keeps one (time made, one-token chunk) per token, as a client sees them."""
        for i, c in enumerate(chunks):
            self.published.append((self.loop.now, c))
            n = len(c.token_ids)
            if n == 0:  # an error, or the end of a request resumed complete
                self.chunks.append((self.loop.now, c))
            for k in range(n):
                last = k == n - 1
                token = dataclasses.replace(
                    c, index=c.index + k, token_ids=c.token_ids[k : k + 1],
                    finish_reason=c.finish_reason if last else None, usage=c.usage if last else None,
                )  # fmt: skip
                self.chunks.append((self.loop.now if made_at is None else made_at[i][k], token))

    def assign(self, rid, model="a", prompt=100, max_tokens=10, resume=()):
        request = GenerateRequest(rid, model, (1,) * prompt, Sampling(max_tokens=max_tokens, ignore_eos=True), "t")
        self.worker.assign(AssignRequest(request, tuple(resume)))

    def turn(self, turn_id, model, rids, quota=math.inf, **kw):
        self.worker.run_turn(RunTurn(turn_id, model, tuple(rids), quota, **kw))

    def tokens(self, rid):
        return [(t, c) for t, c in self.chunks if c.request_id == rid]

    def switch_in_s(self, model):
        return self.cost.copy_in_s(self.cost.weight_bytes(model)) + self.cost.switch_fixed_s


def test_a_prefill_turn_switches_the_model_in_prefills_and_ends_when_every_request_has_a_token():
    rig = Rig()
    rig.assign("r1", prompt=300)
    rig.assign("r2", prompt=200)
    rig.turn(1, "a", ["r1", "r2"], until_prefilled=True)
    rig.loop.run()
    [report] = rig.reports
    switch = rig.switch_in_s("a")
    prefill = rig.cost.prefill_step_s("a", 500, 300**2 + 200**2)  # two prompts: attention per prompt
    assert report.reason == "prefilled"
    assert report.switch_s == pytest.approx(switch)
    assert (report.prefill_steps, report.prefill_tokens, report.decode_steps) == (1, 500, 0)
    assert report.prefill_s == pytest.approx(prefill)
    assert set(report.prefilled) == {"r1", "r2"}
    t, chunk = rig.tokens("r1")[0]
    assert chunk.index == 0 and t == pytest.approx(switch + prefill)


def test_a_decode_turn_runs_its_requests_to_the_end_and_reports_done():
    rig = Rig()
    rig.assign("r1", max_tokens=10)
    rig.turn(1, "a", ["r1"], until_prefilled=True)
    rig.loop.run()
    rig.turn(2, "a", ["r1"])
    rig.loop.run()
    report = rig.reports[-1]
    assert report.reason == "done" and report.switch_s == 0.0
    assert (report.decode_steps, report.decode_tokens, report.finished) == (9, 9, ("r1",))
    chunks = [c for _, c in rig.tokens("r1")]
    assert [c.index for c in chunks] == list(range(10))
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 10
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert rig.worker.device.free_pages == rig.worker.device.total_pages


def test_a_turn_ends_at_the_first_step_boundary_past_its_quota():
    rig = Rig()
    rig.assign("r1", max_tokens=1000)
    rig.turn(1, "a", ["r1"], until_prefilled=True)
    rig.loop.run()
    rig.turn(2, "a", ["r1"], quota=0.05)
    rig.loop.run()
    report = rig.reports[-1]
    step = report.decode_s / report.decode_steps
    assert report.reason == "quota"
    assert 0.05 <= report.decode_s < 0.05 + step
    assert rig.worker.state().turn_id == 0  # idle, waiting for the next turn


def test_a_newer_turn_replaces_the_running_one_at_a_step_boundary_and_every_turn_is_reported():
    rig = Rig()
    rig.assign("r1", max_tokens=1000)
    rig.assign("r2", model="b", max_tokens=1000)
    rig.turn(1, "a", ["r1"], until_prefilled=True)
    rig.loop.run()
    rig.turn(2, "a", ["r1"])
    rig.loop.run(until=rig.loop.now + 1.0)
    assert rig.worker.state().turn_id == 2
    rig.turn(3, "a", ["r1"])  # superseded before it starts
    rig.turn(4, "b", ["r2"], until_prefilled=True)
    rig.loop.run()
    assert [(r.turn_id, r.reason) for r in rig.reports] == [
        (1, "prefilled"),
        (2, "replaced"),
        (3, "replaced"),
        (4, "prefilled"),
    ]
    replaced, skipped, new = rig.reports[1:]
    assert replaced.decode_steps > 0
    assert (skipped.decode_steps, skipped.prefill_steps, skipped.switch_s) == (0, 0, 0.0)
    assert new.switch_s == pytest.approx(rig.switch_in_s("b"))
    assert new.ts == pytest.approx(replaced.ts + new.switch_s + new.prefill_s)


def test_a_turn_with_nothing_to_run_ends_idle_at_once():
    rig = Rig()
    rig.turn(1, "a", ["nobody"])
    rig.loop.run()
    [report] = rig.reports
    assert report.reason == "idle" and report.prefill_steps == report.decode_steps == 0


def test_parked_kv_goes_to_host_memory_and_comes_back_as_part_of_the_next_turns_switch():
    rig = Rig()
    device = rig.worker.device
    rig.assign("r1", prompt=1000, max_tokens=1000)
    rig.assign("r2", model="b", prompt=10, max_tokens=1000)
    rig.turn(1, "a", ["r1"], until_prefilled=True)
    rig.loop.run()
    r1_pages = device.total_pages - device.free_pages
    assert r1_pages == pages_for(1000, device.block_tokens["a"])
    rig.turn(2, "b", ["r2"], until_prefilled=True, park=("r1",))
    rig.loop.run()
    assert rig.worker.seqs["r1"].state == "parked"
    assert device.host_pages_total - device.host_pages_free == r1_pages
    rig.turn(3, "a", ["r1"], quota=0.05)
    rig.loop.run()
    back = rig.reports[-1]
    # Both 7B models fit in the weight region, so "a" is still resident: the switch is the KV swap-in.
    assert back.switch_s == pytest.approx(rig.cost.copy_in_s(r1_pages * device.page_bytes))
    assert back.decode_steps > 0


def test_a_prefetch_hides_the_next_switch_behind_the_current_turn():
    rig = Rig(models=("a", "b", "c"), config=SimWorkerConfig(layout=DeviceLayout(weight_region_bytes=40 * 10**9)))
    for rid, model in (("ra", "a"), ("rb", "b"), ("rc", "c")):
        rig.assign(rid, model=model, max_tokens=1000)
    rig.turn(1, "a", ["ra"], until_prefilled=True)
    rig.loop.run()
    rig.turn(2, "b", ["rb"], until_prefilled=True)  # evicts nothing: a and b fit
    rig.loop.run()
    copy = rig.cost.copy_in_s(rig.cost.weight_bytes("c"))
    rig.turn(3, "b", ["rb"], quota=copy + 0.05, prefetch="c")
    rig.loop.run()
    rig.turn(4, "c", ["rc"], until_prefilled=True)
    rig.loop.run()
    assert rig.reports[-1].switch_s == 0.0
    assert rig.worker.device.tier("a") == "host"  # evicted to make room for c


def test_state_reports_tiers_page_sizes_weights_and_the_running_turn():
    rig = Rig(models=("a", "big"), arch="qwen2.5-7b")
    state = rig.worker.state()
    assert state.total_kv_pages > 0 and state.free_kv_pages == state.total_kv_pages
    assert {m.name: m.tier for m in state.models} == {"a": "host", "big": "host"}
    a = state.models[0]
    assert a.weight_bytes == rig.cost.weight_bytes("a") and a.block_tokens == rig.worker.device.block_tokens["a"]
    rig.assign("r1", max_tokens=100)
    rig.turn(7, "a", ["r1"])
    rig.loop.run(until=0.5)
    state = rig.worker.state()
    assert state.turn_id == 7 and state.active_model == "a" and state.running == ("r1",)
    assert {m.name: m.tier for m in state.models}["a"] == "device"


def test_a_request_the_kv_cache_can_never_hold_gets_an_error_chunk():
    rig = Rig(models=("a",), config=SimWorkerConfig(layout=DeviceLayout(weight_region_bytes=70 * 10**9)))
    too_long = rig.worker.device.total_pages * rig.worker.device.block_tokens["a"] + 1
    rig.assign("r1", prompt=too_long)
    [(_, chunk)] = rig.chunks
    assert chunk.error.code == 400 and "KV cache" in chunk.error.message
    assert "r1" not in rig.worker.seqs


def test_a_cancelled_request_stops_and_its_turn_ends_done():
    rig = Rig()
    rig.assign("r1", max_tokens=1000)
    rig.turn(1, "a", ["r1"])
    rig.loop.run(until=1.0)
    rig.worker.cancel("r1")
    rig.loop.run()
    produced = len(rig.tokens("r1"))
    assert rig.reports[-1].reason == "done" and produced < 1000
    assert rig.worker.device.free_pages == rig.worker.device.total_pages


def decode_run(config):
    rig = Rig(config=config)
    rig.assign("r1", max_tokens=40)
    rig.assign("r2", max_tokens=25)
    rig.turn(1, "a", ["r1", "r2"], until_prefilled=True)
    rig.loop.run()
    rig.turn(2, "a", ["r1", "r2"], quota=0.3)
    rig.loop.run()
    return rig


def test_stretches_of_decode_steps_give_clients_the_same_tokens_at_the_same_times_as_single_steps():
    one, stretched = decode_run(SimWorkerConfig(max_stretch_steps=1)), decode_run(SimWorkerConfig(max_stretch_steps=8))
    for rid in ("r1", "r2"):
        a, b = one.tokens(rid), stretched.tokens(rid)
        assert [c.index for _, c in a] == [c.index for _, c in b]
        assert [t for t, _ in a] == pytest.approx([t for t, _ in b])
    strip = lambda r: dataclasses.replace(r, ts=0.0)  # noqa: E731
    assert [strip(r) for r in one.reports] == pytest.approx([strip(r) for r in stretched.reports])
    # fewer, fuller chunks: the router hears of a stretch's tokens at its end
    assert len(stretched.published) < len(one.published) / 3


def test_a_command_during_a_stretch_is_seen_at_the_next_step_boundary():
    rig = Rig()
    rig.assign("r1", max_tokens=100)
    rig.turn(1, "a", ["r1"], until_prefilled=True)
    rig.loop.run()
    rig.turn(2, "a", ["r1"])
    step = rig.cost.decode_step_s("a", 1, 101)
    rig.loop.run(until=rig.loop.now + 2.5 * step)  # inside the first stretch
    cut_at = rig.loop.now
    rig.turn(3, "b", [])
    rig.loop.run()
    replaced = next(r for r in rig.reports if r.turn_id == 2)
    assert replaced.reason == "replaced" and replaced.decode_steps == 3  # the step under way finished
    made = [t for t, _ in rig.tokens("r1")]
    assert made[-1] <= cut_at + step
