"""The gpu_worker's configuration, and how it becomes an engine configuration."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

import torch

from services.gpu_worker.cpu_threads import cpu_engine_threads
from services.gpu_worker.engine.config import EngineConfig, load_model_config
from services.gpu_worker.engine.layout import weight_layout
from shared.catalog import Catalog

MIB = 1 << 20
CPU_KV_ARENA_BYTES = 256 * MIB
CPU_MAX_RUNNING = 32
"""A CPU decodes a few sequences per step at most: more only wait longer."""
CUDA_MAX_RUNNING = 256
"""A GPU holds requests of many models at once (the simulator's SLOTS_PER_GPU)."""
_TOKEN_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
ENGINES = ("torch", "echo")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_worker_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"
    return f"worker-{host}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: str = field(default_factory=default_worker_id)
    """Name on the bus: commands arrive on tp.worker.<id>.cmd. Letters, digits, - and _."""
    nats: str = "nats://127.0.0.1:4222"
    """NATS server URL(s), comma-separated."""
    catalog: Path = Path("deploy/catalog.toml")
    """The model catalog (TOML)."""
    models: tuple[str, ...] = ()
    """Catalog models this worker serves; empty means all of them."""
    device: str = "cpu"
    """torch device: cpu, cuda or cuda:N."""
    dtype: str | None = None
    """Compute dtype (auto, float32, bfloat16, float16); None takes it from the catalog entries."""
    weight_arena_bytes: int | None = None
    """Device bytes for resident weights; None fits every served model at once."""
    kv_arena_bytes: int | None = None
    """Device bytes for KV pages; None means 256 MiB on CPU, half the free GPU memory on CUDA."""
    kv_page_bytes: int = 1 * MIB
    """Bytes of one KV page."""
    host_swap_bytes: int | None = None
    """Host bytes for swapped-out KV pages; None means twice the KV arena, at most a quarter of
    the host's memory (pinned on CUDA, so never given back while the worker runs)."""
    max_batch_size: int = 64
    """Most sequences decoded together in one step."""
    max_running: int | None = None
    """Requests the worker asks the router for at once (WorkerState.max_running); None: 32 on
    CPU, 256 on CUDA, where KV pages rather than a count bound them (beyond what fits, the
    engine swaps or waits)."""
    max_batch_tokens: int = 2048
    """Most prompt tokens computed in one prefill step (longer prompts are chunked)."""
    prefix_caching: bool = True
    """Reuse the KV pages of earlier prompts' full blocks for prompts that start the same way."""
    report_interval_s: float = 0.5
    """Seconds between WorkerState reports (more come on every change)."""
    drain_timeout_s: float = 10.0
    """On SIGTERM, how long in-flight requests may run before they are released to the router."""
    engine: str = "torch"
    """torch: the real engine; echo: no compute, tokens echo the prompt (to measure the control plane)."""
    echo_step_s: float = 0.0
    """With engine=echo, seconds each step sleeps to stand in for a model's step time."""
    turn_linger_s: float = 0.005
    """An admitting turn whose requests are all done waits this long for a newcomer before it
    ends (services/gpu_worker/turn.py); 0 ends it at once."""
    threads: int | None = None
    """CPU threads the engine's math may use (torch.set_num_threads). None: on a CPU device, every
    core but one (cpu_threads.py); on CUDA, torch's default."""
    kv_handoff_dir: Path | None = None
    """This machine's KV hand-off area (disaggregated prefill to decode between its workers);
    None: $TOKENPOOL_KV_HANDOFF_DIR, else /dev/shm/tokenpool-kv (or tokenpool-kv in the temp dir)."""

    def __post_init__(self):
        if not _TOKEN_SAFE.match(self.worker_id):
            raise ValueError(
                f"worker_id {self.worker_id!r} must contain only letters, digits, - and _ "
                "(it is part of a NATS subject); pass e.g. --worker-id worker-1"
            )
        if not self.nats.strip():
            raise ValueError("nats URL is empty; pass --nats nats://HOST:4222")
        if not _DEVICE.match(self.device):
            raise ValueError(f"device {self.device!r} is not cpu, cuda or cuda:N")
        if self.dtype is not None and self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of auto, {', '.join(_DTYPES)}")
        for name in ("weight_arena_bytes", "kv_arena_bytes", "host_swap_bytes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive number of bytes, got {value}")
        if self.kv_page_bytes <= 0:
            raise ValueError(f"kv_page_bytes must be positive, got {self.kv_page_bytes}")
        if self.max_running is not None and self.max_running < 1:
            raise ValueError(f"max_running must be at least 1, got {self.max_running}")
        if self.max_batch_size < 1 or self.max_batch_tokens < 1:
            raise ValueError("max_batch_size and max_batch_tokens must be at least 1")
        if self.report_interval_s <= 0:
            raise ValueError(f"report_interval_s must be positive, got {self.report_interval_s}")
        if self.drain_timeout_s < 0:
            raise ValueError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}; pass --engine torch or echo")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}; omit it for torch's default")
        if not 0 <= self.turn_linger_s <= 1:
            raise ValueError(f"turn_linger_s must be in [0, 1] seconds, got {self.turn_linger_s}")
        if self.echo_step_s < 0:
            raise ValueError(f"echo_step_s must be >= 0 seconds, got {self.echo_step_s}")
        if self.echo_step_s and self.engine != "echo":
            raise ValueError("echo_step_s only applies to the echo engine; pass --engine echo or drop --echo-step-s")


@dataclass(frozen=True)
class EnginePlan:
    """What the engine thread builds: the engine config, model paths and per-model context caps."""

    engine: EngineConfig
    paths: dict[str, Path]
    context_lengths: dict[str, int | None]


def build_engine(config: WorkerConfig, plan: EnginePlan):
    """The engine the worker's thread runs: the torch Engine, or the compute-free EchoEngine."""
    if config.engine == "echo":
        from services.gpu_worker.echo_engine import EchoEngine

        return EchoEngine(plan.paths, plan.engine.max_batch_size, config.echo_step_s)
    import torch

    from services.gpu_worker.engine.engine import Engine

    threads = engine_threads(config)
    if threads is not None:
        torch.set_num_threads(threads)
    return Engine(plan.engine, plan.paths)


def engine_threads(config: WorkerConfig) -> int | None:
    """The torch threads the engine gets (WorkerConfig.threads); None leaves torch's default."""
    if config.threads is not None:
        return config.threads
    if config.device == "cpu" and config.engine == "torch":
        return cpu_engine_threads(os.cpu_count())
    return None


def served_models(config: WorkerConfig, catalog: Catalog) -> list[str]:
    if not config.models:
        return catalog.names()
    unknown = [m for m in config.models if catalog.get(m) is None]
    if unknown:
        raise ValueError(
            f"models {', '.join(unknown)} are not in catalog {catalog.source}; "
            f"it lists: {', '.join(catalog.names())}"
        )
    return list(dict.fromkeys(config.models))


def plan_engine(
    config: WorkerConfig, catalog: Catalog, free_device_bytes: int | None = None, host_bytes: int | None = None
) -> EnginePlan:
    """Resolves the automatic sizes; reads each served model's config.json (not its weights)."""
    names = served_models(config, catalog)
    entries = [catalog.get(n) for n in names]
    dtype = _resolve_dtype(config, entries)
    torch_dtype = EngineConfig(device=config.device, dtype=dtype).torch_dtype
    weight_bytes = {e.name: weight_layout(load_model_config(e.name, e.path)).numel * torch_dtype.itemsize for e in entries}
    weight_arena = config.weight_arena_bytes or sum(weight_bytes.values())
    largest = max(weight_bytes, key=weight_bytes.get)
    if weight_arena < weight_bytes[largest]:
        raise ValueError(
            f"weight_arena_bytes={weight_arena} cannot hold model {largest!r} ({weight_bytes[largest]} bytes); "
            "raise --weight-arena-bytes or leave it out to fit every served model"
        )
    kv_arena = config.kv_arena_bytes or _default_kv_arena(config.device, weight_arena, free_device_bytes)
    if config.kv_page_bytes > kv_arena:
        raise ValueError(f"kv_page_bytes={config.kv_page_bytes} is larger than the KV arena ({kv_arena} bytes)")
    engine = EngineConfig(
        device=config.device,
        dtype=dtype,
        weight_arena_bytes=weight_arena,
        kv_arena_bytes=kv_arena,
        kv_page_bytes=config.kv_page_bytes,
        host_swap_bytes=config.host_swap_bytes or _default_host_swap(kv_arena, host_bytes or _host_memory()),
        max_batch_tokens=config.max_batch_tokens,
        max_batch_size=config.max_batch_size,
        prefix_caching=config.prefix_caching,
    )
    return EnginePlan(engine, {e.name: e.path for e in entries}, {e.name: e.context_length for e in entries})


def _resolve_dtype(config: WorkerConfig, entries) -> torch.dtype | None:
    if config.dtype is not None:
        return _DTYPES.get(config.dtype)
    wanted = {e.dtype for e in entries}
    if len(wanted) > 1:
        raise ValueError(
            f"the served models ask for different dtypes ({', '.join(sorted(wanted))}) but one engine "
            "computes in one dtype; pass --dtype or serve them from separate workers"
        )
    return _DTYPES.get(wanted.pop())


def _default_host_swap(kv_arena: int, host_bytes: int | None) -> int:
    # Twice the device's KV: paused batches of other models fit beside the running ones. On an
    # 80 GB GPU that is ~64 GB pinned, so a quarter of the host's memory caps it.
    wanted = 2 * kv_arena
    if host_bytes is None:
        return wanted
    return max(min(wanted, host_bytes // 4 // MIB * MIB), MIB)


def _host_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _default_kv_arena(device: str, weight_arena: int, free_device_bytes: int | None) -> int:
    # Half of what the weights leave free: the rest is for activations and the CUDA context.
    if device == "cpu" or free_device_bytes is None:
        return CPU_KV_ARENA_BYTES
    return max(CPU_KV_ARENA_BYTES, (free_device_bytes - weight_arena) // 2 // MIB * MIB)


def max_running(config: WorkerConfig) -> int:
    if config.max_running is not None:
        return config.max_running
    return CPU_MAX_RUNNING if config.device == "cpu" else CUDA_MAX_RUNNING
