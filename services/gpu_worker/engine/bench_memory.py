"""Moving bytes: the host-to-device copy limit, model switches against it, and KV swap.

Every figure is measured against `copy_limit`: a plain copy_ of the model's byte count
between two preallocated buffers (pinned host to device on CUDA, memcpy on CPU), which no
switch can beat (weight bytes / bandwidth).
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import torch

from .config import EngineConfig, ModelConfig, load_model_config
from .engine import Engine
from .layout import weight_layout
from .scheduler import pages_needed
from .sequence import EngineRequest, SamplingParams

SLACK_BYTES = 16 << 20


@dataclass(frozen=True)
class ModelSize:
    cfg: ModelConfig
    weight_bytes: int
    kv_bytes_per_token: int


def model_size(name: str, path: Path, dtype: torch.dtype) -> ModelSize:
    cfg = load_model_config(name, path)
    return ModelSize(cfg, weight_layout(cfg).numel * dtype.itemsize, cfg.kv_bytes_per_token(dtype))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_limit(device: torch.device, nbytes: int, repeats: int) -> dict:
    """GB/s of one bulk copy of nbytes: pinned host -> device on CUDA, memcpy between host buffers on CPU."""
    numel = nbytes // 4
    src = torch.empty(numel, dtype=torch.float32, pin_memory=device.type == "cuda")
    src.fill_(1.0)
    dst = torch.empty(numel, dtype=torch.float32, device=device)
    dst.copy_(src)  # first touch of both buffers, not timed
    sync(device)
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        dst.copy_(src, non_blocking=device.type == "cuda")
        sync(device)
        runs.append(numel * 4 / (time.perf_counter() - started) / 1e9)
    del src, dst
    if device.type == "cuda":
        method = "pinned host -> device copy_"
    else:
        method = "host memcpy (copy_ between float32 buffers)"
    return {
        "method": method,
        "bytes": numel * 4,
        "gb_s": median(runs),
        "best_gb_s": max(runs),
        "runs_gb_s": runs,
    }


def read_limit(device: torch.device, nbytes: int, repeats: int) -> dict:
    """GB/s of reading nbytes once (a sum over a buffer): a decode step reads every weight at least once."""
    buffer = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    buffer.sum()
    sync(device)
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        buffer.sum()
        sync(device)
        runs.append(buffer.numel() * 4 / (time.perf_counter() - started) / 1e9)
    del buffer
    method = "sum() over a float32 buffer of the model's weight bytes"
    return {"method": method, "gb_s": median(runs), "runs_gb_s": runs}


class _BusyBatch:
    """Keeps `size` greedy sequences of a model running so that its decode steps never run dry."""

    def __init__(self, model: str, size: int, prompt: list[int], max_tokens: int):
        self.model, self.size, self.prompt = model, size, tuple(prompt)
        self.params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        self._ids = itertools.count()
        self.live: list[str] = []

    def top_up(self, engine: Engine) -> None:
        self.live = [rid for rid in self.live if engine.sequence(rid) is not None]
        while len(self.live) < self.size:
            rid = f"busy-{next(self._ids)}"
            engine.add_request(EngineRequest(rid, self.model, self.prompt, self.params))
            self.live.append(rid)

    def abort(self, engine: Engine) -> None:
        for rid in self.live:
            engine.abort(rid)
        self.live = []


def switch(
    config: EngineConfig,
    model: str,
    path: Path,
    other: str,
    other_path: Path,
    limit_gb_s: float,
    repeats: int,
    log,
    overlap_factor: float = 1.5,
    other_batch: int = 8,
) -> dict:
    """Switch times from host memory, without and with a prefetch overlapped with `other`'s decode."""
    device = torch.device(config.device)
    size = model_size(model, path, config.torch_dtype)
    other_size = model_size(other, other_path, config.torch_dtype)
    other_tokens = min(1024, other_size.cfg.max_position - 64)
    kv_pages = other_batch * pages_needed(32 + other_tokens, config.kv_page_bytes // other_size.kv_bytes_per_token)
    engine = Engine(
        EngineConfig(
            device=config.device,
            dtype=config.dtype,
            weight_arena_bytes=size.weight_bytes + other_size.weight_bytes + SLACK_BYTES,
            kv_arena_bytes=(kv_pages + 2) * config.kv_page_bytes,
            kv_page_bytes=config.kv_page_bytes,
            host_swap_bytes=config.kv_page_bytes,
        ),
        {model: path, other: other_path},
    )
    try:
        started = time.perf_counter()
        engine.load(model)
        load_s = time.perf_counter() - started
        engine.load(other)
        limit_s = size.weight_bytes / (limit_gb_s * 1e9)

        engine.activate(model)  # first touch of the arena range, not timed
        sync(device)
        cold = []
        for _ in range(repeats):
            engine.evict(model)
            sync(device)
            started = time.perf_counter()
            engine.activate(model)
            sync(device)
            cold.append(time.perf_counter() - started)
        cold_s = median(cold)
        log(f"switch without prefetch: {cold_s * 1000:.1f} ms (limit {limit_s * 1000:.1f} ms)")

        # The other model decodes a batch while the prefetch copies; its first step (prefill) runs before.
        engine.activate(other)
        prompt = random.Random(0).choices(range(10, other_size.cfg.vocab_size), k=32)
        busy = _BusyBatch(other, other_batch, prompt, other_tokens)
        busy.top_up(engine)
        while engine.stats().waiting:
            engine.step()
        alone = []
        for _ in range(10):
            busy.top_up(engine)
            started = time.perf_counter()
            engine.step()
            alone.append(time.perf_counter() - started)
        window_s = overlap_factor * max(cold_s, limit_s)
        stalls, steps, overlapped = [], [], []
        for _ in range(repeats):
            engine.evict(model)
            engine.activate(other)
            sync(device)
            started = time.perf_counter()
            engine.prefetch(model)
            n = 0
            while time.perf_counter() - started < window_s:
                busy.top_up(engine)
                engine.step()
                n += 1
            compute_s = time.perf_counter() - started
            stall_started = time.perf_counter()
            engine.activate(model)
            sync(device)
            stalls.append(time.perf_counter() - stall_started)
            steps.append(n)
            overlapped.append(compute_s / n)
        stall_s = median(stalls)
        log(f"switch with prefetch: visible stall {stall_s * 1000:.2f} ms over a {window_s * 1000:.0f} ms overlap")
        busy.abort(engine)
    finally:
        engine.close()
    return {
        "model": model,
        "weight_bytes": size.weight_bytes,
        "limit_s": limit_s,
        "load_from_disk_s": load_s,
        "no_prefetch": {
            "s": cold_s,
            "runs_s": cold,
            "ratio_to_limit": cold_s / limit_s,
            "target": 1.2,
            "target_met": cold_s / limit_s <= 1.2,
        },
        "prefetch": {
            "visible_stall_s": stall_s,
            "runs_s": stalls,
            "visible_stall_ratio": stall_s / limit_s,
            "target": 0.10,
            "target_met": stall_s / limit_s <= 0.10,
            "overlap_s": window_s,
            "other_model": other,
            "other_batch": other_batch,
            "other_steps_during_overlap": steps,
            "other_step_ms_alone": 1000 * median(alone),
            "other_step_ms_during_prefetch": 1000 * median(overlapped),
        },
    }


def kv_swap(
    config: EngineConfig,
    model: str,
    path: Path,
    limit_gb_s: float,
    seqs: int,
    prompt_tokens: int,
    repeats: int,
    log,
) -> dict:
    """Times swap_out/swap_in of `seqs` prefilled sequences of `prompt_tokens` tokens each."""
    device = torch.device(config.device)
    size = model_size(model, path, config.torch_dtype)
    prompt_tokens = min(prompt_tokens, size.cfg.max_position - 2)
    block_tokens = config.kv_page_bytes // size.kv_bytes_per_token
    pages = seqs * pages_needed(prompt_tokens + 1, block_tokens)
    engine = Engine(
        EngineConfig(
            device=config.device,
            dtype=config.dtype,
            weight_arena_bytes=size.weight_bytes + SLACK_BYTES,
            kv_arena_bytes=(pages + 2) * config.kv_page_bytes,
            kv_page_bytes=config.kv_page_bytes,
            host_swap_bytes=(pages + 2) * config.kv_page_bytes,
            max_batch_size=max(seqs, 1),
        ),
        {model: path},
    )
    try:
        engine.activate(model)
        sync(device)  # the weight copy is not part of the prefill timed below
        rng = random.Random(1)
        params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
        ids = [f"kv-{i}" for i in range(seqs)]
        for rid in ids:
            prompt = tuple(rng.choices(range(10, size.cfg.vocab_size), k=prompt_tokens))
            engine.add_request(EngineRequest(rid, model, prompt, params))
        started = time.perf_counter()
        firsts = 0
        while firsts < seqs:  # prefill only: stop once every sequence has its first token
            firsts += sum(1 for out in engine.step() if out.index == 0)
        sync(device)
        prefill_s = time.perf_counter() - started
        stats = engine.stats()
        held = stats.total_pages - stats.free_pages
        nbytes = held * config.kv_page_bytes

        outs, ins = [], []
        for r in range(repeats + 1):  # the first round touches the host swap pages, not timed
            sync(device)
            started = time.perf_counter()
            moved = engine.swap_out(model=model)
            sync(device)
            out_s = time.perf_counter() - started
            if moved != seqs or engine.stats().free_pages != stats.total_pages:
                raise RuntimeError(f"swap_out moved {moved} of {seqs} sequences; the bench expects all")
            started = time.perf_counter()
            engine.swap_in(model=model)
            sync(device)
            in_s = time.perf_counter() - started
            if engine.stats().free_pages != stats.free_pages:
                raise RuntimeError("swap_in did not bring every page back")
            if r:
                outs.append(out_s)
                ins.append(in_s)
        for rid in ids:
            engine.abort(rid)
    finally:
        engine.close()
    out_gb_s = nbytes / median(outs) / 1e9
    in_gb_s = nbytes / median(ins) / 1e9
    log(f"kv swap of {held} pages: out {out_gb_s:.2f} GB/s, in {in_gb_s:.2f} GB/s")
    return {
        "model": model,
        "seqs": seqs,
        "prompt_tokens": prompt_tokens,
        "block_tokens": block_tokens,
        "pages": held,
        "page_bytes": config.kv_page_bytes,
        "bytes": nbytes,
        "prefill_s": prefill_s,
        "swap_out_s": median(outs),
        "swap_in_s": median(ins),
        "swap_out_runs_s": outs,
        "swap_in_runs_s": ins,
        "swap_out_gb_s": out_gb_s,
        "swap_in_gb_s": in_gb_s,
        "swap_out_ratio_to_copy_limit": out_gb_s / limit_gb_s,
        "swap_in_ratio_to_copy_limit": in_gb_s / limit_gb_s,
    }
