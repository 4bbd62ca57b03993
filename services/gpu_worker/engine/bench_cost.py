"""Step, prefill and switch times of our engine per model: what an engine cost profile is fitted to.

    python -m services.sim.cost_engine measure [--models a,b] [--threads 1] [--out PATH]

For each model, an engine that serves only it (built as the worker builds one: the worker's
page size, batch limits and dtype), with torch limited to `threads` (the worker's --threads):
- decode: `batch` greedy sequences with prompts of `prompt` random tokens are prefilled, then
  `steps` decode steps are timed one by one (after `warmup` untimed ones); the median step time
  goes with the step's batch and context tokens (StepInfo.context_tokens, which is what the
  simulator calls context_tokens: every attended token, the new one included).
- prefill: `count` prompts of `length` random tokens are added and the first step (which
  prefills them all, within max_batch_tokens, and samples their first tokens) is timed; the
  median of `repeats`.
- switch: evict then activate, timed, `repeats` times per model: one bulk copy host -> arena
  plus building the model's views; across models of different sizes, time = fixed + bytes / bandwidth.
Every timed call ends with a device synchronize (a no-op on CPU). The whole grid of every model
is measured `rounds` times, one model after the other in each round; a point's figure is the
median of its rounds (load from other processes comes in bursts; a shared host has plenty).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import torch

from .bench_memory import SLACK_BYTES, model_size, sync
from .config import EngineConfig
from .engine import Engine
from .sequence import EngineRequest, SamplingParams

DECODE_GRID = tuple((b, p) for b in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32) for p in (16, 128))
"""(batch, prompt tokens per sequence) of the decode points."""
PREFILL_GRID = ((1, 8), (1, 32), (1, 128), (1, 512), (2, 32), (4, 32), (8, 32), (16, 32), (4, 128))
"""(prompts, tokens per prompt) of the prefill points."""


@dataclass(frozen=True)
class CostBenchConfig:
    device: str = "cpu"
    threads: int | None = 1
    """torch threads (the worker's --threads; bench sched runs its worker with 1)."""
    kv_page_bytes: int = 1 << 20
    max_batch_size: int = 64
    max_batch_tokens: int = 2048
    decode_steps: int = 7
    decode_warmup: int = 2
    repeats: int = 3
    rounds: int = 3
    """Passes over every model's grid; a point's figure is the median of its rounds, so that a
    burst of load from other processes during one pass does not become the figure."""
    seed: int = 0
    decode_grid: tuple[tuple[int, int], ...] = DECODE_GRID
    prefill_grid: tuple[tuple[int, int], ...] = PREFILL_GRID

    def __post_init__(self):
        if self.decode_steps < 1 or self.repeats < 1 or self.rounds < 1 or self.decode_warmup < 0:
            raise ValueError("decode_steps, repeats and rounds must be at least 1, decode_warmup at least 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if (
            not self.decode_grid
            or not self.prefill_grid
            or min(min(p) for p in self.decode_grid + self.prefill_grid) < 1
        ):
            raise ValueError("decode_grid and prefill_grid need at least one point each, of positive sizes")


def measure_model(cfg: CostBenchConfig, name: str, path: Path, log: Callable[[str], None]) -> dict:
    """Decode and prefill points and switch times of one model."""
    device = torch.device(cfg.device)
    engine_cfg = EngineConfig(device=cfg.device, kv_page_bytes=cfg.kv_page_bytes)
    size = model_size(name, path, engine_cfg.torch_dtype)
    block = cfg.kv_page_bytes // size.kv_bytes_per_token
    longest = max(b * -(-(p + cfg.decode_warmup + cfg.decode_steps + 2) // block) for b, p in cfg.decode_grid)
    prefill_pages = max(n * -(-(t + 1) // block) for n, t in cfg.prefill_grid)
    engine = Engine(
        EngineConfig(
            device=cfg.device,
            weight_arena_bytes=size.weight_bytes + SLACK_BYTES,
            kv_arena_bytes=(max(longest, prefill_pages) + 2) * cfg.kv_page_bytes,
            kv_page_bytes=cfg.kv_page_bytes,
            host_swap_bytes=cfg.kv_page_bytes,
            max_batch_size=cfg.max_batch_size,
            max_batch_tokens=cfg.max_batch_tokens,
        ),
        {name: path},
    )
    rng = random.Random(cfg.seed)
    vocab = size.cfg.vocab_size
    ids = iter(range(10**9))

    def add(count: int, tokens: int, max_tokens: int) -> list[str]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        rids = []
        for _ in range(count):
            rid = f"cost-{next(ids)}"
            engine.add_request(EngineRequest(rid, name, rng.choices(range(10, vocab), k=tokens), params))
            rids.append(rid)
        return rids

    def timed_step() -> float:
        started = time.perf_counter()
        engine.step()
        sync(device)
        return time.perf_counter() - started

    try:
        engine.load(name)
        engine.activate(name)
        add(1, 16, 4)  # first call costs (allocator, kernels) are paid here, untimed
        while engine.has_work():
            engine.step()

        decode = []
        for batch, prompt in cfg.decode_grid:
            rids = add(batch, prompt, cfg.decode_warmup + cfg.decode_steps + 2)
            while engine.stats().waiting or _prefilling(engine, rids):
                engine.step()
            for _ in range(cfg.decode_warmup):
                engine.step()
            times, context = [], []
            for _ in range(cfg.decode_steps):
                times.append(timed_step())
                info = _checked_step(engine, prefill=False, seqs=batch)
                context.append(info.context_tokens)
            decode.append({"batch": batch, "context_tokens": int(median(context)), "s": median(times)})
            for rid in rids:
                engine.abort(rid)
        log(
            f"{name}: decode {decode[0]['s'] * 1000:.1f} ms at batch 1 ... {decode[-1]['s'] * 1000:.1f} ms at batch {decode[-1]['batch']}"
        )

        prefill = []
        for count, length in cfg.prefill_grid:
            runs = []
            for _ in range(cfg.repeats):
                rids = add(count, length, 2)
                runs.append(timed_step())
                _checked_step(engine, prefill=True, tokens=count * length)
                for rid in rids:
                    engine.abort(rid)
            prefill.append(
                {"prompts": count, "tokens": count * length, "squared_tokens": count * length**2, "s": median(runs)}
            )
        log(
            f"{name}: prefill {prefill[0]['s'] * 1000:.1f} ms for {prefill[0]['tokens']} tokens ... "
            f"{max(p['s'] for p in prefill) * 1000:.1f} ms for the most"
        )

        switches = []
        for _ in range(cfg.repeats):
            engine.evict(name)
            sync(device)
            started = time.perf_counter()
            engine.activate(name)
            sync(device)
            switches.append(time.perf_counter() - started)
    finally:
        engine.close()
    return {
        "weight_bytes": size.weight_bytes,
        "kv_bytes_per_token": size.kv_bytes_per_token,
        "decode_points": decode,
        "prefill_points": prefill,
        "switch_s": median(switches),
        "switch_runs_s": switches,
    }


def _checked_step(engine: Engine, prefill: bool, seqs: int | None = None, tokens: int | None = None):
    """The step just timed, which must be the one the point meant to time."""
    info = engine.last_step
    if (
        info is None
        or info.is_prefill != prefill
        or (seqs is not None and info.num_seqs != seqs)
        or (tokens is not None and info.num_tokens != tokens)
    ):
        want = f"a {'prefill' if prefill else 'decode'} step of {seqs or tokens} {'sequences' if seqs else 'tokens'}"
        raise RuntimeError(f"the engine ran {info} where the cost bench timed {want}")
    return info


def _prefilling(engine: Engine, rids: list[str]) -> bool:
    return any((s := engine.sequence(r)) is not None and s.num_uncached > 1 for r in rids)


def measure(cfg: CostBenchConfig, models: dict[str, Path], log: Callable[[str], None] = lambda m: None) -> dict:
    """Every model's points (medians over cfg.rounds passes over all models), with torch limited
    to cfg.threads for the run (restored after)."""
    before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        passes = []
        for i in range(cfg.rounds):
            log(f"round {i + 1} of {cfg.rounds}")
            passes.append({name: measure_model(cfg, name, path, log) for name, path in models.items()})
    finally:
        torch.set_num_threads(before)
    return {name: _merge([p[name] for p in passes]) for name in models}


def _merge(passes: list[dict]) -> dict:
    """One model's rounds as one: each point's time is the median over the rounds."""
    first = passes[0]
    merged = dict(first)
    for kind in ("decode_points", "prefill_points"):
        merged[kind] = [
            {**point, "s": median(p[kind][i]["s"] for p in passes), "rounds_s": [p[kind][i]["s"] for p in passes]}
            for i, point in enumerate(first[kind])
        ]
    merged["switch_runs_s"] = [s for p in passes for s in p["switch_runs_s"]]
    merged["switch_s"] = median(merged["switch_runs_s"])
    return merged
