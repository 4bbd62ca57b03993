"""Starts and releases worker containers of a compose project with the docker CLI (deploy/compose).

Two shapes of project:
- one scalable service (the CPU demo's `cpu_worker`): start(n) is `up --scale cpu_worker=<running+n>`;
- one service per GPU (`slots`: gpu_worker, gpu_worker_1, ... from compose.gpus.yaml), each with its
  own device reservation and at most one container: start(n) brings up n of those not running.
  (Scaling gpu_worker itself would stack every replica on the one GPU it reserves.)
release(worker) is `docker stop -t GRACE <container>` then `docker rm <container>`: SIGTERM drains the
worker, and compose's count drops by that very container instead of one compose would pick.

A container's worker id is its TOKENPOOL_WORKER_ID when set, else `worker-<hostname>`, which
compose.yaml's worker command passes as --worker-id (docker names the host after the short
container id).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shlex
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from services.autoscaler.connectors.base import ConnectorError, check_count

log = logging.getLogger("tokenpool.autoscaler.compose")

Runner = Callable[[list[str]], Awaitable[tuple[int, str, str]]]
"""Runs a command line; returns (exit status, stdout, stderr)."""


async def run_command(argv: list[str]) -> tuple[int, str, str]:
    try:
        process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                       stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: command not found"
    out, err = await process.communicate()
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def compose_worker_id(container: dict) -> str:
    """The id a container's gpu_worker reports, from its `docker inspect` record."""
    config = container.get("Config") or {}
    env = dict(e.split("=", 1) for e in config.get("Env") or () if "=" in e)
    if env.get("TOKENPOOL_WORKER_ID"):
        return env["TOKENPOOL_WORKER_ID"]
    host = re.sub(r"[^A-Za-z0-9_-]", "-", config.get("Hostname") or container["Id"][:12])
    return f"worker-{host}"


class ComposeConnector:
    name = "compose"

    def __init__(self, compose_files: Sequence[str | Path], *, service: str = "gpu_worker", slots: Sequence[str] = (),
                 project: str | None = None, profiles: Sequence[str] = (), grace_s: float = 30.0,
                 runner: Runner = run_command, docker: str = "docker",
                 worker_id_of: Callable[[dict], str] = compose_worker_id, release_on_close: bool = False):
        if not compose_files:
            raise ValueError("compose_files must name at least one compose file")
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {grace_s}")
        self.files, self.project, self.profiles = [str(f) for f in compose_files], project, tuple(profiles)
        self.slots = tuple(slots)
        self.services = self.slots or (service,)
        self.grace_s, self.runner, self.docker = grace_s, runner, docker
        self.worker_id_of, self.release_on_close = worker_id_of, release_on_close
        self._mine: dict[str, str] = {}
        """Worker id -> container id, for the containers this connector started."""
        self._lock = asyncio.Lock()
        """One docker change at a time: an `up --scale` while a released container sits stopped
        but not yet removed would start it again."""

    def compose(self, *args: str) -> list[str]:
        argv = [self.docker, "compose"]
        for f in self.files:
            argv += ["-f", f]
        if self.project:
            argv += ["-p", self.project]
        for profile in self.profiles:
            argv += ["--profile", profile]
        return argv + list(args)

    async def _run(self, argv: list[str]) -> str:
        code, out, err = await self.runner(argv)
        if code != 0:
            said = err.strip() or out.strip() or "(no output)"
            raise ConnectorError(f"`{shlex.join(argv)}` failed with exit status {code}: {said}")
        return out

    async def containers(self) -> dict[str, dict]:
        """`docker inspect` of each running container of the worker services, by container id."""
        ids = (await self._run(self.compose("ps", "-q", *self.services))).split()
        if not ids:
            return {}
        return {c["Id"]: c for c in json.loads(await self._run([self.docker, "inspect", *ids]))}

    async def start(self, count: int) -> list[str]:
        check_count(count)
        async with self._lock:
            before = await self.containers()
            await self._run(self.compose("up", "-d", "--no-deps", "--no-recreate", *self._up_args(before, count)))
            after = await self.containers()
            ids = _unique_ids({cid: self.worker_id_of(c) for cid, c in after.items()}, after)
            new = sorted((c for cid, c in after.items() if cid not in before), key=lambda c: c.get("Name", ""))
            started = [ids[c["Id"]] for c in new]
            self._mine.update((ids[c["Id"]], c["Id"]) for c in new)
        log.info("started %s", ", ".join(started) or "nothing")
        if len(started) != count:
            raise ConnectorError(f"asked compose for {count} new workers of {', '.join(self.services)} but "
                                 f"{len(started)} came up", started=started)
        return started

    def _up_args(self, running: dict[str, dict], count: int) -> list[str]:
        if not self.slots:
            return ["--scale", f"{self.services[0]}={len(running) + count}", self.services[0]]
        busy = {(c.get("Config", {}).get("Labels") or {}).get("com.docker.compose.service") for c in running.values()}
        free = [s for s in self.slots if s not in busy]
        if not free:  # fewer free than asked: start what fits (start() says how many came up)
            raise ConnectorError(f"asked for {count} new workers but none of the services "
                                 f"{', '.join(self.slots)} is free: each already runs")
        return free[:count]

    async def release(self, worker_id: str) -> None:
        async with self._lock:
            container = self._mine.get(worker_id)
            if container is None:  # a worker compose started before us: find its container
                found = {self.worker_id_of(c): cid for cid, c in (await self.containers()).items()}
                container = found.get(worker_id)
            if container is None:
                raise ConnectorError(f"cannot release {worker_id!r}: no running container of "
                                     f"{', '.join(self.services)} has that worker id")
            await self._run([self.docker, "stop", "-t", str(round(self.grace_s)), container])
            await self._run([self.docker, "rm", container])
            self._mine.pop(worker_id, None)
        log.info("released %s (container %s)", worker_id, container[:12])

    def reserve(self, worker_ids) -> None:
        """Compose workers are named after their containers: nothing to reserve."""

    def workers(self) -> list[str]:
        """Workers this connector started and has not released (refresh() drops those that died)."""
        return list(self._mine)

    async def refresh(self) -> list[str]:
        running = await self.containers()
        self._mine = {w: cid for w, cid in self._mine.items() if cid in running}
        return self.workers()

    async def close(self) -> None:
        """Leaves the containers to compose unless release_on_close: an autoscaler restart must not
        empty the pool; the restarted one finds the workers by their state reports."""
        if self.release_on_close:
            for worker_id in self.workers():
                await self.release(worker_id)


def _unique_ids(ids: dict[str, str], containers: dict[str, dict]) -> dict[str, str]:
    seen: dict[str, str] = {}
    for cid, worker_id in ids.items():
        if worker_id in seen:
            names = " and ".join(containers[c].get("Name", c[:12]) for c in (seen[worker_id], cid))
            raise ConnectorError(f"containers {names} both report worker id {worker_id!r}; "
                                 "TOKENPOOL_WORKER_ID must not be set for a scaled worker service")
        seen[worker_id] = cid
    return ids
