"""An engine without compute: each step gives every running request its next prompt token back.

    engine = EchoEngine({"demo-llama": path}, max_batch_size=64, step_s=0.0)
    engine.add_request(EngineRequest("r1", "demo-llama", (5, 6, 7), SamplingParams(max_tokens=4)))
    engine.step()   # [StepOutput("r1", ..., token_id=5, index=0, ...)]; then 6, 7, 5 ("length")

It has the surface of Engine that the worker's engine thread uses, so `--engine echo` runs
the whole control plane (gateway, router, worker, bus) with no torch compute and no weights:
what the serving benchmark needs to measure what the bus adds per token. Requests are vetted
like the real engine's (SamplingParams.validate, vocabulary, context window, read from each
model's config.json); every catalog model counts as resident on the device. `step_s` sleeps
in each step to stand in for a model's step time. Like the real engine, a step is a prefill
(requests without a token yet, each getting its first) or else a decode, and `step(request_ids)`
limits it to those requests; `last_step` says what it computed.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from services.gpu_worker.engine.config import ModelConfig, load_model_config
from services.gpu_worker.engine.engine import EngineStats, StepInfo, StepOutput
from services.gpu_worker.engine.errors import InvalidRequestError, UnknownModelError
from services.gpu_worker.engine.residency import Tier
from services.gpu_worker.engine.sequence import EngineRequest, check_token_ids

ECHO_PAGES = 1 << 16
"""KV pages an echo engine reports (it holds none); each running request counts as one."""
ECHO_BLOCK_TOKENS = 16


@dataclass
class EchoSequence:
    """What the engine thread reads of a sequence: its tokens and its (empty) pages."""

    request: EngineRequest
    token_ids: list[int]
    produced: int = 0
    pages: list[int] = field(default_factory=list)
    host_pages: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class EchoSlot:
    cfg: ModelConfig
    block_tokens: int = ECHO_BLOCK_TOKENS
    weight_bytes: int = 0
    """No weights: a switch copies nothing."""
    host_bytes: int = 0


class EchoEngine:
    def __init__(self, models: dict[str, Path], max_batch_size: int = 64, step_s: float = 0.0):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if step_s < 0:
            raise ValueError(f"step_s must be >= 0 seconds, got {step_s}")
        self.model_paths = {name: Path(p) for name, p in models.items()}
        self.max_batch_size = max_batch_size
        self.step_s = step_s
        self.active: str | None = None
        self._tiers = {name: Tier.DEVICE for name in self.model_paths}
        self._slots: dict[str, EchoSlot] = {}
        self._seqs: dict[str, EchoSequence] = {}
        """In arrival order: the first max_batch_size of the active model run, the rest wait."""
        self.last_step: StepInfo | None = None

    # ---- model memory (nothing moves) -----------------------------------------------

    def slot(self, name: str) -> EchoSlot:
        if name not in self._slots:
            if name not in self.model_paths:
                known = ", ".join(sorted(self.model_paths)) or "none"
                raise UnknownModelError(f"unknown model {name!r} (this engine serves: {known})")
            self._slots[name] = EchoSlot(load_model_config(name, self.model_paths[name]))
        return self._slots[name]

    def tier(self, name: str) -> Tier:
        self.slot(name)
        return self._tiers[name]

    def load(self, name: str) -> None:
        self.slot(name)
        self._tiers[name] = Tier.DEVICE

    prefetch = load

    def activate(self, name: str) -> None:
        self.load(name)
        self.active = name

    def evict(self, name: str) -> None:
        if self.active == name:
            self.active = None

    def pin(self, names: frozenset[str]) -> None:
        """Every model counts as resident here: nothing to keep."""

    def unload(self, name: str) -> None:
        self.evict(name)
        self._tiers[name] = Tier.DISK

    def swap_out(self, model: str | None = None, request_ids: list[str] | None = None) -> int:
        return 0  # no KV to park

    def swap_in(self, model: str | None = None, request_ids: list[str] | None = None) -> int:
        return 0

    # ---- requests -------------------------------------------------------------------

    def add_request(self, request: EngineRequest) -> None:
        cfg = self.slot(request.model).cfg
        request.params.validate()
        if request.request_id in self._seqs:
            raise InvalidRequestError(f"request id {request.request_id!r} is already in use")
        prompt = request.prompt_token_ids
        if not prompt:
            raise InvalidRequestError("the prompt is empty")
        check_token_ids(request, cfg.vocab_size)
        if len(prompt) >= cfg.max_position:
            raise InvalidRequestError(
                f"the prompt has {len(prompt)} tokens; model {request.model!r} has a context window "
                f"of {cfg.max_position} tokens, which must also hold at least one new token"
            )
        self._seqs[request.request_id] = EchoSequence(request, list(prompt))

    def abort(self, request_id: str) -> bool:
        return self._seqs.pop(request_id, None) is not None

    def has_work(self, model: str | None = None) -> bool:
        if model is None:
            return bool(self._seqs)
        return any(s.request.model == model for s in self._seqs.values())

    def models_with_work(self) -> list[str]:
        return sorted({s.request.model for s in self._seqs.values()})

    def step(self, request_ids: Collection[str] | None = None) -> list[StepOutput]:
        """One token for each stepping request of the active model: its prompt, cyclically.

        Requests without a token yet go first, on their own (a prefill step), as in the real engine.
        """
        self.last_step = None
        if self.active is None:
            return []
        only = None if request_ids is None else set(request_ids)
        seqs = [
            s
            for s in self._seqs.values()
            if s.request.model == self.active and (only is None or s.request.request_id in only)
        ]
        fresh = [s for s in seqs if s.produced == 0]
        batch = (fresh or seqs)[: self.max_batch_size]
        if not batch:
            return []
        if self.step_s:
            time.sleep(self.step_s)
        computed = sum(len(s.token_ids) for s in batch) if fresh else len(batch)
        cfg = self._slots[self.active].cfg
        outputs = []
        for seq in batch:
            prompt, params = seq.request.prompt_token_ids, seq.request.params
            token = prompt[seq.produced % len(prompt)]
            seq.produced += 1
            seq.token_ids.append(token)
            reason = None
            if (not params.ignore_eos and token in cfg.eos_token_ids) or token in params.stop_token_ids:
                reason = "stop"
            elif seq.produced >= params.max_tokens or len(seq.token_ids) >= cfg.max_position:
                reason = "length"
            if reason is not None:
                del self._seqs[seq.request.request_id]
            logprob = 0.0 if params.logprobs else None  # the echo is certain
            top = _top_logprobs(token, params.top_logprobs, cfg.vocab_size) if params.logprobs else None
            outputs.append(
                StepOutput(seq.request.request_id, self.active, token, seq.produced - 1, logprob, reason, top)
            )
        context = sum(len(s.token_ids) - 1 for s in batch)  # the sampled token is not attended yet
        self.last_step = StepInfo(bool(fresh), len(batch), computed, context)
        return outputs

    # ---- introspection --------------------------------------------------------------

    def stats(self) -> EngineStats:
        running = min(sum(s.request.model == self.active for s in self._seqs.values()), self.max_batch_size)
        return EngineStats(
            active=self.active,
            models={name: tier.value for name, tier in self._tiers.items()},
            total_pages=ECHO_PAGES,
            free_pages=ECHO_PAGES - len(self._seqs),
            total_host_pages=0,
            free_host_pages=0,
            waiting=len(self._seqs) - running,
            running=running,
            swapped=0,
        )

    def sequence(self, request_id: str) -> EchoSequence | None:
        return self._seqs.get(request_id)

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        pass


def _top_logprobs(token: int, k: int, vocab: int) -> tuple[tuple[int, float], ...] | None:
    """The echoed token is certain; the next ids stand in as (finite) alternatives."""
    if k == 0:
        return None
    return ((token, 0.0),) + tuple(((token + j) % vocab, -100.0 * j) for j in range(1, k))
