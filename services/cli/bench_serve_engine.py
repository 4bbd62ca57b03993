"""The engine alone, as `tokenpool bench serve` compares the stack against it.

    intervals = engine_alone(engine, model, prompt_ids, streams=100, tokens=64, duration_s=5)

The same closed loop as the HTTP clients, with no bus: `streams` requests run at once and
each one that finishes is replaced by a new one before the next step. Every token's time is
stamped after the step that produced it; the per-token interval a sequence sees is the gap
between two of its consecutive tokens (a step's time, plus any prefill step of a newcomer
that ran between them) — the engine-side counterpart of the clients' TBT.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams


@dataclass(frozen=True)
class EngineAlone:
    intervals_s: list[float]
    """Per-token intervals of the requests after the first `streams` (the warm-up round)."""
    step_s: list[float]
    """Duration of every step that produced tokens."""
    request_per_token_s: list[float]
    """Per request after the warm-up round: (last token time - time it was added) / tokens."""
    tokens: int
    elapsed_s: float
    requests: int


def engine_alone(
    engine,
    model: str,
    prompt_ids: tuple[int, ...],
    streams: int,
    tokens: int,
    duration_s: float,
    max_samples: int = 500_000,
) -> EngineAlone:
    """New requests until `duration_s` has passed or `max_samples` intervals were taken (and at least
    two rounds), then steps until the running ones finish."""
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    ids = (f"alone-{i}" for i in itertools.count())
    started: dict[str, int] = {}  # request id -> arrival number; the first `streams` are the warm-up round
    added: dict[str, float] = {}
    per_request = []
    last: dict[str, float] = {}
    intervals, steps = [], []
    produced = 0
    begin = time.perf_counter()

    def add() -> None:
        request_id = next(ids)
        engine.add_request(EngineRequest(request_id, model, prompt_ids, params))
        started[request_id] = len(started)
        added[request_id] = time.perf_counter()

    engine.activate(model)
    for _ in range(streams):
        add()
    while engine.has_work():
        t0 = time.perf_counter()
        outputs = engine.step()
        now = time.perf_counter()
        if outputs:
            steps.append(now - t0)
        for out in outputs:
            produced += 1
            previous = last.get(out.request_id)
            if previous is not None and started[out.request_id] >= streams:
                intervals.append(now - previous)
            last[out.request_id] = now
            if out.finish_reason is not None:
                del last[out.request_id]
                if started[out.request_id] >= streams:
                    per_request.append((now - added[out.request_id]) / (out.index + 1))
                if (now - begin < duration_s and len(intervals) < max_samples) or len(started) < 2 * streams:
                    add()
    return EngineAlone(intervals, steps, per_request, produced, time.perf_counter() - begin, len(started))
