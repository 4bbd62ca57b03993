"""A request inside the engine: its tokens, its KV pages and its sampling state."""

from __future__ import annotations

import enum
import math
import os
from collections import Counter
from dataclasses import dataclass, field

import torch

from .errors import InvalidRequestError


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    """With logprobs: also this many most likely tokens at each position."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    """1 is off; see shared.protocol.Sampling for all three."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, added to its logit) pairs."""

    def validate(self) -> None:
        def bad(field_name: str, why: str):
            value = getattr(self, field_name)
            raise InvalidRequestError(f"{field_name}={value!r} is invalid: {why}")

        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            bad("max_tokens", "must be a positive integer")
        if not _finite(self.temperature) or not 0 <= self.temperature <= 100:
            bad("temperature", "must be between 0 and 100 (0 means greedy)")
        if not _finite(self.top_p) or not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            bad("top_k", "must be a non-negative integer (0 disables it)")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            bad("seed", "must be an integer in [0, 2**63)")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop", "every stop string must be a non-empty string")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            bad("stop_token_ids", "must be non-negative integers")
        if not isinstance(self.top_logprobs, int) or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            bad("top_logprobs", f"must be an integer from 0 to {MAX_TOP_LOGPROBS}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not _finite(getattr(self, name)) or not -2 <= getattr(self, name) <= 2:
                bad(name, "must be between -2 and 2")
        if not _finite(self.repetition_penalty) or not 0 < self.repetition_penalty <= 2:
            bad("repetition_penalty", "must be in (0, 2] (1 is off)")
        ids = [t for t, _ in self.logit_bias]
        if any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in ids) or len(set(ids)) != len(ids):
            bad("logit_bias", "token ids must be distinct non-negative integers")
        if any(not _finite(b) or not -100 <= b <= 100 for _, b in self.logit_bias):
            bad("logit_bias", "each bias must be between -100 and 100")

    @property
    def greedy(self) -> bool:
        """Temperature 0, or so close to it that logits / temperature would overflow float32."""
        return self.temperature < GREEDY_BELOW

    @property
    def adjusts_logits(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias) or self.repetition_penalty != 1.0


MAX_TOP_LOGPROBS = 20
GREEDY_BELOW = 1e-5
"""Temperatures under this decode greedily (vLLM's rule too)."""


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class EngineRequest:
    request_id: str
    model: str
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams = SamplingParams()
    resumed: int = 0
    """How many of prompt_token_ids, at their end, are the request's own earlier output (it
    moved here from another worker): the penalties count them as completion."""


def check_token_ids(request: EngineRequest, vocab: int) -> None:
    """Raises InvalidRequestError for a prompt or logit_bias token id outside the vocabulary."""
    bad = [t for t in request.prompt_token_ids if not isinstance(t, int) or not 0 <= t < vocab]
    if bad:
        raise InvalidRequestError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
    bad = [t for t, _ in request.params.logit_bias if t >= vocab]
    if bad:
        raise InvalidRequestError(f"logit_bias token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
    if not isinstance(request.resumed, int) or not 0 <= request.resumed < len(request.prompt_token_ids):
        raise InvalidRequestError(f"resumed={request.resumed!r} must leave at least one prompt token")


class SeqState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    SWAPPED = "swapped"
    FINISHED = "finished"


@dataclass
class Sequence:
    request: EngineRequest
    arrival: int
    """Monotonic arrival order, for FCFS and for choosing whom to preempt."""
    token_ids: list[int] = field(default_factory=list)
    num_cached: int = 0
    """Tokens whose K/V are in this sequence's pages."""
    pages: list[int] = field(default_factory=list)
    prefix_entries: list[int] = field(default_factory=list)
    """Prefix cache entries of its leading full pages, one per page (prefix_cache.py)."""
    cached_prompt_tokens: int = 0
    """Tokens of its first prefill that the prefix cache served."""
    parked_prefix: list[tuple[int, int]] = field(default_factory=list)
    """While swapped out: (prefix cache entry, device page) of its leading pages that stayed
    cached on the device instead of going to host memory with the rest."""
    host_pages: list[int] = field(default_factory=list)
    state: SeqState = SeqState.WAITING
    finish_reason: str | None = None
    output_logprobs: list[float] = field(default_factory=list)
    generator: torch.Generator | None = None
    _counts: Counter[int] = field(default_factory=Counter, repr=False)
    _seen: set[int] = field(default_factory=set, repr=False)
    _counted: int = field(default=0, repr=False)

    def __post_init__(self):
        self.token_ids = list(self.request.prompt_token_ids)
        if not self.params.greedy:
            seed = self.params.seed
            if seed is None:
                seed = int.from_bytes(os.urandom(8), "little") >> 1
            self.generator = torch.Generator().manual_seed(seed)
            # The sampler draws one number per token: skip those of the tokens written before a
            # move, so a seeded request continues as it would have where it started.
            for _ in range(self.request.resumed):
                torch.rand((), generator=self.generator)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def num_prompt(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt :]

    def token_counts(self) -> tuple[Counter[int], set[int]]:
        """(how often each token occurs in the completion so far, counting tokens produced
        before a move; every token of the prompt and completion), for the penalties. Kept up to
        date as tokens come, not recounted over the whole context at each step."""
        start = self.num_prompt - self.request.resumed
        new = self.token_ids[self._counted :]
        self._seen.update(new)
        self._counts.update(self.token_ids[max(self._counted, start) :])
        self._counted = len(self.token_ids)
        return self._counts, self._seen

    @property
    def num_uncached(self) -> int:
        return len(self.token_ids) - self.num_cached
