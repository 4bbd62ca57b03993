"""The router's bookkeeping: what it knows of each worker and of each request it holds."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.router.prefix_index import page_keys
from shared.protocol import GenerateRequest, TokenChunk, WorkerState


@dataclass
class WorkerView:
    """One worker as its latest report shows it, plus the requests the router placed on it."""

    worker_id: str
    ready: bool
    serving: frozenset[str]
    tiers: dict[str, str]
    """Model name -> disk, host or device."""
    block_tokens: dict[str, int]
    """Model name -> tokens one KV page holds for it."""
    weight_bytes: dict[str, int]
    active_model: str | None
    reported_running: frozenset[str]
    free_kv_pages: int
    total_kv_pages: int
    seq: int
    ts: float
    last_report: float
    """The router's clock when the latest report arrived (worker clocks are not trusted)."""
    assigned: set[str] = field(default_factory=set)
    """Requests the router assigned here that are not finished."""
    foreign: int = 0
    """Requests the worker reports that the router did not assign here (they still take a slot)."""
    turn_id: int = 0
    """The turn the worker reported running; 0 when idle."""
    drained: bool = False
    """The autoscaler is emptying this worker: it takes no new request."""
    max_running: int = 0
    """Requests the worker said it takes at once (0: it did not say)."""

    @classmethod
    def from_state(cls, state: WorkerState, now: float) -> WorkerView:
        view = cls(state.worker_id, False, frozenset(), {}, {}, {}, None, frozenset(), 0, 0, state.seq, state.ts, now)
        view.apply(state, now)
        return view

    def is_stale(self, state: WorkerState) -> bool:
        """A reordered older report of the same worker process."""
        return state.seq <= self.seq and state.ts <= self.ts

    def is_restart(self, state: WorkerState) -> bool:
        """The counter went back while the clock went on: a new worker process under the same id."""
        return state.seq < self.seq and state.ts > self.ts

    def apply(self, state: WorkerState, now: float) -> None:
        self.ready = state.ready
        self.serving = frozenset(state.serving)
        self.tiers = {m.name: m.tier for m in state.models}
        self.block_tokens = {m.name: m.block_tokens for m in state.models}
        self.weight_bytes = {m.name: m.weight_bytes for m in state.models}
        self.turn_id = state.turn_id
        self.active_model = state.active_model
        self.reported_running = frozenset(state.running)
        self.free_kv_pages = state.free_kv_pages
        self.total_kv_pages = state.total_kv_pages
        self.max_running = state.max_running
        self.seq = state.seq
        self.ts = state.ts
        self.last_report = now

    def block_tokens_of(self, model: str) -> int:
        return self.block_tokens.get(model, 0)

    @property
    def load(self) -> int:
        return len(self.assigned) + self.foreign

    def is_live(self, now: float, timeout_s: float) -> bool:
        return now - self.last_report <= timeout_s


@dataclass
class TrackedRequest:
    """An accepted request until it finishes: queued (worker_id None) or assigned."""

    request: GenerateRequest
    accepted_at: float
    worker_id: str | None = None
    tokens: dict[int, int] = field(default_factory=dict)
    """Produced token ids by index, as seen in TokenChunks (duplicates collapse)."""
    misses: int = 0
    """Consecutive reports of the holder that did not list this request."""
    resumed: int = 0
    """Tokens it had produced when its current worker took it (that worker re-prefills them)."""
    kv_handoff: str = ""
    """A KV hand-off entry a prefill worker left for it, until a decode worker takes it."""
    preempted: bool = False
    """It gave its slot to another tenant once (preemption.py): never again."""
    seen_at: list[float] = field(default_factory=list)
    """When the router saw each new token (the client sees it then too), for its SLO attainment."""
    _page_keys: tuple[tuple[int, int], list[int]] | None = field(default=None, repr=False)

    @property
    def model(self) -> str:
        return self.request.model

    prefix: int = 0
    """Length of the gap-free prefix of `tokens`, kept as chunks arrive."""

    def record(self, chunk: TokenChunk, now: float) -> None:
        before = len(self.tokens)
        for offset, token in enumerate(chunk.token_ids):
            self.tokens.setdefault(chunk.index + offset, token)
        self.seen_at.extend([now] * (len(self.tokens) - before))
        while self.prefix in self.tokens:
            self.prefix += 1

    def produced(self) -> tuple[int, ...]:
        """The gap-free prefix of produced tokens: what a new worker resumes from."""
        return tuple(self.tokens[i] for i in range(self.prefix))

    def page_keys(self, block_tokens: int) -> list[int]:
        """prefix_index.page_keys of its prompt and produced tokens, kept until those grow."""
        memo_key = (block_tokens, self.prefix)
        if self._page_keys is None or self._page_keys[0] != memo_key:
            tokens = tuple(self.request.prompt_token_ids) + self.produced()
            self._page_keys = (memo_key, page_keys(self.model, tokens, block_tokens))
        return self._page_keys[1]
