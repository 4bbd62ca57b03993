"""The stack `tokenpool bench serve` measures: nats-server, router, gpu_worker(s) and the gateway.

    with ServeStack(run_dir, model_path, "demo-llama", worker_args=[...]) as stack:
        stack.wait_healthy(120)
        ...  # HTTP on stack.base_url

Each service is a real process (`python -m services.<name>`) on loopback ports, logging to a
file in `run_dir`. The services run in their own session (a Ctrl-C reaches only the
benchmark, which then stops them in order) and get SIGTERM if the benchmark process dies
(nats-server, started by shared.nats_server, does not).
Leaving the `with` stops every process: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from services.supervisor import die_with_parent, gateway_health
from shared.nats_server import NatsServer, free_port




def write_catalog(path: Path, model: str, model_path: Path) -> Path:
    """A catalog with the one benchmarked model, so that the gateway loads one tokenizer."""
    return write_models_catalog(path, {model: model_path})


def write_models_catalog(path: Path, models: Mapping[str, Path], ttft_s: float = 10.0, tbt_s: float = 0.1) -> Path:
    """A catalog of `models` (name -> checkpoint folder), all in the SLO class `default` with
    these objectives (seconds to the first token, seconds between tokens)."""
    lines = ["[slo_classes.default]", f"ttft_s = {float(ttft_s)!r}", f"tbt_s = {float(tbt_s)!r}", ""]
    for model, model_path in models.items():
        lines += ["[[models]]", f"name = {json.dumps(model)}", f"path = {json.dumps(str(model_path))}", ""]
    path.write_text("\n".join(lines))
    return path


class ServeStack:
    WORKER_ID = "bench-worker"
    """The first gpu_worker's id on the bus; the others' are WORKER_ID-1, -2, ..."""

    def __init__(
        self,
        run_dir: Path,
        model: str,
        model_path: Path,
        worker_args: list[str],
        router_args: list[str],
        grace_s: float = 15.0,
        catalog: Path | None = None,
        workers: int = 1,
    ):
        self.run_dir = Path(run_dir)
        # `catalog`: one written beforehand (several models, an SLO class); None: `model` alone.
        self.catalog = catalog or write_catalog(self.run_dir / "catalog.toml", model, model_path)
        self.model = model
        self.worker_args = worker_args
        self.router_args = router_args
        self.grace_s = grace_s
        self.worker_ids = [self.WORKER_ID] + [f"{self.WORKER_ID}-{i}" for i in range(1, workers)]
        self.port = free_port()
        self.nats = NatsServer(self.run_dir / "nats")
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServeStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.nats.start()
        common = ["--nats", self.nats.url, "--catalog", str(self.catalog), "--log-level", "WARNING"]
        self._spawn("router", "services.router", *common, *self.router_args)
        for i, worker_id in enumerate(self.worker_ids):
            name = "worker" if i == 0 else f"worker-{i}"
            self._spawn(name, "services.gpu_worker", *common, "--worker-id", worker_id, *self.worker_args)
        self._spawn("gateway", "services.gateway", *common, "--host", "127.0.0.1", "--port", str(self.port))

    def _spawn(self, name: str, module: str, *args: str) -> None:
        log = open(self.run_dir / f"{name}.log", "ab")
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        try:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            log.close()

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.run_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def health(self) -> tuple[int, dict]:
        return gateway_health(self.base_url)

    def wait_healthy(self, timeout_s: float) -> None:
        """Until /health says a router and every worker serve; raises if a service exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status, body = self.health()
            if status == 200 and len(body.get("workers", ())) >= len(self.worker_ids):
                return
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {process.returncode}:\n{self.log_tail(name)}")
            time.sleep(0.2)
        logs = "\n".join(f"--- {name}\n{self.log_tail(name, 1500)}" for name in self.processes)
        raise TimeoutError(f"the stack was not healthy after {timeout_s:g} s\n{logs}")

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU time each live process has used so far (from /proc), nats-server included."""
        pids = {name: p.pid for name, p in self.processes.items()}
        if self.nats.process is not None:
            pids["nats-server"] = self.nats.process.pid
        ticks = os.sysconf("SC_CLK_TCK")
        used = {}
        for name, pid in pids.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited, or no /proc here
            used[name] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        return used

    def stop(self) -> None:
        """Gateway first, nats-server last; SIGKILL for whatever outlives the grace period."""
        names = ["gateway"] + [n for n in self.processes if n.startswith("worker")] + ["router"]
        order = [self.processes[n] for n in names if n in self.processes]
        for process in order:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + self.grace_s
        for process in order:
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.nats.stop()
