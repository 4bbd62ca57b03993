"""The real stack for end-to-end tests: nats-server, router, gpu_workers and gateway as processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.supervisor import gateway_health
from shared.nats_server import NatsServer, free_port

MODELS = ("smollm2-135m-instruct", "demo-llama", "demo-qwen2")


def write_catalog(path: Path, store_root: Path, models=MODELS) -> Path:
    lines = ["[slo_classes.default]", "ttft_s = 10.0", "tbt_s = 0.1", ""]
    for m in models:
        lines += ["[[models]]", f'name = "{m}"', f'path = "{store_root / m}"', ""]
    path.write_text("\n".join(lines))
    return path


def run_async(coro):
    """Runs a coroutine to completion in a thread of its own. asyncio.run in the test's own
    thread leaves that thread without an event loop afterwards, and pytest-asyncio modules run
    later in the same process were seen to stall on it."""
    import asyncio
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class Service:
    def __init__(self, name: str, argv: list[str], log_dir: Path):
        self.name, self.argv, self.log_path = name, argv, log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "Service":
        log = open(self.log_path, "ab")
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        return self

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


class Stack:
    """Processes started one by one, so tests can kill exactly the one they mean to."""

    def __init__(self, tmp: Path, catalog: Path):
        self.tmp, self.catalog = tmp, catalog
        self.nats = NatsServer(tmp / "nats")
        self.services: dict[str, Service] = {}
        self.port = free_port()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _common(self) -> list[str]:
        return ["--nats", self.nats.url, "--catalog", str(self.catalog)]

    def start_service(self, name: str, module: str, *args: str) -> Service:
        svc = Service(name, [sys.executable, "-m", module, *self._common(), *args], self.tmp).start()
        self.services[name] = svc
        return svc

    def start(self, workers: int = 1, worker_models: str | None = None) -> "Stack":
        self.nats.start()
        self.start_service("router", "services.router")
        for i in range(workers):
            self.start_worker(f"worker-{i}", worker_models)
        self.start_service("gateway", "services.gateway", "--host", "127.0.0.1", "--port", str(self.port))
        return self

    def start_worker(self, worker_id: str, models: str | None = None) -> Service:
        extra = ["--models", models] if models else []
        return self.start_service(worker_id, "services.gpu_worker", "--worker-id", worker_id, *extra)

    def health(self) -> tuple[int, dict]:
        return gateway_health(self.base_url)

    def wait_healthy(self, timeout: float = 120.0, workers: int | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.health()
            if status == 200 and (workers is None or len(body.get("workers", [])) >= workers):
                return
            for svc in self.services.values():
                if svc.process.poll() is not None:
                    raise RuntimeError(f"{svc.name} exited early:\n{svc.log()}")
            time.sleep(0.3)
        logs = "\n".join(f"--- {s.name}\n{s.log()}" for s in self.services.values())
        raise TimeoutError(f"stack not healthy after {timeout} s\n{logs}")

    def stop(self) -> None:
        for svc in reversed(list(self.services.values())):
            svc.stop()
        self.nats.stop()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, model_store) -> Path:
    return write_catalog(tmp_path_factory.mktemp("catalog") / "catalog.toml", model_store.root)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, catalog):
    s = Stack(tmp_path_factory.mktemp("stack"), catalog).start(workers=1)
    try:
        s.wait_healthy()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(stack):
    from openai import OpenAI

    return OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def greedy_reference(model_store):
    """The engine run in-process, as `tokenpool generate` runs it: {(model, prompt ids, n): ids}."""
    from services.gpu_worker.engine.config import EngineConfig
    from services.gpu_worker.engine.engine import Engine
    from services.gpu_worker.engine.generate import run_to_completion
    from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams

    models = (*MODELS, "demo-mistral")
    engine = Engine(EngineConfig(kv_arena_bytes=64 << 20), {m: model_store.path(m) for m in models})
    cache: dict = {}

    def reference(model: str, prompt_ids: tuple[int, ...], max_tokens: int, ignore_eos: bool = False) -> list[int]:
        key = (model, prompt_ids, max_tokens, ignore_eos)
        if key not in cache:
            params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=ignore_eos)
            request = EngineRequest("ref", model, prompt_ids, params)
            cache[key] = run_to_completion(engine, [request])["ref"].token_ids
        return cache[key]

    yield reference
    engine.close()


class StateWatcher:
    """Keeps the latest WorkerState of every worker, read from the real bus in a side thread."""

    def __init__(self, nats_url: str):
        import asyncio
        import threading

        self.url = nats_url
        self.workers: dict = {}
        self.ran_on: dict[str, set[str]] = {}
        """Request id -> every worker whose report ever listed it."""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self):
        self._loop.run_until_complete(self._subscribe())
        self._loop.run_forever()

    async def _subscribe(self):
        import nats

        from shared import subjects
        from shared.protocol import WorkerState, decode

        async def on_state(msg):
            state = decode(msg.data, WorkerState)
            self.workers[state.worker_id] = state
            for rid in state.running:
                self.ran_on.setdefault(rid, set()).add(state.worker_id)

        self._nc = await nats.connect(self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.3)
        await self._nc.subscribe(subjects.WORKER_STATE, cb=on_state)
        self._ready.set()

    def holder_of(self, request_id: str, timeout: float = 10.0) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for worker_id, state in list(self.workers.items()):
                if request_id in state.running:
                    return worker_id
            time.sleep(0.05)
        return None

    def wait_not_running(self, request_id: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = time.time()
            fresh = [s for s in self.workers.values() if now - s.ts < 1.5]
            if fresh and all(request_id not in s.running for s in fresh):
                return True
            time.sleep(0.1)
        return False

    def close(self):
        import asyncio

        asyncio.run_coroutine_threadsafe(self._nc.close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
