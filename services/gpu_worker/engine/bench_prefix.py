"""`prefix_cache` section of ``tokenpool bench engine``: time to first token of prompts that share a
long system prompt, with the prefix cache and without it, in one run.

Each engine first answers one request (it fills the cache, when there is one), then `questions`
more, one after another, each the same system prompt plus its own question. A request's time
to first token is its prefill (the step that returns its first token). Figures: median TTFT of
those later requests per engine, the ratio, and the prompt tokens the cache served.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

from shared.tokenizer import Tokenizer

from .config import EngineConfig, load_model_config
from .engine import Engine
from .sequence import EngineRequest, SamplingParams

SYSTEM_SENTENCE = (
    "You answer questions about the city library: its floors, opening hours, lending rules, "
    "reading rooms, events and the books it lists in its catalogue. "
)


def system_prompt(tokenizer: Tokenizer, tokens: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < tokens:
        ids += tokenizer.encode(SYSTEM_SENTENCE)
    return ids[:tokens]


def prefix_cache(
    engine_config: EngineConfig, name: str, path: Path, system_tokens: int, questions: int, repeats: int, log
) -> dict:
    tokenizer = Tokenizer(path)
    system = system_prompt(tokenizer, min(system_tokens, load_model_config(name, path).max_position - 64))
    prompts = [tuple(system + tokenizer.encode(f"\nQuestion {i}: when does floor {i} open?\nAnswer:"))
               for i in range(questions + 1)]
    ttfts: dict[bool, list[float]] = {False: [], True: []}
    hits: dict[bool, int] = {}
    for _ in range(repeats):
        for caching in (False, True):  # interleaved, so drift on a shared machine hits both alike
            engine = Engine(replace(engine_config, prefix_caching=caching), {name: path})
            try:
                engine.activate(name)
                for i, ids in enumerate(prompts):
                    ttft = _first_token_s(engine, f"q{i}", name, ids)
                    if i > 0:  # the first request only fills the cache
                        ttfts[caching].append(ttft)
                hits[caching] = engine.prefix_cache.hit_tokens if engine.prefix_cache else 0
            finally:
                engine.close()
    plain, cached = statistics.median(ttfts[False]), statistics.median(ttfts[True])
    log(f"prefix cache: TTFT {plain * 1000:.1f} ms without, {cached * 1000:.1f} ms with ({plain / cached:.1f}x)")
    return {
        "system_tokens": len(system),
        "prompt_tokens": len(prompts[1]),
        "questions": questions,
        "repeats": repeats,
        "ttft_s_without": plain,
        "ttft_s_with": cached,
        "speedup": plain / cached,
        "hit_tokens_per_request": hits[True] / questions,
        "method": "one engine per side, interleaved; each answers a first request, then the questions one "
        "after another; TTFT = the step that returns a request's first token; medians over questions x repeats",
    }


def _first_token_s(engine: Engine, request_id: str, model: str, ids: tuple[int, ...]) -> float:
    engine.add_request(EngineRequest(request_id, model, ids, SamplingParams(temperature=0.0, max_tokens=1)))
    started = time.perf_counter()
    while engine.has_work(model):
        if engine.step():
            engine.synchronize()
            break
    elapsed = time.perf_counter() - started
    while engine.has_work(model):
        engine.step()
    return elapsed
