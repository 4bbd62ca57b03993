"""Random sequences of submits, worker reports, token chunks, turns, cancels and worker deaths.

Simulated workers obey the router (hold what they are assigned, drop what is cancelled,
report what they hold, run the latest turn, produce deterministic tokens). Whatever the
sequence: every request ends exactly once (Done or Reject), none is held by two workers the
router counts as live, a resumed request carries exactly the tokens produced so far, every
turn lists only requests its worker holds for that model, the KV the scheduler keeps on a
device fits in it, and at the end nothing is left hanging.
"""

from collections import Counter
from dataclasses import replace

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from services.router.config import PolicyConfig
from services.router.decisions import Assign, Cancel, Done, Reject, StartTurn
from services.router.policy import RouterPolicy
from services.router.turns.held import pages_for
from shared.protocol import TurnReport

from .builders import MODELS, request, state, tokens

CONFIG = PolicyConfig(worker_timeout_s=2.0, no_worker_grace_s=3.0, max_queue_per_model=4, max_running_per_worker=3)
BLOCK_TOKENS, TOTAL_PAGES = 4, 8
MAX_TOKENS = 16  # builders.request's default


def token(rid: str, index: int) -> int:
    return int(rid[1:]) * 1000 + index


class SimWorker:
    def __init__(self, worker_id: str, serving: tuple[str, ...]):
        self.worker_id, self.serving = worker_id, serving
        self.alive, self.silent, self.seq = True, False, 0
        self.holding: dict[str, int] = {}
        """Request id -> next token index."""
        self.turn = None
        """The latest RunTurn it got."""


class RouterMachine(RuleBasedStateMachine):
    config = CONFIG
    def __init__(self):
        super().__init__()
        self.now = 0.0
        self.policy = RouterPolicy(MODELS, self.config, now=self.now)
        self.workers: list[SimWorker] = []
        self.submitted: list[str] = []
        self.models: dict[str, str] = {}
        self.tenants: dict[str, str] = {}
        self.ends: dict[str, int] = {}
        self.chunks = []
        self.seen: dict[str, set[int]] = {}
        """Token indices of each request the router was shown."""

    # ---- the world acting on the router ----------------------------------------------

    @initialize(n=st.integers(1, 3))
    def start_pool(self, n):
        for _ in range(n):
            self.start_worker(set(MODELS))

    @rule(serving=st.sets(st.sampled_from(MODELS), min_size=1))
    def start_worker(self, serving):
        worker = SimWorker(f"w{len(self.workers)}", tuple(sorted(serving)))
        self.workers.append(worker)
        self.report_from(worker)

    @precondition(lambda self: self.workers)
    @rule(i=st.integers(0, 50))
    def report(self, i):
        worker = self.workers[i % len(self.workers)]
        if worker.alive:
            self.report_from(worker)

    @precondition(lambda self: self.workers)
    @rule(i=st.integers(0, 50))
    def kill(self, i):
        self.workers[i % len(self.workers)].alive = False

    @precondition(lambda self: self.workers)
    @rule(i=st.integers(0, 50))
    def restart(self, i):
        """A new process under the same id: it holds nothing and counts its reports from 1 again."""
        worker = self.workers[i % len(self.workers)]
        worker.alive, worker.silent, worker.seq, worker.holding, worker.turn = True, False, 0, {}, None
        self.now += 0.1
        self.report_from(worker)

    @precondition(lambda self: self.busy())
    @rule(i=st.integers(0, 50))
    def kill_busy(self, i):
        busy = self.busy()
        busy[i % len(busy)].alive = False

    @precondition(lambda self: self.workers)
    @rule(i=st.integers(0, 50))
    def toggle_silent(self, i):
        """A slow or cut-off worker: alive, holding its requests, but not reporting."""
        worker = self.workers[i % len(self.workers)]
        worker.silent = not worker.silent

    @rule(model=st.sampled_from((*MODELS, *MODELS, "unknown")), tenant=st.sampled_from(("", "t1", "t2")))
    def submit(self, model, tenant):
        rid = f"r{len(self.submitted)}"
        self.submitted.append(rid)
        self.models[rid] = model
        self.tenants[rid] = tenant
        self.execute(self.policy.submit(request(rid, model, tenant=tenant), self.now))

    @precondition(lambda self: self.submitted)
    @rule(i=st.integers(0, 100))
    def redeliver_live(self, i):
        rid = self.submitted[i % len(self.submitted)]
        if rid not in self.ends:
            assert self.policy.submit(request(rid, self.models[rid], tenant=self.tenants[rid]), self.now) == []

    @precondition(lambda self: self.submitted)
    @rule(i=st.integers(0, 100))
    def cancel(self, i):
        self.execute(self.policy.cancel(self.submitted[i % len(self.submitted)], self.now))

    def busy(self) -> list[SimWorker]:
        return [w for w in self.workers if w.alive and w.holding]

    @precondition(lambda self: self.busy())
    @rule(i=st.integers(0, 50), j=st.integers(0, 50), n=st.integers(1, 3), finish=st.sampled_from((False, False, True)))
    def produce(self, i, j, n, finish):
        busy = self.busy()
        worker = busy[i % len(busy)]
        rid = sorted(worker.holding)[j % len(worker.holding)]
        start = worker.holding[rid]
        ids = tuple(token(rid, start + k) for k in range(n))
        chunk = tokens(rid, start, ids, worker.worker_id, finish="stop" if finish else None)
        worker.holding[rid] = start + n
        if finish:
            del worker.holding[rid]
        self.chunks.append(chunk)
        self.seen.setdefault(rid, set()).update(range(start, start + n))
        self.execute(self.policy.on_tokens(chunk, self.now))

    @precondition(lambda self: any(w.alive and w.turn for w in self.workers))
    @rule(i=st.integers(0, 50), steps=st.integers(1, 6), reason=st.sampled_from(("quota", "done", "replaced")))
    def run_turn(self, i, steps, reason):
        """A worker runs its turn (prefill turns: one token each) and reports it over."""
        running = [w for w in self.workers if w.alive and w.turn]
        worker = running[i % len(running)]
        turn, worker.turn = worker.turn, None
        prefilled, handed_off = [], []
        for rid in turn.request_ids:
            if rid not in worker.holding or self.models[rid] != turn.model:
                continue
            start = worker.holding[rid]
            n = min(1 if turn.until_prefilled else steps, MAX_TOKENS - start)
            finish = start + n >= MAX_TOKENS
            chunk = tokens(rid, start, tuple(token(rid, start + k) for k in range(n)), worker.worker_id, "length" if finish else None)
            worker.holding[rid] = start + n
            if finish:
                del worker.holding[rid]
            prefilled.append(rid)
            if turn.hand_off and not finish:
                del worker.holding[rid]  # its KV went to the hand-off area; the worker let it go
                handed_off.append(rid)
            self.chunks.append(chunk)
            self.seen.setdefault(rid, set()).update(range(start, start + n))
            self.execute(self.policy.on_tokens(chunk, self.now))
        report = TurnReport(
            worker.worker_id, turn.turn_id, turn.model, reason, 0.01, 1, 3, 0.01, steps, steps, 10 * steps, 0.02 * steps, tuple(prefilled),
            handed_off=tuple(handed_off),
        )
        self.execute(self.policy.on_turn_report(report, self.now))

    @precondition(lambda self: self.chunks)
    @rule(i=st.integers(0, 100))
    def duplicate_chunk(self, i):
        self.execute(self.policy.on_tokens(self.chunks[i % len(self.chunks)], self.now))

    @rule(dt=st.sampled_from((0.1, 0.5, 1.0, 2.5)))
    def advance(self, dt):
        self.now += dt
        for worker in self.workers:
            if worker.alive and not worker.silent:
                self.report_from(worker)
        self.execute(self.policy.tick(self.now))

    # ---- the router acting on the world ----------------------------------------------

    def report_from(self, worker: SimWorker):
        worker.seq += 1
        msg = state(
            worker.worker_id, worker.seq, serving=worker.serving, running=tuple(worker.holding), ts=self.now,
            tiers={m: "host" for m in worker.serving}, total=TOTAL_PAGES, free=TOTAL_PAGES, block_tokens=BLOCK_TOKENS,
            turn_id=worker.turn.turn_id if worker.turn else 0,
        )
        self.execute(self.policy.on_worker_state(msg, self.now))

    def execute(self, decisions):
        live = set(self.policy.snapshot(self.now).workers)
        for d in decisions:
            if isinstance(d, Assign):
                rid = d.request.id
                assert rid not in self.ends, f"{rid} assigned after it ended"
                assert d.worker_id in live
                worker = self.worker(d.worker_id)
                assert self.models[rid] in worker.serving
                seen, produced = self.seen.get(rid, set()), 0
                while produced in seen:
                    produced += 1
                assert d.resume_token_ids == tuple(token(rid, k) for k in range(produced))
                if worker.alive:
                    worker.holding[rid] = len(d.resume_token_ids)
            elif isinstance(d, StartTurn):
                assert d.worker_id in live
                schedule = self.policy.schedule_of(d.worker_id)
                for rid in d.turn.request_ids:
                    assert rid in schedule.held and schedule.held[rid].model == d.turn.model, (rid, d.turn)
                assert set(d.turn.park) <= set(schedule.held) and not set(d.turn.park) & set(d.turn.request_ids)
                self.kv_fits(schedule, d.turn)
                worker = self.worker(d.worker_id)
                if worker.alive:
                    worker.turn = d.turn
            elif isinstance(d, Cancel):
                self.worker(d.worker_id).holding.pop(d.request_id, None)
            elif isinstance(d, (Done, Reject)):
                rid = d.request_id if isinstance(d, Done) else d.request.id
                assert rid not in self.ends, f"{rid} ended twice"
                self.ends[rid] = 1
                if isinstance(d, Reject):
                    assert d.error.code == 404 if self.models[rid] == "unknown" else d.error.code in (429, 503)

    def kv_fits(self, schedule, turn):
        """After the turn's parking, the KV believed on the device fits, unless the turn's own
        requests alone are more than the device holds (then the engine preempts by recompute)."""
        def pages(held):
            return pages_for(held.context, BLOCK_TOKENS)

        on_device = sum(pages(h) for h in schedule.held.values() if h.on_device)
        own = sum(pages(schedule.held[r]) for r in turn.request_ids)
        assert on_device <= TOTAL_PAGES or own > TOTAL_PAGES, (on_device, own, turn)

    def worker(self, worker_id: str) -> SimWorker:
        return next(w for w in self.workers if w.worker_id == worker_id)

    # ---- what must always hold ---------------------------------------------------------

    @invariant()
    def held_by_at_most_one_live_worker(self):
        live = set(self.policy.snapshot(self.now).workers)
        holders: dict[str, list[str]] = {}
        for w in self.workers:
            if w.worker_id in live:
                for rid in w.holding:
                    holders.setdefault(rid, []).append(w.worker_id)
        assert all(len(ws) == 1 for ws in holders.values()), holders

    @invariant()
    def schedules_hold_what_the_router_assigned(self):
        for w in self.workers:
            schedule = self.policy.schedule_of(w.worker_id)
            if schedule is not None:
                assigned = {rid for rid in self.submitted if rid not in self.ends and self.policy.holder(rid) == w.worker_id}
                assert set(schedule.held) == assigned

    @invariant()
    def tenants_in_service_count_the_assigned_requests(self):
        """What fair dispatch orders by (fair_queue.py) never drifts from the assignments."""
        assigned = Counter(self.tenants[rid] for rid in self.submitted
                           if rid not in self.ends and self.policy.holder(rid) is not None)
        assert +self.policy._in_service == assigned

    @invariant()
    def unknown_models_never_wait(self):
        assert all(rid in self.ends for rid, m in self.models.items() if m == "unknown")

    def teardown(self):
        for w in self.workers:
            w.alive = False
        self.now += CONFIG.worker_timeout_s + CONFIG.no_worker_grace_s + 1
        self.execute(self.policy.tick(self.now))
        lost = [rid for rid in self.submitted if rid not in self.ends]
        assert not lost, f"requests never answered: {lost}"
        assert self.policy.snapshot(self.now).pending == 0


class DisaggregatedMachine(RouterMachine):
    """The same world with one prefill-only worker: requests also move after their first token."""

    config = replace(CONFIG, prefill_workers=1)


RouterMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_router_policy_properties = RouterMachine.TestCase
DisaggregatedMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=60, deadline=None)
test_disaggregated_policy_properties = DisaggregatedMachine.TestCase


class HandOffMachine(RouterMachine):
    """Disaggregated with the KV hand-off: prefill workers let requests go after their first token."""

    config = replace(CONFIG, prefill_workers=1, kv_handoff=True)


HandOffMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=60, deadline=None)
test_kv_handoff_policy_properties = HandOffMachine.TestCase


class TenantCapMachine(RouterMachine):
    """A tenant may hold a third of the pool's slots; its other requests wait while slots are
    free, and still every request is answered (teardown) and held at most once."""

    config = replace(CONFIG, max_tenant_share=0.34)


TenantCapMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=60, deadline=None)
test_tenant_cap_policy_properties = TenantCapMachine.TestCase


class TenantPreemptionMachine(RouterMachine):
    """Waiting tenants take slots from the most-served one: every request is still answered,
    held at most once, and the per-tenant counts stay true through the cancels and resumes."""

    config = replace(CONFIG, tenant_preemption=True)


TenantPreemptionMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=60, deadline=None)
test_tenant_preemption_policy_properties = TenantPreemptionMachine.TestCase
