"""The router's decision core: plain data in, decisions out, time passed in as `now`.

No I/O, no asyncio: the service feeds it bus messages, a simulator feeds it events.

    policy = RouterPolicy(catalog.names(), PolicyConfig(), now=clock())
    decisions = policy.submit(request, now)         # Assign / Reject / Done
    decisions = policy.on_worker_state(state, now)  # Assign (capacity freed) / Cancel (stale copies)
    decisions = policy.on_tokens(chunk, now)        # Done (finished) / Assign
    decisions = policy.on_turn_report(report, now)  # the worker is free: its next turn
    decisions = policy.cancel(request_id, now)      # Cancel + Done
    decisions = policy.tick(now)                    # dead workers: Assign elsewhere / Reject 503
    decisions = policy.on_placement(placement, now) # the autoscaler's drains: Cancel + Assign (moves)
    state = policy.snapshot(now)                    # RouterState

Two layers: which worker holds a request (warm-aware placement, queues, failover), and, per
worker, which of its requests compute when (`turns.schedule.WorkerSchedule`). Every event ends
by giving each idle worker its next turn (StartTurn) and replacing turns that must give way.
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping

from services.router import preemption, scoring
from services.router.config import PolicyConfig
from services.router.fair_queue import FairQueue
from services.router.decisions import (
    Assign,
    Cancel,
    Decision,
    Done,
    Reject,
    StartTurn,
    no_worker,
    not_found,
    queue_full,
)
from services.router.prefix_index import PrefixIndex
from services.router.turns.estimates import Priors, WorkerEstimates
from services.router.turns.held import Held
from services.router.turns.schedule import WorkerSchedule
from services.router.slo.attainment import request_slo
from services.router.slo.recent import RecentAttainment
from services.router.views import TrackedRequest, WorkerView
from shared.protocol import (
    GenerateRequest, ModelLoad, Placement, RouterState, TokenChunk, TurnReport, WorkerState,
)

DEFAULT_SLO = (10.0, 0.1)
"""(TTFT, TBT) seconds of a model the catalog gives no SLO class."""


class RouterPolicy:
    def __init__(
        self,
        models: Iterable[str],
        config: PolicyConfig | None = None,
        *,
        now: float,
        router_id: str = "router",
        slos: Mapping[str, tuple[float, float]] | None = None,
        first_turn_id: int = 1,
    ):
        self.config = config or PolicyConfig()
        self._slos = dict(slos or {})
        self._turn_ids = itertools.count(first_turn_id)
        self._schedules: dict[str, WorkerSchedule] = {}
        self.router_id = router_id
        self._models = list(models)
        self._started = now
        self._workers: dict[str, WorkerView] = {}
        self._requests: dict[str, TrackedRequest] = {}
        self._queues: dict[str, FairQueue] = {m: FairQueue() for m in self._models}
        self._in_service: Counter[str] = Counter()
        """Tenant -> its requests assigned to a worker (fair_queue.py)."""
        self._dropping: dict[str, str] = {}
        """Preempted request -> the worker told to drop it, until that worker lets go (meanwhile
        the request waits in no queue, and that worker's reports of it do not re-adopt it)."""
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._arrivals: Counter[str] = Counter()
        self._asked_tokens: Counter[str] = Counter()
        self._attainment = RecentAttainment(self.config.attainment_window_s)
        self._drained: frozenset[str] = frozenset()
        self._placed: dict[str, frozenset[str]] = {}
        """Worker -> models the autoscaler placed in its host memory (empty without an autoscaler)."""
        self._last_served: dict[str, float] = {}
        """Model -> when a live worker last reported serving it."""
        self._prefixes: dict[str, PrefixIndex] = {}
        """Worker -> what its prefix cache probably holds (prefix_index.py)."""

    # ---- events ----------------------------------------------------------------------

    def submit(self, request: GenerateRequest, now: float) -> list[Decision]:
        rid, model = request.id, request.model
        if rid in self._requests:
            return []  # a redelivered copy of a request already in hand
        if rid in self._finished:
            return [Done(rid)]
        if model not in self._queues:
            return self._reject(request, not_found(model, self._models), 0, now)
        self._arrivals[model] += 1
        self._asked_tokens[model] += request.sampling.max_tokens
        tracked = TrackedRequest(request, accepted_at=now)
        holder = self._reported_holder(rid, now)
        if holder is not None:  # a worker already runs it (the router restarted): adopt, do not run it twice
            self._requests[rid] = tracked
            self._place(tracked, holder, adopted=True)
            holder.foreign = max(0, holder.foreign - 1)
            return self._drive(now)
        if not self._served(model, now) and self._grace_over(model, now):
            return self._reject(request, no_worker(model), 0, now)
        queue = self._queues[model]
        capped = self._blocked(now)
        worker = None if queue or (capped and capped(request.tenant)) else self._pick(tracked, now)
        if worker is None and len(queue) >= self.config.max_queue_per_model:
            return self._reject(request, queue_full(model, self.config.max_queue_per_model), 0, now)
        self._requests[rid] = tracked
        if worker is None:
            queue.append(rid, request.tenant, now)
            # With a cap, requests of a capped tenant wait while slots are free: this one may not;
            # with preemption, this one may take a running request's slot.
            return self._dispatch(now) if capped or self.config.tenant_preemption else []
        return [self._assign(tracked, worker)] + self._drive(now)

    def on_worker_state(self, state: WorkerState, now: float) -> list[Decision]:
        view = self._workers.get(state.worker_id)
        if view is not None and view.is_stale(state):
            return []
        restarted = view is not None and view.is_restart(state)
        before = view.reported_running if view is not None and not restarted else frozenset()
        if view is None or restarted:
            self._schedules.pop(state.worker_id, None)
            self._prefixes.pop(state.worker_id, None)  # a new process starts with an empty cache
        if view is None:
            view = self._workers[state.worker_id] = WorkerView.from_state(state, now)
            view.drained = view.worker_id in self._drained
        else:
            view.apply(state, now)
        schedule = self._schedule(view.worker_id)
        turn = schedule.turn
        if turn is not None and view.turn_id != turn.turn_id and now - schedule.turn_sent_at > self.config.turn_lost_after_s:
            schedule.forget_turn()
        for model in view.serving:
            self._last_served[model] = now
        decisions: list[Decision] = []
        view.foreign = 0
        for rid in view.reported_running:
            tracked = self._requests.get(rid)
            if tracked is None and rid not in self._finished:
                view.foreign += 1  # e.g. assigned by a previous router; its redelivery will adopt it
            elif tracked is not None and tracked.worker_id is None and rid not in self._dropping:
                self._queues[tracked.model].remove(rid)
                self._place(tracked, view, adopted=True)
            elif rid not in view.assigned:
                view.foreign += tracked is not None
                if rid not in before:  # another worker holds it, or it is over: stop this copy once
                    decisions.append(Cancel(view.worker_id, rid))
        self._release_dropped(view.worker_id, keep=view.reported_running)
        lost = []
        # A hand-off turn lets its requests go before its report says so: the report decides.
        handing_off = set(turn.request_ids) if turn is not None and turn.hand_off else set()
        for rid in view.assigned:
            tracked = self._requests[rid]
            if rid in view.reported_running or rid in handing_off:
                tracked.misses = 0
            else:
                tracked.misses = self.config.lost_after_reports if restarted else tracked.misses + 1
                if tracked.misses >= self.config.lost_after_reports:
                    lost.append(rid)
        self._requeue(lost)
        return decisions + self._dispatch(now)

    def on_tokens(self, chunk: TokenChunk, now: float) -> list[Decision]:
        tracked = self._requests.get(chunk.request_id)
        if tracked is None:
            return []
        # First token per index wins, from whichever worker: the gateway keeps the same one,
        # so a resumed request continues what the client saw.
        tracked.record(chunk, now)
        if chunk.finish_reason is None and chunk.error is None:
            if tracked.worker_id is not None and chunk.worker_id in ("", tracked.worker_id):
                produced_here = tracked.prefix - tracked.resumed
                self._schedules[tracked.worker_id].progress(chunk.request_id, produced_here)
                if self.config.prefill_workers and not self.config.kv_handoff:
                    return self._hand_over([tracked], now)  # (with kv_handoff the worker hands it over after its turn)
            return []
        holder = tracked.worker_id
        self._finish(chunk.request_id)
        self._measure(tracked, now, failed=chunk.error is not None)
        decisions: list[Decision] = [Done(chunk.request_id)]
        if holder is not None and chunk.worker_id and chunk.worker_id != holder:
            decisions.insert(0, Cancel(holder, chunk.request_id))  # the client already got its answer
        return decisions + self._dispatch(now)

    def on_turn_report(self, report: TurnReport, now: float) -> list[Decision]:
        view = self._workers.get(report.worker_id)
        schedule = self._schedules.get(report.worker_id)
        if view is None or schedule is None:
            return []
        schedule.on_report(report, view)
        decisions = self._handed_off(report, now)
        moved = set(report.handed_off)
        prefilled = [self._requests[r] for r in report.prefilled if r in self._requests and r not in moved]
        prefilled = [t for t in prefilled if t.worker_id == report.worker_id]
        return decisions + (self._hand_over(prefilled, now, after_report=True) or self._drive(now))

    def cancel(self, request_id: str, now: float) -> list[Decision]:
        tracked = self._requests.get(request_id)
        if tracked is None:
            if request_id not in self._finished:
                self._remember_finished(request_id)  # cancelled before it arrived: never run it
            return []
        holder = tracked.worker_id
        self._finish(request_id)
        if holder is None:
            return [Done(request_id)]
        return [Cancel(holder, request_id), Done(request_id)] + self._dispatch(now)

    def on_placement(self, placement: Placement, now: float) -> list[Decision]:
        """The autoscaler's orders: drained workers take no new request, placed workers are
        preferred for their models, and a drained worker's requests with a `to_worker` move
        there (cancelled where they run, resumed from their tokens). Idempotent: the same
        placement again moves nothing twice."""
        self._drained = frozenset(d.worker_id for d in placement.drains)
        self._placed = {w.worker_id: frozenset(w.models) for w in placement.workers}
        for view in self._workers.values():
            view.drained = view.worker_id in self._drained
        decisions: list[Decision] = []
        for order in placement.drains:
            for move in order.moves:
                if move.to_worker:
                    decisions += self._move(move.request_id, order.worker_id, move.to_worker, now)
        return decisions + self._dispatch(now)

    def tick(self, now: float) -> list[Decision]:
        for view in [v for v in self._workers.values() if not v.is_live(now, self.config.worker_timeout_s)]:
            self._requeue(list(view.assigned))
            self._release_dropped(view.worker_id)
            del self._workers[view.worker_id]
            self._schedules.pop(view.worker_id, None)
            self._prefixes.pop(view.worker_id, None)
        decisions: list[Decision] = []
        for model, queue in self._queues.items():
            if queue and not self._served(model, now) and self._grace_over(model, now):
                for rid in list(queue):
                    tracked = self._requests[rid]
                    decisions += self._reject(tracked.request, no_worker(model), len(tracked.produced()), now)
        return decisions + self._dispatch(now)

    def snapshot(self, now: float) -> RouterState:
        """Loads per catalog model; `arrivals` counts requests for catalog models since start
        (including those answered 429/503: they are demand too); `pending` is queued requests."""
        running = Counter(t.model for t in self._requests.values() if t.worker_id is not None)
        loads = tuple(
            ModelLoad(m, len(self._queues[m]), running[m], self._arrivals[m], self._asked_tokens[m])
            for m in self._models
        )
        live = self._live(now)
        return RouterState(
            router_id=self.router_id,
            ready=any(v.ready for v in live),
            workers=tuple(sorted(v.worker_id for v in live)),
            models=loads,
            pending=sum(len(q) for q in self._queues.values()),
            ts=now,
            attainment=self._attainment.mean(now),
        )

    def schedule_of(self, worker_id: str) -> WorkerSchedule | None:
        return self._schedules.get(worker_id)

    def holder(self, request_id: str) -> str | None:
        """The worker a request is assigned to; None while queued or unknown."""
        tracked = self._requests.get(request_id)
        return tracked.worker_id if tracked else None

    # ---- internals ------------------------------------------------------------------

    def _live(self, now: float) -> list[WorkerView]:
        return [v for v in self._workers.values() if v.is_live(now, self.config.worker_timeout_s)]

    def _served(self, model: str, now: float) -> bool:
        return any(model in v.serving for v in self._live(now))

    def _grace_over(self, model: str, now: float) -> bool:
        since = max(self._started, self._last_served.get(model, self._started))
        return now - since >= self.config.no_worker_grace_s

    def _reported_holder(self, rid: str, now: float) -> WorkerView | None:
        return next((v for v in self._live(now) if rid in v.reported_running), None)

    def _roles(self, now: float) -> tuple[list[WorkerView], list[WorkerView]]:
        """(prefill workers, decode workers). Disaggregated mode names the first
        `prefill_workers` live workers (by id) prefill-only while at least one other is left;
        otherwise every worker does both and the two lists are the same."""
        live = sorted(self._live(now), key=lambda v: v.worker_id)
        k = self.config.prefill_workers
        if 0 < k < len(live):
            return live[:k], live[k:]
        return live, live

    def _pick(self, tracked: TrackedRequest, now: float) -> WorkerView | None:
        """A worker whose waiting prefill group of this model has room (grouped FCFS), unless
        another worker's cache probably holds more of the request's prompt; else `_home`'s
        choice. A request with no token yet goes to a prefill worker in disaggregated mode;
        else to a decode worker."""
        prefill, decode = self._roles(now)
        live = prefill if not tracked.tokens else decode
        group = self._open_group(live, tracked.model)
        if group is None:
            return self._home(live, tracked)
        cached = self._cached_tokens(group, tracked)
        if any(self._cached_tokens(v, tracked) > cached for v in live if scoring.can_take(v, tracked.model, self.config)):
            return self._home(live, tracked)
        return group

    def _open_group(self, live: list[WorkerView], model: str) -> WorkerView | None:
        """A worker whose waiting prefill group of the model has room and that can take one more."""
        for view in live:
            schedule = self._schedules.get(view.worker_id)
            waiting = 0 if schedule is None else sum(
                1 for h in schedule.held.values() if h.model == model and not h.prefilled
            )
            if 0 < waiting % self.config.max_prefill_group and scoring.can_take(view, model, self.config):
                if not (self._replicated(model) and self._held_of(view.worker_id, model) >= self.config.max_batch_size):
                    return view
        return None

    def _home(self, views: list[WorkerView], tracked: TrackedRequest) -> WorkerView | None:
        """Model affinity, then balance. A worker that already holds requests of the model takes
        the new one: it joins their batch, so the model costs that worker no extra step or switch,
        where a second worker would spend both. Otherwise the worker whose held models ask the
        least of it (`_demand`) takes it, warmth and load breaking ties; that spreads the models
        over the pool instead of piling them where one happens to be resident. A model the
        autoscaler placed on several workers (replicas) goes only to those, and a holder whose
        batch of it is full lets the next request go to another replica. Among workers alike,
        the one whose prefix cache probably holds more of the request's prompt (`_closest`); a
        replica whose cache probably does counts as a holder."""
        model = tracked.model
        candidates = [v for v in views if scoring.can_take(v, model, self.config)]
        if not candidates:
            return None
        holders = [v for v in candidates if self._holds(v.worker_id, model)]
        placed = [v for v in candidates if model in self._placed.get(v.worker_id, ())]
        if self._replicated(model) and placed:  # a full batch spills to the next replica
            holders = [v for v in holders if self._held_of(v.worker_id, model) < self.config.max_batch_size]
            candidates = placed
            if holders:  # a replica that probably holds part of the prompt is as good as a holder
                holders += [v for v in placed if not self._holds(v.worker_id, model) and self._cached_tokens(v, tracked)]
        if holders:
            return self._closest(holders, tracked)
        if self._kept_together(model, views):
            candidates = [v for v in candidates if self._round_has_room(v, model)]
            if not candidates:
                return None  # it waits for a slot beside its model's batch
        return min(
            candidates,
            key=lambda v: (
                bool(self._placed) and model not in self._placed.get(v.worker_id, ()),
                *self._demand(v),
                -scoring.warmth(v, model, self.config),
                -self._cached_tokens(v, tracked),
                v.load,
                v.worker_id,
            ),
        )

    def _closest(self, holders: list[WorkerView], tracked: TrackedRequest) -> WorkerView:
        """The least loaded holder; or, among holders within `prefix_load_slack` of its load, the
        one whose cache probably holds the most of the request's prompt. A conversation's next
        turn then finds its earlier turns where they were computed, instead of on 1 of n
        replicas; the slack bounds the imbalance that costs."""
        least = min(holders, key=lambda v: (v.load, v.worker_id))
        slack = self.config.prefix_load_slack * scoring.slots(least, self.config)
        near = [v for v in holders if v.load <= least.load + slack]
        return min(near, key=lambda v: (-self._cached_tokens(v, tracked), v.load, v.worker_id))

    def _cached_tokens(self, view: WorkerView, tracked: TrackedRequest) -> int:
        """Of the request's tokens, those the worker's prefix cache probably holds (0 without
        prefix routing); in tokens, as workers' pages may hold different numbers of them."""
        index = self._prefixes.get(view.worker_id)
        if index is None or not self.config.prefix_routing:
            return 0
        block = view.block_tokens_of(tracked.model)
        return index.match(tracked.page_keys(block)) * block

    def _remember_prefix(self, tracked: TrackedRequest) -> None:
        """The request's tokens so far are (or will be) in its worker's prefix cache."""
        view = self._workers.get(tracked.worker_id) if tracked.worker_id else None
        if view is None or not self.config.prefix_routing:
            return
        keys = tracked.page_keys(view.block_tokens_of(tracked.model))
        if keys:
            self._prefixes.setdefault(view.worker_id, PrefixIndex()).add(keys, view.total_kv_pages)

    def _kept_together(self, model: str, views: list[WorkerView]) -> bool:
        """Whether a request of the model should wait for a slot on a worker that holds it rather
        than open the model on one whose round has no room for another turn (`_round_has_room`).
        Without this, a full pool hands each freed slot to whatever request is next, and every
        worker ends up holding most of the models: rounds of a dozen turns and switches that
        keep no one's TBT. Not for models the autoscaler replicated (it chose their workers),
        request-level scheduling (one model at a time anyway) or disaggregated roles."""
        if self.config.scheduling != "token" or self.config.prefill_workers or self._replicated(model):
            return False
        return any(self._holds(v.worker_id, model) and self._may_host(v, model) for v in views)

    def _round_has_room(self, view: WorkerView, model: str) -> bool:
        """The worker's round with a turn of the model added stays within max_round_load; an
        idle worker always has room (even a model that alone needs more)."""
        schedule = self._schedules.get(view.worker_id)
        if schedule is None or not any(h.remaining or not h.prefilled for h in schedule.held.values()):
            return True
        tbt_s = self._slos.get(model, DEFAULT_SLO)[1]
        return schedule.load_with(view, model, tbt_s) <= self.config.max_round_load

    def _holds(self, worker_id: str, model: str) -> bool:
        schedule = self._schedules.get(worker_id)
        return schedule is not None and any(h.model == model for h in schedule.held.values())

    def _replicated(self, model: str) -> bool:
        """The autoscaler placed the model on more than one worker."""
        return sum(model in models for models in self._placed.values()) > 1

    def _held_of(self, worker_id: str, model: str) -> int:
        schedule = self._schedules.get(worker_id)
        return 0 if schedule is None else sum(h.model == model for h in schedule.held.values())

    def _demand(self, view: WorkerView) -> tuple[float, int]:
        """(the share of the worker's time its held models need to keep their TBT, how many
        models it holds). The share: one decode step of each model per TBT objective (the
        step's fixed part; batching makes the rest small)."""
        schedule = self._schedules.get(view.worker_id)
        if schedule is None:
            return 0.0, 0
        models = {h.model for h in schedule.held.values()}
        share = 0.0
        for model in models:
            tbt_s = self._slos.get(model, DEFAULT_SLO)[1]
            share += schedule.estimates.decode_step_s(model, view.weight_bytes.get(model, 0), 0) / tbt_s
        return round(share, 3), len(models)

    def _move(self, rid: str, source: str, target: str, now: float) -> list[Decision]:
        tracked = self._requests.get(rid)
        view = self._workers.get(target)
        if tracked is None or tracked.worker_id != source or view is None:
            return []  # finished, already moved, or the target is unknown
        if not view.is_live(now, self.config.worker_timeout_s) or not scoring.can_take(view, tracked.model, self.config):
            return []
        self._workers_assigned_discard(tracked)
        return [Cancel(source, rid), self._assign(tracked, view)]

    def _measure(self, tracked: TrackedRequest, now: float, failed: bool) -> None:
        ttft_s, tbt_s = self._slos.get(tracked.model, DEFAULT_SLO)
        if failed:
            self._attainment.add(now, 0.0)
        elif tracked.seen_at:
            self._attainment.add(now, request_slo(tracked.accepted_at, tracked.seen_at, ttft_s, tbt_s).attainment)

    def _handed_off(self, report: TurnReport, now: float) -> list[Decision]:
        """Requests whose KV a prefill worker left in the machine's hand-off area: the worker let
        them go, so they move to a decode worker (or wait in their queue for one) with the entry."""
        decisions: list[Decision] = []
        for rid in report.handed_off:
            tracked = self._requests.get(rid)
            if tracked is None or tracked.worker_id != report.worker_id:
                continue
            self._workers_assigned_discard(tracked)
            self._set_worker(tracked, None)
            tracked.kv_handoff = rid
            target = scoring.pick(self._roles(now)[1], tracked.model, self.config)
            if target is None:
                self._requeue([rid])
            else:
                decisions.append(self._assign(tracked, target))
        return decisions

    def _hand_over(self, prefilled: list[TrackedRequest], now: float, after_report: bool = False) -> list[Decision]:
        """Disaggregated mode: a request that got its first token on a prefill worker moves to
        a decode worker, which re-prefills prompt + tokens (recompute). With kv_handoff this is
        only the fallback for requests the prefill worker did not hand off."""
        if self.config.kv_handoff and not after_report:
            return []
        prefill, decode = self._roles(now)
        if prefill is decode:
            return []
        prefill_ids = {v.worker_id for v in prefill}
        decisions: list[Decision] = []
        for tracked in prefilled:
            if tracked.worker_id not in prefill_ids or not tracked.tokens:
                continue
            target = scoring.pick(decode, tracked.model, self.config)
            if target is None:
                continue  # no decode worker has room: it decodes where it is
            holder = tracked.worker_id
            self._workers_assigned_discard(tracked)
            decisions += [Cancel(holder, tracked.request.id), self._assign(tracked, target)]
        return decisions + self._drive(now) if decisions else []

    def _schedule(self, worker_id: str) -> WorkerSchedule:
        schedule = self._schedules.get(worker_id)
        if schedule is None:
            p = self.config.time_priors
            priors = Priors(
                p.memory_bandwidth_gb_s * 1e9,
                p.host_to_device_gb_s * 1e9,
                p.switch_fixed_s,
                p.decode_s_per_context_token,
                p.prefill_s_per_token,
            )
            schedule = WorkerSchedule(worker_id, self.config, WorkerEstimates(priors), lambda: next(self._turn_ids))
            self._schedules[worker_id] = schedule
        return schedule

    def _blocked(self, now: float):
        """None without a tenant cap; else whether a tenant holds its cap of the pool's slots."""
        share = self.config.max_tenant_share
        if share >= 1.0:
            return None
        pool = sum(scoring.slots(v, self.config) for v in self._live(now) if v.ready and not v.drained)
        cap = max(1, int(share * pool))
        return lambda tenant: bool(tenant) and self._in_service[tenant] >= cap

    def _set_worker(self, tracked: TrackedRequest, worker_id: str | None) -> None:
        """Every change of a request's worker goes through here, to keep `_in_service` true."""
        self._in_service[tracked.request.tenant] += (worker_id is not None) - (tracked.worker_id is not None)
        tracked.worker_id = worker_id

    def _place(self, tracked: TrackedRequest, view: WorkerView, adopted: bool = False) -> None:
        self._set_worker(tracked, view.worker_id)
        tracked.misses = 0
        view.assigned.add(tracked.request.id)
        request = tracked.request
        resumed = tracked.prefix
        tracked.resumed = resumed
        ttft_s, tbt_s = self._slos.get(request.model, DEFAULT_SLO)
        held = Held(
            request.id,
            request.model,
            tracked.accepted_at,
            len(request.prompt_token_ids) + resumed,
            max(request.sampling.max_tokens - resumed, 1),
            ttft_s,
            tbt_s,
            prefilled=adopted,
            on_device=adopted,
            cached_tokens=self._cached_tokens(view, tracked),
        )
        self._schedule(view.worker_id).add(held)
        self._remember_prefix(tracked)

    def _drive(self, now: float) -> list[Decision]:
        """Gives each idle live worker its next turn and replaces turns that must give way."""
        decisions: list[Decision] = []
        prefill, decode = self._roles(now)
        prefill_only = {v.worker_id for v in prefill} if prefill is not decode else set()
        for view in self._live(now):
            schedule = self._schedules.get(view.worker_id)
            if schedule is None:
                continue  # (a draining worker is not ready but still runs the turns of what it holds)
            schedule.prefill_only = view.worker_id in prefill_only
            if schedule.turn is None or schedule.should_replace(view, now):
                turn = schedule.next_turn(view, now)
                if turn is not None:
                    decisions.append(StartTurn(view.worker_id, turn))
        return decisions

    def _assign(self, tracked: TrackedRequest, view: WorkerView) -> Assign:
        entry, tracked.kv_handoff = tracked.kv_handoff, ""  # one try: a later move recomputes
        self._place(tracked, view, adopted=bool(entry))
        return Assign(view.worker_id, tracked.request, tracked.produced(), entry)

    def _dispatch(self, now: float) -> list[Decision]:
        """Assigns queued requests while capacity lasts: each model's next request (the oldest
        of its least-served tenant, fair_queue.py), the least-served tenant's, then the oldest,
        first."""
        decisions: list[Decision] = []
        fair = self.config.tenant_fairness
        blocked = self._blocked(now)
        while True:
            best, best_key = None, None
            for model, queue in self._queues.items():
                waiting = queue.next(self._in_service, fair, blocked)
                if waiting is None:
                    continue
                key = (self._in_service[waiting.tenant] if fair else 0, waiting.accepted_at)
                if best_key is not None and key >= best_key:
                    continue
                head = self._requests[waiting.request_id]
                worker = self._pick(head, now)
                if worker is not None:
                    best, best_key = (head, worker), key
            if best is None:
                preempted = self._preempt(now, blocked) if fair and self.config.tenant_preemption else []
                if not preempted:
                    return decisions + self._drive(now)
                decisions += preempted
                continue
            self._queues[best[0].model].remove(best[0].request.id)
            decisions.append(self._assign(*best))

    def _preempt(self, now: float, blocked) -> list[Decision]:
        """The pool is full: each model's next waiting request, least-served tenant first, may
        take a slot from the most-served tenant (preemption.py) on a worker that can serve its
        model. Returns the Cancel of the victim and the Assign of the waiting request, or nothing."""
        if self.config.prefill_workers:
            return []  # (disaggregated roles: not handled)
        heads = [(m, w) for m, q in self._queues.items() if (w := q.next(self._in_service, True, blocked))]
        heads.sort(key=lambda h: (self._in_service[h[1].tenant], h[1].accepted_at))
        if not heads or max(self._in_service.values(), default=0) < self._in_service[heads[0][1].tenant] + 2:
            return []  # no tenant holds two more than the least-served waiting one: the common case
        running = [
            preemption.Running(t.request.id, t.request.tenant, t.worker_id, t.prefix, t.accepted_at, t.preempted)
            for t in self._requests.values() if t.worker_id is not None
        ]
        live = self._live(now)
        for model, waiting in heads:
            hosts = {v.worker_id: v for v in live if self._may_host(v, model)}
            # Workers already holding the model first: the request joins its batch there (_home).
            holders = {w for w in hosts if self._holds(w, model)}
            others = hosts.keys() - holders
            if self._kept_together(model, live):
                others = {w for w in others if self._round_has_room(hosts[w], model)}
            chosen = None
            for among in (holders, others):
                chosen = preemption.victim(waiting.tenant, self._in_service, [r for r in running if r.worker_id in among])
                if chosen is not None:
                    break
            if chosen is None:
                continue
            victim = self._requests[chosen.request_id]
            # It waits outside its queue until its worker lets go (_release_dropped): placed
            # again sooner, it could resume from a prefix the old worker is still extending.
            self._workers_assigned_discard(victim)
            self._set_worker(victim, None)
            victim.preempted = True
            self._dropping[chosen.request_id] = chosen.worker_id
            self._queues[model].remove(waiting.request_id)
            return [Cancel(chosen.worker_id, chosen.request_id), self._assign(self._requests[waiting.request_id], hosts[chosen.worker_id])]
        return []

    def _release_dropped(self, worker_id: str, keep: frozenset[str] | set[str] = frozenset()) -> None:
        """Preempted requests the worker no longer holds (its report omits them, or it is gone)
        go back to their queues in arrival order."""
        for rid in [r for r, w in self._dropping.items() if w == worker_id and r not in keep]:
            del self._dropping[rid]
            tracked = self._requests[rid]
            queue = self._queues[tracked.model]
            queue.append(rid, tracked.request.tenant, tracked.accepted_at)
            queue.resort()

    def _may_host(self, view: WorkerView, model: str) -> bool:
        """Whether the worker could take a request of the model once a slot frees there."""
        if not (view.ready and not view.drained and model in view.serving):
            return False
        return not self._replicated(model) or model in self._placed.get(view.worker_id, ())

    def _requeue(self, rids: list[str]) -> None:
        """Requests whose worker died or lost them go back to their queue in arrival order."""
        for rid in rids:
            tracked = self._requests[rid]
            self._workers_assigned_discard(tracked)
            self._set_worker(tracked, None)
            queue = self._queues[tracked.model]
            queue.append(rid, tracked.request.tenant, tracked.accepted_at)
            queue.resort()

    def _workers_assigned_discard(self, tracked: TrackedRequest) -> None:
        view = self._workers.get(tracked.worker_id) if tracked.worker_id else None
        if view is not None:
            view.assigned.discard(tracked.request.id)
        schedule = self._schedules.get(tracked.worker_id) if tracked.worker_id else None
        if schedule is not None:
            schedule.remove(tracked.request.id)

    def _finish(self, rid: str) -> None:
        tracked = self._requests.pop(rid)
        if tracked.worker_id is None:
            if self._dropping.pop(rid, None) is None:  # (a preempted one waits in no queue)
                self._queues[tracked.model].remove(rid)
        else:
            self._remember_prefix(tracked)  # with its output: a chat's next turn starts with it
            self._workers_assigned_discard(tracked)
            self._set_worker(tracked, None)
        self._remember_finished(rid)

    def _remember_finished(self, rid: str) -> None:
        self._finished[rid] = None
        while len(self._finished) > self.config.finished_memory:
            self._finished.popitem(last=False)

    def _reject(self, request: GenerateRequest, error, index: int, now: float) -> list[Decision]:
        if error.code != 404:  # a request turned away (429, 503) missed its objective
            self._attainment.add(now, 0.0)
        if request.id in self._requests:
            self._finish(request.id)
        else:
            self._remember_finished(request.id)
        return [Reject(request, error, index)]
