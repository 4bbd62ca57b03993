"""A simulated gpu_worker: the router's commands in, TokenChunks, TurnReports and WorkerStates out,
with every step, copy and swap taking the time the cost model says.

It follows the worker's RunTurn contract (shared/protocol.py RunTurn, issue 4):
- AssignRequest: the worker holds the request (a resumed one re-prefills prompt + resumed
  tokens); it computes only inside a turn that lists it.
- RunTurn: before the first step, the `park` requests' KV goes to host memory, the model is
  activated (free if resident, what is left of a prefetch, else a weight copy plus the fixed
  switch cost) and the turn's own parked requests come back (switch_s = activation plus that
  swap-in); then `prefetch` starts copying behind it. Steps then run back to back, each a
  prefill (prompt chunks, up to max_batch_tokens) or else a decode (one token for each running
  request, up to max_batch_size), as in engine/scheduler.py. Between steps the turn ends by:
  done (none of its requests left unfinished here), prefilled (until_prefilled and each of its
  requests produced a token in this turn), quota (seconds since its first step >= quota_s),
  idle (nothing of it could run), and only then replaced (a newer RunTurn arrived; it starts
  at that boundary, after the old turn's report). The turn's requests are those listed that
  the worker holds for its model when it starts. The turn's counting, its end reasons (all
  but replaced) and its TurnReport are the worker's own: services/gpu_worker/turn.py RunningTurn.
- TurnReport after every turn (turns replaced before they started are reported too, with no
  work, so that every turn id gets its report); WorkerState every report_interval_s.
Token ids are dummies (1): the router only counts them.

Out of KV pages, the worker does what the engine does: a decode step preempts the model's
latest request (its KV is dropped and recomputed later), and a step that cannot run at all
first parks the requests on the device that are not in the turn.

The worker starts with every served model in host memory and none on the device (the real
one activates its first model at start-up; one copy more or less at t=0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from services.gpu_worker.turn import RunningTurn
from services.sim.cost import CostModel
from services.sim.device import DeviceLayout, SimDevice, pages_for
from services.sim.events import EventLoop
from shared.protocol import (
    AssignRequest,
    ErrorInfo,
    GenerateRequest,
    ModelResidency,
    RunTurn,
    TokenChunk,
    TurnReport,
    Usage,
    WorkerState,
)

DUMMY_TOKEN = 1
WAITING, RUNNING, PARKED = "waiting", "running", "parked"


@dataclass(frozen=True)
class SimWorkerConfig:
    layout: DeviceLayout = field(default_factory=DeviceLayout)
    max_batch_size: int = 64
    """Most sequences decoded together in one step (the worker's default)."""
    max_batch_tokens: int = 2048
    """Most prompt tokens in one prefill step (the worker's default; longer prompts are chunked)."""
    report_interval_s: float = 0.5
    """Virtual seconds between WorkerState reports."""
    max_stretch_steps: int = 8
    """Decode steps simulated as one event when nothing can change between them: the turn's
    whole batch steps, no request finishes before the last step, the quota lasts and the KV
    pages are in hand. A command arriving meanwhile cuts the stretch at the next step
    boundary, where the worker would have seen it anyway. Clients see each token at the time
    it was made; the router gets a stretch's tokens at its end, at most this many steps late.
    1: every step is an event."""


@dataclass
class Outbox:
    """Where the worker's messages go (the simulation delivers them to the router)."""

    chunks: Callable[..., None]
    """chunks(TokenChunks of one step or command) or chunks(TokenChunks of a stretch, and for
    each chunk the times its tokens were made), published together."""
    report: Callable[[TurnReport], None]
    state: Callable[[WorkerState], None]


@dataclass(eq=False)
class Seq:
    request: GenerateRequest
    prompt: int
    produced: int
    """Output tokens known: resumed ones plus those produced here."""
    max_tokens: int
    order: int
    """Assignment order on this worker: the engine's FCFS position."""
    produced_here: int = 0
    cached: int = 0
    """Tokens whose K/V are computed (on the device, or in host memory when parked)."""
    pages: int = 0
    state: str = WAITING

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def tokens(self) -> int:
        return self.prompt + self.produced

    @property
    def uncached(self) -> int:
        return self.tokens - self.cached


@dataclass
class _Step:
    """One scheduled step. Read by RunningTurn.stepped as the engine's StepInfo is."""

    is_prefill: bool
    seqs: list[Seq]
    counts: list[int]
    seconds: float
    context_tokens: int = 0
    """Context lengths a decode step attends to, summed over its sequences."""

    @property
    def num_tokens(self) -> int:
        """Tokens whose K/V the step computes (prompt chunk lengths, or one per decoded sequence)."""
        return sum(self.counts)


@dataclass
class _Stretch:
    """Decode steps of one batch simulated as one event."""

    step: _Step
    started_at: float
    ends: list[tuple[float, float, int]]
    """Per step: when it ends, its seconds, the context tokens it attends to."""
    handle: object = None


@dataclass
class WorkerStats:
    turns: dict[str, int] = field(default_factory=dict)
    """Turns ended, by reason."""
    switches: int = 0
    """Turns whose model differed from the computing one."""
    switch_s: float = 0.0
    busy_s: float = 0.0
    """Seconds spent in steps."""
    preemptions: int = 0
    """Requests whose KV was dropped to make room (recomputed later)."""
    anomalies: list[str] = field(default_factory=list)
    """Commands that made no sense here (a policy bug shows up as one)."""


class SimWorker:
    def __init__(
        self,
        worker_id: str,
        loop: EventLoop,
        cost: CostModel,
        serving: list[str],
        outbox: Outbox,
        config: SimWorkerConfig | None = None,
    ):
        self.worker_id = worker_id
        self.loop = loop
        self.cost = cost
        self.serving = list(serving)
        self.outbox = outbox
        self.config = config or SimWorkerConfig()
        self.device = SimDevice(cost, self.serving, self.config.layout)
        self.seqs: dict[str, Seq] = {}
        self.stats = WorkerStats()
        self._orders = 0
        self._run: RunningTurn | None = None
        self._waiting_turns: list[RunTurn] = []
        self._idle_since = loop.now
        self._report_seq = 0
        self._reporting = None
        self._stretch: _Stretch | None = None

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Reports now and then every report_interval_s."""
        self._report()

    def stop(self) -> None:
        if self._reporting is not None:
            self._reporting.cancel()

    def _report(self) -> None:
        self.outbox.state(self.state())
        self._reporting = self.loop.after(self.config.report_interval_s, self._report)

    def state(self) -> WorkerState:
        self._report_seq += 1
        d = self.device
        return WorkerState(
            worker_id=self.worker_id,
            ready=True,
            serving=tuple(self.serving),
            models=tuple(ModelResidency(m, d.tier(m), d.block_tokens[m], d.weight_sizes[m], d.weight_sizes[m]) for m in self.serving),
            active_model=d.active,
            running=(running := tuple(sorted(self.seqs))),
            free_kv_pages=d.free_pages,
            total_kv_pages=d.total_pages,
            device=f"sim-{self.cost.gpu.name}",
            seq=self._report_seq,
            ts=self.loop.now,
            turn_id=self._run.turn_id if self._run is not None else 0,
            running_models=tuple(self.seqs[r].model for r in running),
        )

    # ---- commands -------------------------------------------------------------------

    def assign(self, msg: AssignRequest) -> None:
        self._cut_stretch()
        req = msg.request
        resumed = len(msg.resume_token_ids)
        if req.id in self.seqs:
            self.stats.anomalies.append(f"{self.loop.now:.3f}: {req.id} assigned twice")
            return
        if req.model not in self.device.block_tokens:
            self._error(
                req.id, resumed, ErrorInfo(404, "invalid_request_error", f"model {req.model!r} is not served here")
            )
            return
        if resumed >= req.sampling.max_tokens:
            usage = Usage(len(req.prompt_token_ids), resumed)
            self.outbox.chunks([TokenChunk(req.id, resumed, (), None, "length", usage, None, self.worker_id)])
            return
        seq = Seq(req, len(req.prompt_token_ids), resumed, req.sampling.max_tokens, self._orders)
        self._orders += 1
        if pages_for(seq.tokens + 1, self.device.block_tokens[req.model]) > self.device.total_pages:
            message = f"the prompt has {seq.tokens} tokens, more than the KV cache can ever hold"
            self._error(req.id, resumed, ErrorInfo(400, "invalid_request_error", message))
            return
        self.seqs[req.id] = seq
        if self._run is not None:
            self._run.admit(req.id, req.model)

    def cancel(self, request_id: str) -> None:
        self._cut_stretch()
        seq = self.seqs.pop(request_id, None)
        if seq is not None:
            self._drop_kv(seq)
        if self._run is not None:
            self._run.drop(request_id)

    def run_turn(self, turn: RunTurn) -> None:
        self._cut_stretch()
        if self._run is None:
            idle_s = self.loop.now - self._idle_since
            self._begin(turn, idle_s)
        else:
            self._waiting_turns.append(turn)  # replaces the running turn at its next step boundary

    # ---- a turn ---------------------------------------------------------------------

    def _begin(self, turn: RunTurn, idle_s: float) -> None:
        now = self.loop.now
        held = tuple(r for r in dict.fromkeys(turn.request_ids) if r in self.seqs and self.seqs[r].model == turn.model)
        run = self._run = RunningTurn.start(turn, held, idle_s)
        if turn.model not in self.device.block_tokens:
            self.stats.anomalies.append(f"{now:.3f}: turn {turn.turn_id} for {turn.model!r}, not served here")
            self.loop.at(now, self._boundary)
            return
        strays = [r for r in turn.request_ids if r in self.seqs and self.seqs[r].model != turn.model]
        if strays:
            self.stats.anomalies.append(f"{now:.3f}: turn {turn.turn_id} ({turn.model}) lists other models' {strays}")
        t = now
        for rid in turn.park:
            seq = self.seqs.get(rid)
            if seq is not None and seq.state == RUNNING and seq.pages:
                done = self.device.swap_out(seq.pages, now)
                if done is not None:
                    seq.state = PARKED
                    t = max(t, done)
        ready = t
        if run.requests:  # a turn with nothing of its own to run does not switch
            ready, changed = self.device.activate(turn.model, t)
            if changed:
                self.stats.switches += 1
            ready = max(ready, self._swap_in_turn(ready))
            run.switch_s = ready - t
            self.stats.switch_s += run.switch_s
        if turn.prefetch and turn.prefetch != turn.model:
            self.device.prefetch(turn.prefetch, ready)
        self.loop.at(ready, self._boundary)

    def _swap_in_turn(self, now: float) -> float:
        """Brings the turn's parked requests back, oldest first, while device pages last."""
        t = now
        for seq in sorted(self._members(), key=lambda s: s.order):
            if seq.state == PARKED:
                done = self.device.swap_in(seq.pages, now)
                if done is None:
                    break
                seq.state = RUNNING
                t = max(t, done)
        return t

    def _members(self) -> list[Seq]:
        """The turn's open requests."""
        return [self.seqs[r] for r in self._run.open]

    def _boundary(self) -> None:
        run = self._run
        now = self.loop.now
        # A started turn takes at least one step before a newer one replaces it, as the worker's
        # engine thread does.
        reason = run.end_reason(now)
        if reason is None and run.first_step_at is not None and self._waiting_turns:
            reason = "replaced"
        if reason is None:
            ready = max(now, self._swap_in_turn(now))
            step = self._schedule(self._members())
            if step is None and self._park_idle_requests(now):
                ready = max(ready, self.device.d2h_free_at, self._swap_in_turn(self.device.d2h_free_at))
                step = self._schedule(self._members())
            if step is not None:
                stretch = self._plan_stretch(step, ready)
                if stretch is not None:
                    self._stretch = stretch
                    stretch.handle = self.loop.at(stretch.ends[-1][0], self._stretch_done)
                else:
                    self.loop.at(ready + step.seconds, self._step_done, step, ready)
                return
            run.stepped(None, started_at=now, seconds=0.0)  # nothing could run: the turn is idle
            reason = run.end_reason(now)
        self._end(reason)

    def _end(self, reason: str) -> None:
        run, now = self._run, self.loop.now
        self.stats.turns[reason] = self.stats.turns.get(reason, 0) + 1
        self.outbox.report(run.report(self.worker_id, reason, now))
        self._run = None
        if self._waiting_turns:
            *skipped, latest = self._waiting_turns
            self._waiting_turns = []
            for turn in skipped:
                self.stats.turns["replaced"] = self.stats.turns.get("replaced", 0) + 1
                self.outbox.report(RunningTurn.start(turn, ()).report(self.worker_id, "replaced", now))
            self._begin(latest, 0.0)
        else:
            self._idle_since = now

    # ---- steps ----------------------------------------------------------------------

    def _schedule(self, members: list[Seq]) -> _Step | None:
        model = self._run.model
        ordered = sorted((s for s in members if s.state != PARKED), key=lambda s: s.order)
        return self._schedule_prefill(model, ordered) or self._schedule_decode(model, ordered)

    def _schedule_prefill(self, model: str, ordered: list[Seq]) -> _Step | None:
        block = self.device.block_tokens[model]
        partial = [s for s in ordered if s.state == RUNNING and s.uncached > 1]
        candidates = partial + [s for s in ordered if s.state == WAITING]
        budget = self.config.max_batch_tokens
        seqs, counts = [], []
        for seq in candidates:
            if budget == 0 or len(seqs) == self.config.max_batch_size:
                break
            n = min(seq.uncached, budget)
            extra = pages_for(seq.cached + n, block) - seq.pages
            if not self.device.allocate(extra):
                break
            seq.pages += extra
            seq.state = RUNNING
            seqs.append(seq)
            counts.append(n)
            budget -= n
        if not seqs:
            return None
        squared = sum((s.cached + n) ** 2 - s.cached**2 for s, n in zip(seqs, counts))  # attention grows with it
        return _Step(True, seqs, counts, self.cost.prefill_step_s(model, sum(counts), squared))

    def _schedule_decode(self, model: str, ordered: list[Seq]) -> _Step | None:
        block = self.device.block_tokens[model]
        seqs = []
        for seq in [s for s in ordered if s.state == RUNNING and s.uncached == 1]:
            if len(seqs) == self.config.max_batch_size:
                break
            if seq.state != RUNNING:
                continue  # preempted below to make room for an earlier request
            if pages_for(seq.cached + 1, block) > seq.pages and not self._reserve_page(seq, model):
                continue
            seqs.append(seq)
        if not seqs:
            return None
        context = sum(s.cached + 1 for s in seqs)
        return _Step(False, seqs, [1] * len(seqs), self.cost.decode_step_s(model, len(seqs), context), context)

    def _reserve_page(self, seq: Seq, model: str) -> bool:
        """Room for seq's next token, preempting the model's latest request if needed (engine semantics)."""
        while not self.device.allocate(1):
            victims = [s for s in self.seqs.values() if s.model == model and s.state == RUNNING and s.pages]
            victim = max(victims, key=lambda s: s.order)
            self._drop_kv(victim)
            self.stats.preemptions += 1
            if victim is seq:
                return False
        seq.pages += 1
        return True

    def _park_idle_requests(self, now: float) -> bool:
        """Swaps out the requests on the device that are not in the turn (other models', and the
        model's unlisted ones) when the turn's requests have no page to run on (engine semantics)."""
        parked = False
        for seq in self.seqs.values():
            if seq.id not in self._run.open and seq.state == RUNNING and seq.pages:
                if self.device.swap_out(seq.pages, now) is not None:
                    seq.state = PARKED
                    parked = True
        return parked

    def _drop_kv(self, seq: Seq) -> None:
        if seq.state == PARKED:
            self.device.release_host(seq.pages)
        else:
            self.device.release(seq.pages)
        seq.pages, seq.cached, seq.state = 0, 0, WAITING

    def _step_done(self, step: _Step, started_at: float) -> None:
        self.stats.busy_s += step.seconds
        produced, first, finished, chunks = [], [], [], []
        for seq, n in zip(step.seqs, step.counts):
            if self.seqs.get(seq.id) is not seq or seq.state != RUNNING:
                continue  # cancelled or preempted while the step ran
            seq.cached += n
            if seq.cached == seq.tokens:
                chunk = self._produce(seq)
                chunks.append(chunk)
                produced.append(seq.id)
                if seq.produced_here == 1:
                    first.append(seq.id)
                if chunk.finish_reason is not None:
                    finished.append(seq.id)
        self._run.stepped(step, started_at, step.seconds, produced, first, finished)
        if chunks:
            self.outbox.chunks(chunks)
        self._boundary()

    # ---- stretches of decode steps ------------------------------------------------------

    def _plan_stretch(self, step: _Step, start: float) -> _Stretch | None:
        """`step` and the decode steps after it as one stretch, or None to step once."""
        run = self._run
        if (
            step.is_prefill
            or self.config.max_stretch_steps < 2
            or run.until_prefilled
            or run.hand_off
            or len(step.seqs) != len(run.open)
            or {s.id for s in step.seqs} != run.open
        ):
            return None
        most = min(self.config.max_stretch_steps, min(s.max_tokens - s.produced for s in step.seqs))
        block = self.device.block_tokens[run.model]
        first_at = run.first_step_at if run.first_step_at is not None else start
        t, context, ends = start + step.seconds, step.context_tokens, [(start + step.seconds, step.seconds, step.context_tokens)]
        for j in range(1, most):
            if t - first_at >= run.quota_s or not self._pages_for_step(step.seqs, j, block):
                break
            context += len(step.seqs)
            seconds = self.cost.decode_step_s(run.model, len(step.seqs), context)
            t += seconds
            ends.append((t, seconds, context))
        return _Stretch(step, start, ends) if len(ends) > 1 else None

    def _pages_for_step(self, seqs: list[Seq], j: int, block: int) -> bool:
        """KV pages for the stretch's step j (0 = its first): allocated now, or False if short."""
        for seq in seqs:
            need = pages_for(seq.cached + 1 + j, block) - seq.pages
            if need > 0:
                if not self.device.allocate(need):
                    return False
                seq.pages += need
        return True

    def _cut_stretch(self) -> None:
        """A command came: the stretch ends at the first step boundary from now on."""
        st = self._stretch
        if st is None:
            return
        now = self.loop.now
        keep = next((j + 1 for j, (end, _, _) in enumerate(st.ends) if end >= now), len(st.ends))
        if keep < len(st.ends):
            st.ends = st.ends[:keep]
            st.handle.cancel()
            st.handle = self.loop.at(st.ends[-1][0], self._stretch_done)

    def _stretch_done(self) -> None:
        st, self._stretch = self._stretch, None
        steps = len(st.ends)
        live = [s for s in st.step.seqs if self.seqs.get(s.id) is s and s.state == RUNNING]
        ids = [s.id for s in live]
        chunks, times, finished = [], [], []
        for seq in live:
            seq.cached += steps
            chunk = self._produce(seq, steps)
            chunks.append(chunk)
            times.append(tuple(end for end, _, _ in st.ends))
            if chunk.finish_reason is not None:
                finished.append(seq.id)
        started = st.started_at
        for j, (end, seconds, context) in enumerate(st.ends):
            self.stats.busy_s += seconds
            step = _Step(False, live, [1] * len(live), seconds, context)
            self._run.stepped(step, started, seconds, ids, [], finished if j == steps - 1 else [])
            started = end
        if chunks:
            self.outbox.chunks(chunks, times)
        self._boundary()

    def _produce(self, seq: Seq, tokens: int = 1) -> TokenChunk:
        index = seq.produced
        seq.produced += tokens
        seq.produced_here += tokens
        block = self.device.block_tokens[seq.model]
        done = seq.produced >= seq.max_tokens or pages_for(seq.tokens + 1, block) > self.device.total_pages
        usage = Usage(seq.prompt, seq.produced) if done else None
        if done:
            del self.seqs[seq.id]
            self._drop_kv(seq)
        ids = (DUMMY_TOKEN,) * tokens
        return TokenChunk(seq.id, index, ids, None, "length" if done else None, usage, None, self.worker_id)

    def _error(self, request_id: str, index: int, error: ErrorInfo) -> None:
        self.outbox.chunks([TokenChunk(request_id, index, error=error, worker_id=self.worker_id)])
