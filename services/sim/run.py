"""One workload through the router's real policy and simulated workers, in virtual time.

    result = simulate(workload, SimConfig(gpus=2, scheduling="token"))
    print(result.summary())

The policy is services/router/policy.py RouterPolicy itself, fed exactly what the router
service feeds it: requests on arrival, WorkerStates, TokenChunks, TurnReports, and a tick
every tick_interval_s. Its decisions go to the simulated workers (services/sim/worker.py)
after a bus delay, and the workers' messages come back the same way. A client sees a token
when the router does (the gateway subscribes to the same subject).

Requests that never complete (rejected, failed on a worker, or still running when the
simulation gives up `drain_s` after the last arrival) count with attainment 0: a scheduler
must not look better by dropping work.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

from services.router.config import PolicyConfig, TimePriors
from services.router.decisions import Assign, Cancel, Decision, Done, Reject, StartTurn
from services.router.policy import RouterPolicy
from services.router.slo.attainment import RequestSlo, request_slo, summarize
from services.sim.autoscale import AutoscaleConfig
from services.sim.cost import CostModel
from services.sim.errors import SimError
from services.sim.events import EventLoop
from services.sim.worker import Outbox, SimWorker, SimWorkerConfig
from services.sim.workload import Arrival, Workload
from shared.protocol import AssignRequest, GenerateRequest, Sampling, TokenChunk, TurnReport, WorkerState

TYPICAL_CONTEXT_TOKENS = 1000
"""Context per sequence used to fold the per-sequence decode cost into the policy's
per-context-token prior (mean prompt ~680 plus output so far)."""

POLICIES = ("token", "request", "dedicated")
"""token: turns with SLO quotas; request: one model at a time per GPU, LRU weights (the
policy's two schedulings); dedicated: one model per GPU (services/sim/dedicated.py)."""

QUOTA_COPIES = 2.0
"""The policy's max_quota_s in weight copies of the largest served model (H100 mix: 1.04 s).
On the paper's synth-24/40/48/80 workloads Q_max 0.75-1 s beat 2 s by 3-6 points of
attainment and 4 s by 15-20 (bench/README.md)."""

SLOTS_PER_GPU = 256
"""The policy's max_running_per_worker for a simulated GPU."""

WAKE_BEFORE_ARRIVAL_S = 1.0
"""skip_idle: workers report again this long before the next arrival (the policy drops a worker
silent for its worker_timeout_s, 2 s)."""


@dataclass(frozen=True)
class SimConfig:
    gpus: int = 1
    """Simulated workers, one GPU each; every one serves every model of the workload."""
    prefill_gpus: int = 0
    """Disaggregated mode: this many of the GPUs only prefill, the rest only decode (the
    policy's prefill_workers). 0: every GPU does both."""
    gpu_profile: str = "H100"
    """Key of cost.GPU_PROFILES (ignored when a CostModel is passed to simulate)."""
    scheduling: str = "token"
    """The policy's scheduling: token (turns with SLO quotas) or request (one model at a time)."""
    ttft_s: float = 10.0
    """Time-to-first-token objective of every model (the paper's default)."""
    tbt_s: float = 0.1
    """Time-between-tokens objective of every model (the paper's default)."""
    bus_delay_s: float = 0.0005
    """One-way NATS latency between router and workers (and worker to client)."""
    tick_interval_s: float = 0.25
    """How often the policy's tick runs (the router service's default)."""
    drain_s: float = 600.0
    """Virtual seconds after the last arrival before unfinished requests are given up."""
    worker: SimWorkerConfig = field(default_factory=SimWorkerConfig)
    policy: PolicyConfig | None = None
    """None: the policy's defaults with `scheduling` and time priors that match the GPU profile."""
    skip_idle: bool = False
    """Skip the stretches with no request in the system (no policy tick, no worker report) to
    shortly before the next arrival: a model alone on its GPUs, idle most of a day, simulates
    in a fraction of the time. Not with an autoscaler (it acts while the pool is idle)."""
    autoscale: AutoscaleConfig | None = None
    """Run the autoscaler's planner (services/sim/autoscale.py): `gpus` workers at first, then as
    many as it asks for, each counted from when it is asked for until it is released."""

    def __post_init__(self):
        if not isinstance(self.gpus, int) or self.gpus < 1:
            raise SimError(f"gpus must be at least 1, got {self.gpus}")
        if not 0 <= self.prefill_gpus < self.gpus:
            raise SimError(
                f"prefill_gpus must be >= 0 and leave at least one of the {self.gpus} GPUs to decode, got {self.prefill_gpus}"
            )
        if self.scheduling not in POLICIES:
            raise SimError(f"policy {self.scheduling!r} is not one of {', '.join(POLICIES)}")
        if not self.ttft_s > 0 or not self.tbt_s > 0:
            raise SimError(f"ttft ({self.ttft_s}) and tbt ({self.tbt_s}) must be positive seconds")
        if self.bus_delay_s < 0 or self.tick_interval_s <= 0 or self.drain_s < 0:
            raise SimError("bus_delay_s and drain_s must be >= 0 and tick_interval_s > 0")
        if self.autoscale is not None:
            if self.skip_idle:
                raise SimError("skip_idle would stop the autoscaler's view of an idle pool: leave it off with autoscale")
            if self.scheduling == "dedicated":
                raise SimError("dedicated serving keeps one GPU per model all along: the autoscaler sizes the token and request pools")
            if self.prefill_gpus:
                raise SimError("the autoscaler's pool has no prefill-only GPUs: leave prefill_gpus at 0")


@dataclass
class RequestRecord:
    id: str
    arrival: Arrival
    token_times: list[float] = field(default_factory=list)
    """When the client got token k, by index (the first copy of an index counts)."""
    ends: list[str] = field(default_factory=list)
    """How the policy ended it: "done" or "rejected" (exactly one entry when nothing is lost)."""
    finished: bool = False
    """Its last token came (a finish_reason chunk)."""
    error: str | None = None


@dataclass
class SimResult:
    config: SimConfig
    workload: Workload
    records: list[RequestRecord]
    workers: list[SimWorker]
    simulated_s: float
    wall_s: float
    events: int
    policy: str | None = None
    """The policy's name when it is not config.scheduling's (dedicated)."""
    gpu_seconds: float | None = None
    """GPU time the run spans; None: gpus x simulated_s."""
    gpus_over_time: list[tuple[float, int]] | None = None
    """Autoscaled runs: (t, GPUs asked for and not released from t on), at every change."""
    autoscale: dict | None = None
    """Autoscaled runs: GPU-hours, peak and mean GPUs, the planner's actions (SimAutoscaler.summary)."""

    def slo(self, record: RequestRecord) -> RequestSlo:
        times = record.token_times if record.finished else []
        return request_slo(record.arrival.time_s, times, self.config.ttft_s, self.config.tbt_s)

    def summary(self) -> dict:
        """The run as one JSON-able dict. attainment: mean per-request token-deadline attainment
        (services/router/slo/attainment.py); strict_attainment: fraction of requests with TTFT and
        mean TBT within their objectives; switches: turns that changed the computing model (the
        first load included); switch_s: time turns spent making their model computable (weights
        and KV swap-in); weight_copies: weight copies started, prefetches included; failed:
        requests that ended with a worker's error; unfinished: still running at the end."""
        c = self.config
        slos = [self.slo(r) for r in self.records]
        s = summarize(slos)
        ends = Counter(r.ends[0] if r.ends else "unfinished" for r in self.records)
        turns = Counter()
        for w in self.workers:
            turns.update(w.stats.turns)
        anomalies = [a for w in self.workers for a in w.stats.anomalies]
        busy = sum(w.stats.busy_s for w in self.workers)
        gpu_seconds = self.gpu_seconds if self.gpu_seconds is not None else self.simulated_s * c.gpus
        return {
            "policy": self.policy or c.scheduling,
            "gpus": c.gpus,
            "prefill_gpus": c.prefill_gpus,
            "gpu_profile": self.workers[0].cost.gpu.name if self.workers else c.gpu_profile,
            "workload": self.workload.name,
            "models": len(self.workload.models),
            "requests": len(self.records),
            "completed": sum(r.finished for r in self.records),
            "rejected": ends["rejected"],
            "failed": sum(r.error is not None and r.ends != ["rejected"] for r in self.records),
            "unfinished": ends["unfinished"],
            "ttft_slo_s": c.ttft_s,
            "tbt_slo_s": c.tbt_s,
            "attainment": _round(s.mean_attainment),
            "strict_attainment": _round(s.strict_fraction),
            "ttft_p50_s": _round(s.ttft_p50_s),
            "ttft_p99_s": _round(s.ttft_p99_s),
            "tbt_p50_s": _round(s.tbt_p50_s),
            "tbt_p99_s": _round(s.tbt_p99_s),
            "switches": sum(w.stats.switches for w in self.workers),
            "switch_s": _round(sum(w.stats.switch_s for w in self.workers)),
            "weight_copies": sum(w.device.copies for w in self.workers),
            "turns": dict(sorted(turns.items())),
            "preemptions": sum(w.stats.preemptions for w in self.workers),
            "gpu_busy_fraction": _round(busy / gpu_seconds) if gpu_seconds > 0 else None,
            "simulated_s": _round(self.simulated_s),
            "wall_s": _round(self.wall_s),
            "events": self.events,
            "anomalies": len(anomalies),
            "anomaly_examples": anomalies[:5],
        } | (self.autoscale or {})


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def policy_config(cost: CostModel, scheduling: str) -> PolicyConfig:
    """The policy's defaults, with time priors an operator would set for this GPU: its memory and
    copy bandwidths and switch cost, and the median served model's step coefficients."""
    models = list(cost.models.values())
    per_context = statistics.median(
        m.decode_per_context_token_s + m.decode_per_seq_s / TYPICAL_CONTEXT_TOKENS for m in models
    )
    priors = TimePriors(
        memory_bandwidth_gb_s=cost.gpu.memory_bandwidth_bytes_s / 1e9,
        host_to_device_gb_s=cost.gpu.host_to_device_bytes_s / 1e9,
        switch_fixed_s=cost.gpu.switch_fixed_s,
        decode_s_per_context_token=per_context,
        prefill_s_per_token=statistics.median(m.prefill_per_token_s for m in models),
    )
    # A GPU holds requests of many models at once; its KV pages, not a slot count, bound them.
    # A turn long enough for the next model's weights to arrive behind it hides the copy, and
    # a turn much longer only stretches the round: Q_max = QUOTA_COPIES longest weight copies.
    longest_copy_s = max(cost.copy_in_s(m.weight_bytes) for m in models)
    return PolicyConfig(
        scheduling=scheduling,
        time_priors=priors,
        max_running_per_worker=SLOTS_PER_GPU,
        max_quota_s=QUOTA_COPIES * longest_copy_s,
    )


class Simulation:
    def __init__(self, workload: Workload, config: SimConfig, cost: CostModel | None = None):
        self.workload = workload
        self.config = config
        self.loop = EventLoop()
        self.cost = cost or CostModel.for_models(config.gpu_profile, workload.architectures)
        models = workload.models
        if config.scheduling not in ("token", "request"):
            raise SimError(f"Simulation runs the router's token or request scheduling, not {config.scheduling!r}")
        policy = config.policy or policy_config(self.cost, config.scheduling)
        # (No prefix routing: simulated workers keep no prefix cache and prompts are placeholder tokens.)
        policy = dataclasses.replace(
            policy, scheduling=config.scheduling, prefill_workers=config.prefill_gpus, prefix_routing=False
        )
        slos = {m: (config.ttft_s, config.tbt_s) for m in models}
        self.policy = RouterPolicy(models, policy, now=self.loop.now, slos=slos)
        self.workers: dict[str, SimWorker] = {}
        self._released: set[str] = set()
        self.autoscaler = None
        if config.autoscale is not None:
            from services.sim.autoscale_driver import SimAutoscaler

            self.autoscaler = SimAutoscaler(self, config.autoscale)
        else:
            width = len(str(config.gpus - 1))
            for i in range(config.gpus):
                self._new_worker(f"gpu{i:0{width}d}")  # the policy takes the first ids (in sort order) as prefill workers
        self.records: dict[str, RequestRecord] = {}
        self._open: dict[str, str] = {}
        """Requests arrived and not yet ended -> their model."""
        self._ended = 0
        self._arrived = 0
        self._decisions: Counter[str] = Counter()

    def _new_worker(self, wid: str) -> SimWorker:
        outbox = Outbox(
            self._from_worker(self._on_chunks),
            self._from_worker(self._on_report),
            self._from_worker(self._on_state),
        )
        worker = self.workers[wid] = SimWorker(wid, self.loop, self.cost, self.workload.models, outbox, self.config.worker)
        return worker

    def add_worker(self, wid: str) -> None:
        """A worker joins mid-run (the autoscaler's): it reports at once."""
        if wid in self.workers:
            raise SimError(f"worker {wid} already exists")
        self._new_worker(wid).start()

    def release_worker(self, wid: str) -> None:
        """The worker stops reporting; commands still on their way to it are carried out."""
        self.workers[wid].stop()
        self._released.add(wid)

    def held_requests(self) -> dict[str, set[tuple[str, str]]]:
        """Worker -> (request id, model) of the requests the policy has assigned to it or it holds."""
        held: dict[str, set[tuple[str, str]]] = {}
        for rid, model in self._open.items():
            holder = self.policy.holder(rid)
            if holder is not None:
                held.setdefault(holder, set()).add((rid, model))
        for wid, worker in self.workers.items():
            if wid not in self._released:
                for rid, seq in worker.seqs.items():
                    held.setdefault(wid, set()).add((rid, seq.model))
        return held

    # ---- running ----------------------------------------------------------------------

    def run(self) -> SimResult:
        started = time.perf_counter()
        for i, arrival in enumerate(self.workload.arrivals):
            self.loop.at(arrival.time_s, self._arrive, f"r{i}", arrival)
        if self.autoscaler is not None:
            self.autoscaler.start(self.config.gpus)
        else:
            for worker in self.workers.values():
                worker.start()
        self.loop.after(self.config.tick_interval_s, self._tick)
        self.loop.run(until=self.workload.duration_s + self.config.drain_s)
        for worker in self.workers.values():
            worker.stop()
        result = SimResult(
            self.config,
            self.workload,
            list(self.records.values()),
            list(self.workers.values()),
            self.loop.now,
            time.perf_counter() - started,
            self.loop.processed,
        )
        if self.autoscaler is not None:
            result.gpu_seconds = self.autoscaler.ledger.gpu_seconds(self.loop.now)
            result.gpus_over_time = list(self.autoscaler.ledger.series)
            result.autoscale = self.autoscaler.summary(self.loop.now)
        return result

    def _arrive(self, rid: str, arrival: Arrival) -> None:
        self._arrived += 1
        self.records[rid] = RequestRecord(rid, arrival)
        self._open[rid] = arrival.model
        request = GenerateRequest(
            id=rid,
            model=arrival.model,
            prompt_token_ids=(1,) * arrival.input_tokens,
            sampling=Sampling(max_tokens=arrival.output_tokens, ignore_eos=True),
            token_subject=f"sim.tokens.{rid}",
            created_at=self.loop.now,
            tenant=arrival.tenant,
        )
        self.apply(self.policy.submit(request, self.loop.now))

    def _tick(self) -> None:
        now = self.loop.now
        self.apply(self.policy.tick(now))
        if self.config.skip_idle and self._arrived < len(self.workload.arrivals):
            wake_at = self.workload.arrivals[self._arrived].time_s - WAKE_BEFORE_ARRIVAL_S
            if wake_at - now > self.config.tick_interval_s and not self._open and not any(w.seqs for w in self.workers.values()):
                for worker in self.workers.values():
                    worker.stop()
                self.loop.at(wake_at, self._wake)
                return
        self.loop.after(self.config.tick_interval_s, self._tick)

    def _wake(self) -> None:
        """Back from skipping an idle stretch: workers report (the policy sees them live) before the next arrival."""
        for worker in self.workers.values():
            worker.start()
        self.loop.after(self.config.tick_interval_s, self._tick)

    # ---- worker -> router (and client) ---------------------------------------------------

    def _from_worker(self, handler):
        delay = self.config.bus_delay_s
        return lambda *msg: self.loop.after(delay, handler, *msg)

    def _on_chunks(self, chunks: list[TokenChunk], made_at: list[tuple[float, ...]] | None = None) -> None:
        """`made_at`: for a worker's stretch of steps, when each chunk's tokens were made; the
        client sees each one a bus delay after it was made."""
        delay = self.config.bus_delay_s
        for i, chunk in enumerate(chunks):
            self._on_chunk(chunk, None if made_at is None else [t + delay for t in made_at[i]])

    def _on_chunk(self, chunk: TokenChunk, seen_at: list[float] | None = None) -> None:
        record = self.records.get(chunk.request_id)
        if record is not None and not record.finished and record.error is None:
            for offset in range(len(chunk.token_ids)):
                if chunk.index + offset == len(record.token_times):
                    record.token_times.append(self.loop.now if seen_at is None else seen_at[offset])
            if chunk.error is not None:
                record.error = f"{chunk.error.code} {chunk.error.type}: {chunk.error.message}"
            elif chunk.finish_reason is not None and chunk.index + len(chunk.token_ids) == len(record.token_times):
                record.finished = True
        self.apply(self.policy.on_tokens(chunk, self.loop.now))

    def _on_report(self, report: TurnReport) -> None:
        if self.autoscaler is not None:
            self.autoscaler.on_turn_report(report)
        self.apply(self.policy.on_turn_report(report, self.loop.now))

    def _on_state(self, state: WorkerState) -> None:
        self.apply(self.policy.on_worker_state(state, self.loop.now))

    # ---- router -> workers ----------------------------------------------------------------

    def apply(self, decisions: list[Decision]) -> None:
        delay = self.config.bus_delay_s
        for d in decisions:
            self._decisions[type(d).__name__] += 1
            if isinstance(d, Assign):
                self.loop.after(delay, self.workers[d.worker_id].assign, AssignRequest(d.request, d.resume_token_ids))
            elif isinstance(d, StartTurn):
                self.loop.after(delay, self.workers[d.worker_id].run_turn, d.turn)
            elif isinstance(d, Cancel):
                self.loop.after(delay, self.workers[d.worker_id].cancel, d.request_id)
            elif isinstance(d, Done):
                self._end(d.request_id, "done")
            elif isinstance(d, Reject):
                record = self.records.get(d.request.id)
                if record is not None and record.error is None:
                    record.error = f"{d.error.code} {d.error.type}: {d.error.message}"
                self._end(d.request.id, "rejected")

    def _end(self, rid: str, how: str) -> None:
        record = self.records.get(rid)
        if record is None:
            return
        record.ends.append(how)
        if len(record.ends) == 1:
            self._ended += 1
            self._open.pop(rid, None)
            if self._ended == len(self.workload.arrivals):
                self.loop.stop()


def simulate(workload: Workload, config: SimConfig, cost: CostModel | None = None) -> SimResult:
    if config.scheduling == "dedicated":
        from services.sim.dedicated import simulate_dedicated

        return simulate_dedicated(workload, config, cost)
    return Simulation(workload, config, cost).run()
