"""A cost model measured on our own engine: the simulator priced like the real worker on this machine.

    python -m services.sim.cost_engine measure [--models a,b,..] [--threads 1] [--out PATH]
    python -m services.sim.cost_engine show PATH
    tokenpool sim --gpu-profile engine:PATH ...     # a workload whose models are our models

`measure` times decode steps, prefills and switches of each model on our engine
(services/gpu_worker/engine/bench_cost.py), the host copy bandwidth and the weight read
bandwidth (bench_memory.py), fits each model's steps and writes one JSON profile: the raw
points, the fits and their quality. Profiles are kept in bench/results/engine-cost-<device>-<date>.json.

Naming: an engine profile's "architectures" are the model names themselves (as
`tokenpool models list` names them): a workload maps demo-llama to "demo-llama", and
CostModel.for_models("engine:PATH", {"demo-llama": "demo-llama"}) prices it with demo-llama's
measured steps, weight bytes and KV bytes per token (in the engine's dtype: float32 on CPU).

The fits, per model (cost_steps.StepFit; non-negative least squares on relative errors, as in
cost_fit.py):
    decode step  = a + b * batch + c * context_tokens
    prefill step = p0 + p1 * tokens + p2 * squared_tokens
with a, b and c fitted, then a + b * batch replaced by a table of the measured step time at each
measured batch size less c * context (StepFit.decode_batch_table): a CPU's step time is not a
line in the batch size. With plain F.linear, a batch of 2 or 3 stepped slower than a batch of 4
(demo-llama: 9.5, 18.2, 25.7, 15.4 ms at batches 1-4; the M=2-3 matrix products took a slower
path); with the engine's oneDNN-packed weights (cpu_matmul.py) batches 1-6 cost about the same
(demo-llama: 5.9, 5.9, 5.2, 5.1, 5.5 ms at batches 1, 2, 3, 4, 6). No line prices either.
and for the device:
    switch (evict, then activate: one bulk copy host -> arena and the model's views)
                   = switch_fixed + weight bytes / host_to_device, fitted over the models' sizes
                   (the copy limit, a plain memcpy of the largest model's bytes, is kept beside it),
    memory_bytes   = twice the largest model + the worker's KV arena (256 MiB on CPU): with the
                     simulator's default layout (a weight region of twice the largest model) every
                     model stays resident and the KV pages are the worker's, as in a CPU worker
                     whose arena holds all its models.

bench/results/engine-cost-cpu-2026-11-21.json (2-core AMD EPYC VM shared with other jobs, torch
float32 with packed weights, 1 thread, 3 rounds; relative error of the fit over the measured
points, median / max):
    model                   decode a ms  b ms/seq  c us/tok  err       prefill a ms  b us/tok  err
    smollm2-135m-instruct   34.9         1.93      9.03      1% / 5%   29.8          2095      1% / 3%
    demo-llama              4.41         0.34      0.33      1% / 5%   5.15          72.6      4% / 8%
    demo-qwen2              5.05         0.38      0.22      1% / 4%   6.56          76.8      3% / 9%
    demo-mistral            3.88         0.33      0.48      2% / 11%  5.08          35.9      4% / 9%
    switch: 1.2 ms + bytes / 14.0 GB/s (memcpy copy limit 16.5 GB/s in the same run)
(The profile before the packed weights, in git history, had smollm2's decode a = 66.7 ms and
b = 3.84 ms per sequence.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from statistics import median

import numpy as np

from services.sim.cost import ARCHITECTURES, CostModel, GpuProfile, ModelCosts
from services.sim.cost_fit import FitQuality, quality, relative_fit
from services.sim.cost_steps import StepFit
from services.sim.errors import SimError

CPU_KV_ARENA_BYTES = 256 << 20
"""The worker's KV arena on CPU (services/gpu_worker/config.py CPU_KV_ARENA_BYTES)."""
FORMAT = "tokenpool-engine-cost/1"


@dataclass(frozen=True)
class EngineModel:
    weight_bytes: int
    kv_bytes_per_token: int
    fit: StepFit
    decode_quality: FitQuality
    prefill_quality: FitQuality


@dataclass(frozen=True)
class EngineProfile:
    name: str
    """"engine:<device>", what the simulator's summary shows as its gpu_profile."""
    memory_bytes: int
    memory_bandwidth_bytes_s: float
    host_to_device_bytes_s: float
    switch_fixed_s: float
    models: dict[str, EngineModel]

    def gpu_profile(self) -> GpuProfile:
        return GpuProfile(
            name=self.name,
            memory_bytes=self.memory_bytes,
            reserved_bytes=0,
            memory_bandwidth_bytes_s=self.memory_bandwidth_bytes_s,
            host_to_device_bytes_s=self.host_to_device_bytes_s,
            device_to_host_bytes_s=self.host_to_device_bytes_s,
            switch_fixed_s=self.switch_fixed_s,
            fits={name: m.fit for name, m in self.models.items()},
        )

    def scaled(self, ratios: Mapping[str, Mapping[str, float]]) -> EngineProfile:
        """This profile with each listed model's decode and prefill step times multiplied by
        ratios[model]["decode"] and ["prefill"] (e.g. the slowdown a busy host showed in a run)."""
        models = dict(self.models)
        for name, r in ratios.items():
            m = models[name]
            d, p = r.get("decode", 1.0), r.get("prefill", 1.0)
            f = m.fit
            fit = replace(
                f,
                decode_fixed_s=f.decode_fixed_s * d,
                decode_per_seq_s=f.decode_per_seq_s * d,
                decode_per_context_token_s=f.decode_per_context_token_s * d,
                decode_per_64_seqs_s=f.decode_per_64_seqs_s * d,
                decode_batch_table=tuple((b, t * d) for b, t in f.decode_batch_table),
                prefill_floor_s=f.prefill_floor_s * p,
                prefill_fixed_s=f.prefill_fixed_s * p,
                prefill_per_token_s=f.prefill_per_token_s * p,
                prefill_per_squared_token_s=f.prefill_per_squared_token_s * p,
            )
            models[name] = replace(m, fit=fit)
        return replace(self, models=models)

    def cost_model(self, architectures: Mapping[str, str]) -> CostModel:
        """`architectures` maps each served model to a model this profile measured."""
        costs = {}
        for model, measured in architectures.items():
            m = self.models.get(measured)
            if m is None:
                raise SimError(
                    f"model {model!r}: the engine profile {self.name} measured no model {measured!r} "
                    f"(it measured: {', '.join(self.models)})"
                )
            costs[model] = ModelCosts(measured, m.weight_bytes, m.kv_bytes_per_token, m.fit)
        return CostModel(self.gpu_profile(), costs)


def fit_model(points: dict) -> tuple[StepFit, FitQuality, FitQuality]:
    """Step fits of one model's measured points (bench_cost.measure_model's dict)."""
    dec = points["decode_points"]
    batch = np.array([p["batch"] for p in dec], float)
    context = np.array([p["context_tokens"] for p in dec], float)
    d_time = np.array([p["s"] for p in dec])
    d_x = np.column_stack([np.ones_like(batch), batch, context])
    d = relative_fit(d_x, d_time)
    pre = points["prefill_points"]
    tokens = np.array([p["tokens"] for p in pre], float)
    squared = np.array([p["squared_tokens"] for p in pre], float)
    p_time = np.array([p["s"] for p in pre])
    p_x = np.column_stack([np.ones_like(tokens), tokens, squared])
    p = relative_fit(p_x, p_time)
    c = d[2]
    table = tuple(
        (b, _sig(median(p["s"] - c * p["context_tokens"] for p in dec if p["batch"] == b)))
        for b in sorted({p["batch"] for p in dec})
    )
    fit = StepFit(
        decode_fixed_s=_sig(d[0]),
        decode_per_seq_s=_sig(d[1]),
        decode_per_context_token_s=_sig(c),
        prefill_fixed_s=_sig(p[0]),
        prefill_per_token_s=_sig(p[1]),
        prefill_per_squared_token_s=_sig(p[2]),
        decode_batch_table=table,
    )
    d_pred = np.array([fit.decode_s(p["batch"], p["context_tokens"]) for p in dec])
    d_labels = [f"b{p['batch']}c{p['context_tokens']}" for p in dec]
    p_labels = [f"{p['prompts']}x{p['tokens'] // p['prompts']}" for p in pre]
    return fit, quality(d_pred, d_time, d_labels), quality(p_x @ p, p_time, p_labels)


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


def switch_fit(measured: dict[str, dict], copy_bytes_s: float) -> tuple[float, float]:
    """(host_to_device bytes/s, fixed s) of switch time = fixed + weight bytes / bandwidth over the
    models' switches; with fewer than two sizes, or a fit that says a copy is free, the copy limit's
    bandwidth and the median time beyond it."""
    sizes = np.array([p["weight_bytes"] for p in measured.values()], float)
    times = np.array([p["switch_s"] for p in measured.values()])
    if len(set(sizes)) >= 2:
        fixed, per_byte = relative_fit(np.column_stack([np.ones_like(sizes), sizes]), times)
        if per_byte > 0:
            return 1 / per_byte, fixed
    return copy_bytes_s, max(0.0, median(times - sizes / copy_bytes_s))


def build_profile(measured: dict[str, dict], copy_gb_s: float, read_gb_s: float, machine: dict, config: dict) -> dict:
    """The JSON profile: measured points, fits, quality and the device figures."""
    models = {}
    for name, points in measured.items():
        fit, dq, pq = fit_model(points)
        models[name] = {**points, "fit": asdict(fit), "decode_quality": asdict(dq), "prefill_quality": asdict(pq)}
    h2d, fixed = switch_fit(measured, copy_gb_s * 1e9)
    largest = max(p["weight_bytes"] for p in measured.values())
    device = machine.get("device", "cpu")
    return {
        "format": FORMAT,
        "name": f"engine:{device}",
        "machine": machine,
        "config": config,
        "device": {
            "memory_bytes": 2 * largest + CPU_KV_ARENA_BYTES,
            "memory_bandwidth_bytes_s": _sig(read_gb_s * 1e9),
            "host_to_device_bytes_s": _sig(h2d),
            "switch_fixed_s": _sig(fixed),
        },
        "models": models,
    }


def load_engine_profile(path: str | Path) -> EngineProfile:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SimError(
            f"no engine cost profile at {path}; measure one with `python -m services.sim.cost_engine measure --out {path}`"
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise SimError(f"engine cost profile {path} is unreadable: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SimError(f"{path} is not an engine cost profile (its format is not {FORMAT!r})")
    try:
        device = data["device"]
        models = {
            name: EngineModel(
                int(m["weight_bytes"]),
                int(m["kv_bytes_per_token"]),
                _step_fit(m["fit"]),
                FitQuality(**m["decode_quality"]),
                FitQuality(**m["prefill_quality"]),
            )
            for name, m in data["models"].items()
        }
        return EngineProfile(
            name=str(data["name"]),
            memory_bytes=int(device["memory_bytes"]),
            memory_bandwidth_bytes_s=float(device["memory_bandwidth_bytes_s"]),
            host_to_device_bytes_s=float(device["host_to_device_bytes_s"]),
            switch_fixed_s=float(device["switch_fixed_s"]),
            models=models,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SimError(f"engine cost profile {path} lacks or garbles a field ({type(e).__name__}: {e})") from None


def _step_fit(raw: dict) -> StepFit:
    values = {f.name: float(raw[f.name]) for f in fields(StepFit) if f.name in raw and f.name != "decode_batch_table"}
    table = tuple((int(b), float(s)) for b, s in raw.get("decode_batch_table", ()))
    if any(b1 <= b0 for (b0, _), (b1, _) in zip(table, table[1:])):
        raise ValueError("decode_batch_table must list batches in increasing order")
    return StepFit(**values, decode_batch_table=table)


def describe(profile: EngineProfile) -> str:
    lines = [
        f"{profile.name}: host->device {profile.host_to_device_bytes_s / 1e9:.1f} GB/s, switch fixed "
        f"{profile.switch_fixed_s * 1e3:.2f} ms, weight read {profile.memory_bandwidth_bytes_s / 1e9:.1f} GB/s",
        f"{'model':24} {'decode a ms':>11} {'b ms/seq':>9} {'c us/tok':>9} {'med':>5} {'max':>5} | "
        f"{'prefill a ms':>12} {'b us/tok':>9} {'c ns/tok^2':>10} {'med':>5} {'max':>5}",
    ]
    for name, m in profile.models.items():
        f, d, p = m.fit, m.decode_quality, m.prefill_quality
        lines.append(
            f"{name:24} {f.decode_fixed_s * 1e3:11.2f} {f.decode_per_seq_s * 1e3:9.3f} "
            f"{f.decode_per_context_token_s * 1e6:9.3f} {d.median_rel_err * 100:4.0f}% {d.max_rel_err * 100:4.0f}% | "
            f"{f.prefill_fixed_s * 1e3:12.2f} {f.prefill_per_token_s * 1e6:9.1f} "
            f"{f.prefill_per_squared_token_s * 1e9:10.3f} {p.median_rel_err * 100:4.0f}% {p.max_rel_err * 100:4.0f}%"
        )
    return "\n".join(lines)


def measure_command(args: argparse.Namespace) -> int:
    import torch

    from services.gpu_worker.engine import bench_cost, bench_memory
    from services.gpu_worker.engine.bench import machine
    from shared.model_store import ModelStore

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in ARCHITECTURES]
    if unknown:
        print(
            f"error: {', '.join(unknown)}: not among the models the simulator knows ({', '.join(ARCHITECTURES)})",
            file=sys.stderr,
        )
        return 2
    store = ModelStore.from_env()
    paths = {m: store.path(m) for m in names}
    cfg = bench_cost.CostBenchConfig(device=args.device, threads=args.threads, rounds=args.rounds)

    def log(message: str) -> None:
        print(f"[engine cost] {message}", file=sys.stderr, flush=True)

    info = machine(torch.device(args.device))
    measured = bench_cost.measure(cfg, paths, log)
    device = torch.device(args.device)
    largest = max(p["weight_bytes"] for p in measured.values())
    copy = bench_memory.copy_limit(device, largest, 15)
    read = bench_memory.read_limit(device, largest, 15)
    log(f"copy limit {copy['gb_s']:.2f} GB/s, weight read {read['gb_s']:.2f} GB/s")
    config = {**asdict(cfg), "models": names, "copy_limit": copy, "read_limit": read}
    profile = build_profile(measured, copy["gb_s"], read["gb_s"], info, config)
    text = json.dumps(profile, indent=1)
    out = args.out or Path(f"bench/results/engine-cost-{args.device}-{datetime.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    log(f"wrote {out}")
    print(describe(load_engine_profile(out)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.sim.cost_engine", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    m = commands.add_parser("measure", help="measure our models on this machine and write a profile")
    m.add_argument(
        "--models",
        default="smollm2-135m-instruct,demo-llama,demo-qwen2,demo-mistral",
        help="comma-separated models in the store (default: %(default)s)",
    )
    m.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    m.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, as the worker's --threads (default: %(default)s, as bench sched)",
    )
    m.add_argument(
        "--rounds", type=int, default=3, help="passes over every model; medians of them (default: %(default)s)"
    )
    m.add_argument("--out", type=Path, help="profile path (default: bench/results/engine-cost-<device>-<date>.json)")
    s = commands.add_parser("show", help="print a profile's fits and their quality")
    s.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "measure":
            return measure_command(args)
        print(describe(load_engine_profile(args.path)))
        return 0
    except SimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
