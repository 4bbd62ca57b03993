"""The router's settings: the policy's knobs (pure) and the service's I/O settings."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from shared import subjects

_ID = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ScoreWeights:
    """How much each scorer counts when picking a worker; the highest weighted sum wins."""

    warmth: float = 1.0
    """Model already active (1.0), resident on the device (0.8), in host memory (0.5), cold (0)."""
    load: float = 0.5
    """Free request slots: 1 - running / scoring.slots."""
    kv_headroom: float = 0.1
    """Free KV pages / total KV pages as the worker last reported."""

    def __post_init__(self):
        for name in ("warmth", "load", "kv_headroom"):
            if getattr(self, name) < 0:
                raise ValueError(f"score weight {name} must be >= 0 (0 switches the scorer off)")


SCHEDULING = ("token", "request")


@dataclass(frozen=True)
class TimePriors:
    """Where the step and switch time estimates start, before workers report real turns.
    Defaults suit a CPU worker; the estimates learn the truth within a few turns."""

    memory_bandwidth_gb_s: float = 20.0
    """Device memory bandwidth (a decode step reads every weight once). H100: ~3350."""
    host_to_device_gb_s: float = 10.0
    """Weight copy bandwidth of a model switch. Pinned PCIe Gen5: ~50."""
    switch_fixed_s: float = 0.002
    """Fixed cost of a switch beyond the weight copy."""
    decode_s_per_context_token: float = 1e-7
    prefill_s_per_token: float = 2e-4

    def __post_init__(self):
        for name in ("memory_bandwidth_gb_s", "host_to_device_gb_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"time_priors.{name} must be > 0")
        for name in ("switch_fixed_s", "decode_s_per_context_token", "prefill_s_per_token"):
            if getattr(self, name) < 0:
                raise ValueError(f"time_priors.{name} must be >= 0")


DEFAULT_SLOTS = 32
"""Requests per worker when neither the router's config nor the worker names a number."""


@dataclass(frozen=True)
class PolicyConfig:
    worker_timeout_s: float = 2.0
    """A worker whose last report is older than this is dead; its requests move elsewhere."""
    no_worker_grace_s: float = 5.0
    """How long a request waits for a worker serving its model to appear before it gets 503."""
    max_queue_per_model: int = 256
    """Queued (unassigned) requests per model before new ones get 429."""
    tenant_fairness: bool = True
    """When the pool is full, the next free slot goes to the tenant with the fewest requests in
    service (fair_queue.py); False: plain FCFS (the baseline)."""
    tenant_preemption: bool = False
    """With tenant_fairness, when the pool is full: a waiting tenant takes a running request's
    slot from the tenant with the most in service, if it holds at least two more (preemption.py;
    the preempted request resumes later from its tokens, as after a move)."""
    max_tenant_share: float = 1.0
    """The share of the pool's slots (the ready workers' scoring.slots) one named tenant
    may hold; its further requests wait even while slots are free. 1.0: no cap. Requests
    without a tenant (no `user`) are never capped."""
    max_running_per_worker: int | None = None
    """Requests the router assigns to one worker at once; the rest wait in their model's queue.
    None: what each worker reports (WorkerState.max_running: 32 on CPU, 256 on CUDA by
    default), DEFAULT_SLOTS for one that does not say."""
    lost_after_reports: int = 4
    """Consecutive worker reports that omit a request assigned to it before it counts as lost
    (e.g. the worker restarted) and is assigned again."""
    finished_memory: int = 10_000
    """Finished request ids remembered, so a redelivered copy is acked instead of run twice."""
    attainment_window_s: float = 60.0
    """RouterState.attainment covers the requests that finished within this many seconds."""
    weights: ScoreWeights = field(default_factory=ScoreWeights)
    scheduling: str = "token"
    """token: models take turns at token granularity with SLO-derived quotas (Aegaeon);
    request: one model at a time per worker until its requests finish (the baseline)."""
    max_round_load: float = 0.6
    """A request whose model a worker already holds does not open that model on another worker
    whose round would then exceed this load (slo.quota.round_load: the share of the round the
    batches need to keep their TBT, switches included; above 1 no quotas keep them all); it
    waits for a slot beside its model's batch. Below 1 for the margin the estimate leaves out
    (prefills, estimation error); bench/README.md has the sweep behind 0.6."""
    prefix_routing: bool = True
    """Among workers that could take a request alike (holders of its model, or workers equal on
    the other criteria), prefer the one whose prefix cache probably holds the most of its
    prompt (prefix_index.py): a chat's next turn, a shared system prompt."""
    prefix_load_slack: float = 0.25
    """How much busier, as a share of its slots, a holder of the model with more of the prompt
    cached may be than the least loaded holder and still take the request."""
    max_quota_s: float = 2.0
    """The longest decode turn while other models wait (Q_max of the quota formula)."""
    min_turn_steps: int = 4
    """The shortest bounded decode turn, in steps of its batch (the quota formula may ask for
    less when switches are cheap; each turn costs a bus round trip)."""
    min_switch_s: float = 0.002
    """The least a change of turn is assumed to cost, even between batches of one model."""
    max_prefill_group: int = 8
    """Requests prefilled together in one prefill turn (grouped FCFS)."""
    max_batch_size: int = 32
    """Requests in one decode batch; more of one model are split into several batches."""
    turn_lost_after_s: float = 1.5
    """A turn the worker neither runs nor reported after this long counts as lost and is replanned."""
    prefill_workers: int = 0
    """Disaggregated mode: this many workers (the first by id) only prefill, the others only
    decode; a request moves after its first token by recompute. 0: every worker does both.
    With too few live workers the pool falls back to doing both everywhere."""
    kv_handoff: bool = False
    """Disaggregated mode on one machine: prefill workers leave each request's KV cache in the
    machine's shared hand-off area and decode workers read it, instead of recomputing it."""
    time_priors: TimePriors = field(default_factory=TimePriors)

    def __post_init__(self):
        if self.prefill_workers < 0:
            raise ValueError("prefill_workers must be >= 0 (0 runs prefill and decode on every worker)")
        if self.scheduling not in SCHEDULING:
            raise ValueError(f"scheduling {self.scheduling!r}: use one of {', '.join(SCHEDULING)}")
        if self.max_quota_s <= 0 or self.min_switch_s < 0:
            raise ValueError("max_quota_s must be > 0 and min_switch_s >= 0")
        if not 0 <= self.prefix_load_slack <= 1:
            raise ValueError(f"prefix_load_slack must be in [0, 1] (a share of a worker's slots), got {self.prefix_load_slack}")
        if not self.max_round_load > 0:
            raise ValueError(f"max_round_load must be > 0 (1.0: a round that just keeps its TBT), got {self.max_round_load}")
        if self.min_turn_steps < 1:
            raise ValueError("min_turn_steps must be >= 1")
        if self.max_prefill_group < 1 or self.max_batch_size < 1:
            raise ValueError("max_prefill_group and max_batch_size must be >= 1")
        if self.turn_lost_after_s <= 0:
            raise ValueError("turn_lost_after_s must be > 0 (a few worker report intervals)")
        if self.worker_timeout_s <= 0:
            raise ValueError("worker_timeout_s must be > 0 (workers report every 0.5 s; 2.0 is a good value)")
        if self.no_worker_grace_s < 0:
            raise ValueError("no_worker_grace_s must be >= 0 (0 answers 503 as soon as no worker serves a model)")
        if self.max_queue_per_model < 0:
            raise ValueError("max_queue_per_model must be >= 0 (0 rejects every request that cannot start at once)")
        if self.max_running_per_worker is not None and self.max_running_per_worker < 1:
            raise ValueError("max_running_per_worker must be >= 1")
        if not 0 < self.max_tenant_share <= 1:
            raise ValueError(f"max_tenant_share must be in (0, 1], got {self.max_tenant_share}")
        if self.lost_after_reports < 1:
            raise ValueError("lost_after_reports must be >= 1")
        if self.finished_memory < 0:
            raise ValueError("finished_memory must be >= 0")
        if not self.attainment_window_s > 0:
            raise ValueError("attainment_window_s must be > 0 seconds (60 is a good value)")


@dataclass(frozen=True)
class RouterConfig:
    nats: str
    """NATS server URL(s), comma-separated."""
    catalog: Path
    """The model catalog (TOML); a request for a model not in it gets 404."""
    router_id: str = "router"
    """This router's name in RouterState reports."""
    consumer: str = subjects.ROUTER_CONSUMER
    """Durable JetStream consumer name; a restarted router with the same name picks up where the old one stopped."""
    ack_wait_s: float = 30.0
    """Seconds JetStream waits for an ack (or in-progress) before it redelivers a request."""
    in_progress_interval_s: float = 10.0
    """How often a request still being served tells JetStream it is in progress; below ack_wait_s."""
    max_ack_pending: int = 100_000
    """Requests the router may hold unacked (queued or running) at once."""
    startup_wait_s: float = 1.0
    """How long a starting router listens to worker reports before it takes requests, so that
    requests a previous router assigned are adopted from the workers' reports, not run twice."""
    tick_interval_s: float = 0.25
    """How often the policy checks for dead workers and waiting requests."""
    state_interval_s: float = 0.5
    """How often RouterState is published."""
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    """Port of the router's Prometheus /metrics (turns, switches, idle time); None: not served,
    0: a free port."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self):
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port {self.metrics_port} is not a TCP port (0..65535)")
        if not self.nats:
            raise ValueError("nats: give a NATS URL such as nats://127.0.0.1:4222")
        if not _ID.match(self.router_id):
            raise ValueError(f"router_id {self.router_id!r}: use letters, digits, - and _")
        if not _ID.match(self.consumer):
            raise ValueError(f"consumer {self.consumer!r}: use letters, digits, - and _")
        if self.ack_wait_s <= 0:
            raise ValueError("ack_wait_s must be > 0 (30 is a good value)")
        if not 0 < self.in_progress_interval_s < self.ack_wait_s:
            raise ValueError(
                f"in_progress_interval_s ({self.in_progress_interval_s}) must be > 0 and below "
                f"ack_wait_s ({self.ack_wait_s}), or JetStream redelivers requests still being served"
            )
        if self.max_ack_pending < 1:
            raise ValueError("max_ack_pending must be >= 1")
        if self.startup_wait_s < 0:
            raise ValueError("startup_wait_s must be >= 0 (about two worker report intervals is enough)")
        if self.tick_interval_s <= 0 or self.state_interval_s <= 0:
            raise ValueError("tick_interval_s and state_interval_s must be > 0")
