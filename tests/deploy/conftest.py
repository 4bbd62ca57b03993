"""nats-server processes on the NATS configs of deploy/nats, with the passwords of .env.example."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.env import NatsAuth
from shared.nats_server import free_port, nats_server_binary, wait_for_port

from .compose_file import COMPOSE_DIR, REPO, dotenv

NATS_CONF_DIR = REPO / "deploy" / "nats"
USERS = ("gateway", "router", "gpu_worker", "autoscaler", "admin")


def run_async(coro):
    """Runs a coroutine in a thread of its own: asyncio.run in the test's thread was seen to stall
    pytest-asyncio tests of later modules (tests/e2e/conftest.py)."""
    import asyncio
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def example_env() -> dict[str, str]:
    return dotenv(COMPOSE_DIR / ".env.example")


def password_of(user: str) -> str:
    return example_env()[f"TOKENPOOL_NATS_{user.upper()}_PASSWORD"]


def auth_of(user: str) -> NatsAuth:
    return NatsAuth(user=user, password=password_of(user))


@dataclass
class NatsProcess:
    name: str
    port: int
    monitor_port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def start_nats(config: str, work: Path, name: str, env: dict[str, str], extra: tuple[str, ...] = ()) -> NatsProcess:
    """nats-server -c deploy/nats/<config> on loopback ports, JetStream data under work/name."""
    port, monitor = free_port(), free_port()
    store = work / name
    store.mkdir(parents=True, exist_ok=True)
    log_path = work / f"{name}.log"
    argv = [nats_server_binary(), "-c", str(NATS_CONF_DIR / config), "--store_dir", str(store),
            "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor), *extra]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, env={"PATH": os.environ.get("PATH", "")} | env, stdout=log, stderr=subprocess.STDOUT)
    server = NatsProcess(name, port, monitor, process, log_path)
    if not wait_for_port("127.0.0.1", port, 10):
        server.stop()
        raise RuntimeError(f"nats-server {name} did not start:\n{server.log()}")
    return server


def nats_passwords() -> dict[str, str]:
    return {k: v for k, v in example_env().items() if k.startswith("TOKENPOOL_NATS_") and k.endswith("_PASSWORD")}


@pytest.fixture(scope="module")
def single_nats(tmp_path_factory):
    """One nats-server on deploy/nats/single.conf, as compose runs it."""
    server = start_nats("single.conf", tmp_path_factory.mktemp("nats"), "nats", nats_passwords())
    yield server
    server.stop()
