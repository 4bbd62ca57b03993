"""Starts and releases gpu_worker processes on this machine (`tokenpool up --autoscale`, the tests).

Each worker is a child process that the kernel SIGTERMs when the autoscaler dies, so a crashed
autoscaler leaves no orphans. Ids are <id_prefix><n>, n counting up from past the highest id in
`existing`, never reused within a run. Logs go to <run_dir>/<id>.log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from services.autoscaler.connectors.base import ConnectorError, check_count, log_tail
from services.supervisor import die_with_parent

log = logging.getLogger("tokenpool.autoscaler.local")

WORKER_COMMAND = (sys.executable, "-m", "services.gpu_worker")
_TOKEN_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


class LocalConnector:
    name = "local"

    def __init__(self, nats: str, catalog: Path, run_dir: Path, *, worker_args: Sequence[str] = (),
                 existing: Iterable[str] = (), id_prefix: str = "auto-worker-", grace_s: float = 20.0,
                 settle_s: float = 3.0, command: Sequence[str] = WORKER_COMMAND):
        if not _TOKEN_SAFE.match(id_prefix):
            raise ValueError(f"id_prefix {id_prefix!r} must contain only letters, digits, - and _")
        if grace_s < 0 or settle_s < 0:
            raise ValueError(f"grace_s and settle_s must be >= 0, got {grace_s} and {settle_s}")
        self.nats, self.catalog, self.run_dir = nats, Path(catalog), Path(run_dir)
        self.worker_args, self.command = tuple(worker_args), tuple(command)
        self.id_prefix, self.grace_s, self.settle_s = id_prefix, grace_s, settle_s
        self._taken: set[str] = set()
        self._next = 1
        self.reserve(existing)
        self._procs: dict[str, subprocess.Popen] = {}
        self._stopping: dict[str, asyncio.Task] = {}

    def reserve(self, worker_ids: Iterable[str]) -> None:
        self._taken |= set(worker_ids)
        numbered = (re.fullmatch(re.escape(self.id_prefix) + r"(\d+)", w) for w in self._taken)
        self._next = max(self._next, 1 + max((int(m.group(1)) for m in numbered if m), default=0))

    def argv(self, worker_id: str) -> list[str]:
        return [*self.command, "--nats", self.nats, "--catalog", str(self.catalog), "--worker-id", worker_id,
                *self.worker_args]

    def log_path(self, worker_id: str) -> Path:
        return self.run_dir / f"{worker_id}.log"

    def pid(self, worker_id: str) -> int:
        return self._procs[worker_id].pid

    def _new_id(self) -> str:
        while (worker_id := f"{self.id_prefix}{self._next}") in self._taken:
            self._next += 1
        self._taken.add(worker_id)
        return worker_id

    def _spawn(self, worker_id: str) -> subprocess.Popen:
        # Popen runs in the event loop's thread on purpose: PDEATHSIG fires when the forking
        # *thread* ends, so a child forked from an executor thread would die with that thread.
        with open(self.log_path(worker_id), "ab") as out:
            process = subprocess.Popen(self.argv(worker_id), stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=os.environ | {"PYTHONUNBUFFERED": "1"},
                                       preexec_fn=die_with_parent)
        log.info("started %s (pid %d, log %s)", worker_id, process.pid, self.log_path(worker_id))
        return process

    def _exit_report(self, worker_id: str, code: int) -> str:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        try:
            tail = log_tail(self.log_path(worker_id).read_text(errors="replace"))
        except OSError:
            tail = "(no log)"
        return f"worker {worker_id} {how}; the end of {self.log_path(worker_id)}:\n{tail}"

    async def start(self, count: int) -> list[str]:
        """Starts `count` workers and watches them for settle_s: one that exits by then raises."""
        check_count(count)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ids = [self._new_id() for _ in range(count)]
        for worker_id in ids:
            self._procs[worker_id] = self._spawn(worker_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settle_s
        while True:
            failed = [w for w in ids if self._procs[w].poll() is not None]
            if len(failed) == len(ids) or loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        if failed:
            reports = [self._exit_report(w, self._procs.pop(w).returncode) for w in failed]
            raise ConnectorError("\n".join(reports), started=[w for w in ids if w not in failed])
        return ids

    def workers(self) -> list[str]:
        for worker_id, process in list(self._procs.items()):
            if process.poll() is not None:
                log.warning("%s", self._exit_report(worker_id, process.returncode))
                del self._procs[worker_id]
        return list(self._procs)

    async def release(self, worker_id: str) -> None:
        if worker_id not in self._stopping:
            process = self._procs.pop(worker_id, None)
            if process is None:
                known = ", ".join(self.workers()) or "none"
                raise ConnectorError(f"cannot release {worker_id!r}: not a running worker this connector "
                                     f"started (those are: {known})")
            self._stopping[worker_id] = asyncio.create_task(self._stop(worker_id, process))
        try:
            await asyncio.shield(self._stopping[worker_id])
        finally:
            if self._stopping.get(worker_id) is not None and self._stopping[worker_id].done():
                del self._stopping[worker_id]

    async def _stop(self, worker_id: str, process: subprocess.Popen) -> None:
        if process.poll() is None:
            process.terminate()
        if not await _exited(process, self.grace_s):
            log.warning("%s did not stop within %.0f s of SIGTERM; killing it", worker_id, self.grace_s)
            process.kill()
            await _exited(process, None)
        log.info("released %s (exit status %s)", worker_id, process.returncode)

    async def close(self) -> None:
        """Releases every worker this connector started, all at once."""
        await asyncio.gather(*(self.release(w) for w in [*self._procs, *self._stopping]))


async def _exited(process: subprocess.Popen, timeout_s: float | None) -> bool:
    """Polls without blocking the event loop; False if the process still runs after timeout_s."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    while process.poll() is None:
        if deadline is not None and loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True
