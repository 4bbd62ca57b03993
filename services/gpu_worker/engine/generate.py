"""Run a set of requests to completion in-process (CLI, tests, benchmarks).

With requests for several models, the loop gives each model with work one step in turn,
which is the finest interleaving the engine allows (a switch between every step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .engine import Engine
from .sequence import EngineRequest


@dataclass
class Completion:
    request_id: str
    model: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[tuple[tuple[int, float], ...]] = field(default_factory=list)
    finish_reason: str | None = None
    ttft_s: float | None = None
    elapsed_s: float = 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        decode_time = self.elapsed_s - (self.ttft_s or 0.0)
        return (len(self.token_ids) - 1) / decode_time if len(self.token_ids) > 1 and decode_time > 0 else 0.0


def run_to_completion(
    engine: Engine, requests: list[EngineRequest], swap_between_models: bool = False
) -> dict[str, Completion]:
    start = time.perf_counter()
    done = {r.request_id: Completion(r.request_id, r.model) for r in requests}
    for r in requests:
        engine.add_request(r)
    models = sorted({r.model for r in requests})
    while any(engine.has_work(m) for m in models):
        for model in models:
            if not engine.has_work(model):
                continue
            if engine.active != model:
                if swap_between_models and engine.active is not None:
                    engine.swap_out(model=engine.active)
                engine.activate(model)
            for out in engine.step():
                c = done[out.request_id]
                c.token_ids.append(out.token_id)
                if out.logprob is not None:
                    c.logprobs.append(out.logprob)
                if out.top_logprobs is not None:
                    c.top_logprobs.append(out.top_logprobs)
                now = time.perf_counter() - start
                if c.ttft_s is None:
                    c.ttft_s = now
                if out.finish_reason is not None:
                    c.finish_reason = out.finish_reason
                    c.elapsed_s = now
    return done
