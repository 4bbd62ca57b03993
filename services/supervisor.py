"""Starts and stops the whole stack on one machine: nats-server, router, autoscaler, workers, gateway.

Children are real processes (`python -m services.<name>`). Each asks the kernel to
SIGTERM it if the supervisor dies, so no orphan outlives `tokenpool up`. A child that
exits on its own is restarted after a short back-off; a stop sends SIGTERM to all,
gateway first and nats-server last, and SIGKILL to whatever outlives the grace period.
"""

from __future__ import annotations

import ctypes
import json
import logging
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from shared.nats_server import NatsServer

log = logging.getLogger("tokenpool.supervisor")

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For Popen's preexec_fn: the kernel sends the child SIGTERM when its parent dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def gateway_health(base_url: str) -> tuple[int, dict]:
    """(HTTP status, JSON body) of the gateway's /health; (0, {}) when nothing answers."""
    try:
        with urllib.request.urlopen(base_url + "/health", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}
    except (OSError, ValueError):
        return 0, {}


@dataclass(frozen=True)
class StackConfig:
    host: str = "127.0.0.1"
    """Gateway address."""
    port: int = 8000
    """Gateway port."""
    workers: int = 1
    """gpu_worker processes to start."""
    catalog: Path = Path("deploy/catalog.toml")
    """Model catalog every service reads."""
    nats: str | None = None
    """Existing NATS server URL(s); None starts an embedded nats-server."""
    run_dir: Path = Path(".")
    """Folder for this run: the embedded server's JetStream data and the logs."""
    worker_args: tuple[str, ...] = ()
    """Extra flags for every gpu_worker, e.g. ("--device", "cuda")."""
    router_args: tuple[str, ...] = ()
    """Extra flags for the router, e.g. ("--scheduling", "request")."""
    autoscale: bool = False
    """The autoscaler starts the workers (`workers` of them at first) and releases idle ones."""
    autoscaler_args: tuple[str, ...] = ()
    """Extra flags for the autoscaler, e.g. ("--scaling", "max_workers=4")."""
    grace_s: float = 15.0
    """How long a stop waits for children to exit before SIGKILL."""

    def __post_init__(self):
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if not Path(self.catalog).exists():
            raise ValueError(f"catalog {self.catalog} does not exist; pass --config PATH")


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    log_path: Path | None = field(default=None, repr=False)

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, preexec_fn=die_with_parent)
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Stack:
    def __init__(self, config: StackConfig):
        self.config = config
        self.nats_server: NatsServer | None = None
        self.children: list[Child] = []
        self._stopping = False

    @property
    def nats_url(self) -> str:
        return self.config.nats or self.nats_server.url

    @property
    def gateway_url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def start(self) -> None:
        c = self.config
        c.run_dir.mkdir(parents=True, exist_ok=True)
        if c.nats is None:
            self.nats_server = NatsServer(c.run_dir / "nats").start()
            log.info("embedded nats-server at %s (data in %s)", self.nats_server.url, c.run_dir / "nats")
        common = ["--nats", self.nats_url, "--catalog", str(c.catalog)]
        py = [sys.executable, "-m"]
        self.children = [Child("router", py + ["services.router", *common, *c.router_args])]
        self.children.append(Child("autoscaler", py + ["services.autoscaler", *common, *self._autoscaler_args()]))
        for i in range(0 if c.autoscale else c.workers):
            argv = py + ["services.gpu_worker", *common, "--worker-id", f"worker-{i}", *c.worker_args]
            self.children.append(Child(f"worker-{i}", argv))
        gateway = ["services.gateway", *common, "--host", c.host, "--port", str(c.port)]
        self.children.append(Child("gateway", py + gateway))
        for child in self.children:
            child.start()

    def _autoscaler_args(self) -> list[str]:
        c = self.config
        if not c.autoscale:
            return list(c.autoscaler_args)
        local = ["--connector", "local", "--initial-workers", str(c.workers), "--run-dir", str(c.run_dir / "workers")]
        return local + [f"--worker-arg={a}" for a in c.worker_args] + list(c.autoscaler_args)

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def watch_once(self, now: float) -> None:
        """Restarts children that exited while the stack is up."""
        for child in self.children:
            if self._stopping or child.alive():
                continue
            if child.next_start == 0.0:
                code = child.process.returncode if child.process else None
                child.next_start = now + min(0.5 * 2**child.restarts, 10.0)
                log.warning("%s exited with %s; restarting", child.name, code)
            elif now >= child.next_start:
                child.restarts += 1
                child.next_start = 0.0
                child.start()

    def stop(self) -> None:
        self._stopping = True
        for child in reversed(self.children):
            if child.alive():
                child.process.terminate()
        deadline = time.monotonic() + self.config.grace_s
        for child in reversed(self.children):
            if child.process is None:
                continue
            try:
                child.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", child.name, self.config.grace_s)
                child.process.kill()
                child.process.wait()
        if self.nats_server is not None:
            self.nats_server.stop()
        log.info("stopped")
