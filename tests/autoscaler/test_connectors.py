"""Connectors: the local one runs real gpu_worker processes on a real nats-server; the compose one's
docker command lines go through a recording runner (no Docker engine runs here)."""

import asyncio
import json
import os
import shutil
import signal
import sys
import time

import pytest

from services.autoscaler.connectors import ComposeConnector, ConnectorError, LocalConnector
from shared import bus, subjects
from shared.nats_server import NatsServer
from shared.protocol import WorkerState, decode

ECHO = ("--engine", "echo", "--report-interval", "0.2")
IGNORES_SIGTERM = (sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('up', flush=True); time.sleep(60)")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, model_store):
    path = tmp_path_factory.mktemp("catalog") / "catalog.toml"
    path.write_text(f'[[models]]\nname = "demo-llama"\npath = "{model_store.path("demo-llama")}"\n')
    return path


def test_local_workers_report_with_their_ids_and_a_release_drains_and_ends_one(tmp_path, catalog):
    async def scenario(url):
        nc = await bus.connect(url, "test")
        last: dict[str, tuple[float, WorkerState]] = {}

        async def on_state(msg):
            state = decode(msg.data, WorkerState)
            last[state.worker_id] = (time.monotonic(), state)

        await nc.subscribe(subjects.WORKER_STATE, cb=on_state)
        conn = LocalConnector(url, catalog, tmp_path / "run", worker_args=ECHO, existing=["auto-worker-2", "worker-0"],
                              settle_s=1.0)
        try:
            ids = await conn.start(2)
            assert ids == ["auto-worker-3", "auto-worker-4"] and conn.workers() == ids
            pids = [conn.pid(w) for w in ids]
            while not all(w in last and last[w][1].ready for w in ids):
                await asyncio.sleep(0.1)

            began = time.monotonic()
            await conn.release(ids[0])
            assert time.monotonic() - began < 10, "SIGTERM should end an idle worker long before the 20 s grace"
            assert not alive(pids[0]) and alive(pids[1]) and conn.workers() == [ids[1]]
            assert last[ids[0]][1].ready is False  # its last report: draining, take no work
            quiet_since = time.monotonic()
            await asyncio.sleep(1.0)
            assert last[ids[0]][0] < quiet_since < last[ids[1]][0]

            with pytest.raises(ConnectorError, match=r"'auto-worker-3'.*not a running worker.*auto-worker-4"):
                await conn.release(ids[0])
            for bad in (0, -1):
                with pytest.raises(ValueError, match="count must be"):
                    await conn.start(bad)
        finally:
            await conn.close()
            await nc.close()
        assert conn.workers() == [] and not any(alive(p) for p in pids)
        assert (tmp_path / "run" / "auto-worker-3.log").exists()

    with NatsServer(tmp_path / "nats") as server:
        asyncio.run(asyncio.wait_for(scenario(server.url), 40))


def test_a_worker_that_exits_at_once_is_reported_with_its_status_and_log(tmp_path):
    async def scenario():
        conn = LocalConnector("nats://127.0.0.1:1", tmp_path / "absent.toml", tmp_path / "run", settle_s=15.0)
        with pytest.raises(ConnectorError, match=r"(?s)auto-worker-1 exited with status 2.*absent.toml does not exist"):
            await conn.start(1)
        assert conn.workers() == []
        with pytest.raises(ConnectorError) as failed:
            await conn.start(1)
        assert failed.value.started == []
        assert (tmp_path / "run" / "auto-worker-2.log").exists()  # ids are never reused

    asyncio.run(scenario())


def test_a_worker_deaf_to_sigterm_is_killed_after_the_grace_without_blocking_the_loop(tmp_path):
    async def scenario():
        conn = LocalConnector("-", tmp_path / "c.toml", tmp_path / "run", command=IGNORES_SIGTERM, grace_s=0.5,
                              settle_s=0.3)
        ids = await conn.start(2)
        assert ids == ["auto-worker-1", "auto-worker-2"]
        pids = [conn.pid(w) for w in ids]
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        began = time.monotonic()
        await asyncio.gather(conn.release(ids[0]), conn.release(ids[0]))  # a second release waits for the first
        took = time.monotonic() - began
        task.cancel()
        assert 0.5 <= took < 2.0 and ticks > 20 and not alive(pids[0])
        assert await conn.start(1) == ["auto-worker-3"]
        os.kill(conn.pid("auto-worker-3"), signal.SIGKILL)  # a worker that dies on its own drops out
        while "auto-worker-3" in conn.workers():
            await asyncio.sleep(0.05)
        assert conn.workers() == [ids[1]]
        await conn.close()
        assert conn.workers() == [] and not alive(pids[1])

    asyncio.run(scenario())


def test_local_connector_refuses_unsafe_ids():
    with pytest.raises(ValueError, match="id_prefix"):
        LocalConnector("-", "c.toml", "run", id_prefix="auto worker.")


# ---- compose ------------------------------------------------------------------------------------


def inspect(cid: str, service: str, number: int, env: tuple[str, ...] = ()) -> dict:
    """The parts of a real `docker inspect` record the connector reads."""
    return {"Id": cid, "Name": f"/tokenpool-{service}-{number}", "State": {"Status": "running", "Running": True},
            "Config": {"Hostname": cid[:12], "Env": ["PATH=/usr/local/bin:/usr/bin", *env],
                       "Labels": {"com.docker.compose.project": "tokenpool", "com.docker.compose.service": service,
                                  "com.docker.compose.container-number": str(number)}}}


class FakeDocker:
    """Records each command line and answers like docker would, from a table of running containers."""

    def __init__(self, running: dict[str, dict], fail: dict[str, tuple[int, str]] | None = None):
        self.running, self.calls, self.fail = running, [], fail or {}
        self.created = 0

    async def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(argv)
        verb = _verb(argv)
        if verb in self.fail:
            code, err = self.fail[verb]
            return code, "", err
        if verb == "ps":
            wanted = set(argv[argv.index("-q") + 1:])
            return 0, "".join(f"{cid}\n" for cid, c in self.running.items() if self._service(c) in wanted), ""
        if verb == "inspect":
            return 0, json.dumps([self.running[cid] for cid in argv[2:]]), ""
        if verb == "up":
            self._up(argv[argv.index("--no-recreate") + 1:])
            return 0, "", ""
        if verb in ("stop", "rm"):
            if verb == "rm":
                del self.running[argv[-1]]
            return 0, argv[-1] + "\n", ""
        return 1, "", f"unknown command {verb}"

    @staticmethod
    def _service(container: dict) -> str:
        return container["Config"]["Labels"]["com.docker.compose.service"]

    def _new(self, service: str) -> None:
        self.created += 1
        cid = f"{self.created:x}" * 64
        self.running[cid[:64]] = inspect(cid[:64], service, self.created + 1)

    def _up(self, args: list[str]) -> None:
        if args[0] == "--scale":
            service, n = args[1].split("=")
            while sum(self._service(c) == service for c in self.running.values()) < int(n):
                self._new(service)
        else:
            for service in args:
                self._new(service)


def _verb(argv: list[str]) -> str:
    """`ps` of `docker compose -f F -p P --profile X ps -q ...`; `stop` of `docker stop ...`."""
    if argv[1] != "compose":
        return argv[1]
    i = 2
    while argv[i] in ("-f", "-p", "--profile"):
        i += 2
    return argv[i]


FIRST = "a" * 64
COMPOSE = ["docker", "compose", "-f", "deploy/compose/compose.yaml", "--profile", "cpu"]


def test_compose_scales_the_service_and_learns_the_new_workers_ids_from_their_containers():
    async def scenario():
        docker = FakeDocker({FIRST: inspect(FIRST, "cpu_worker", 1)})
        conn = ComposeConnector(["deploy/compose/compose.yaml"], service="cpu_worker", profiles=["cpu"], runner=docker)
        ids = await conn.start(2)
        new = [cid for cid in docker.running if cid != FIRST]
        assert ids == [f"worker-{cid[:12]}" for cid in new] and conn.workers() == ids
        assert docker.calls[:3] == [
            COMPOSE + ["ps", "-q", "cpu_worker"],
            ["docker", "inspect", FIRST],
            COMPOSE + ["up", "-d", "--no-deps", "--no-recreate", "--scale", "cpu_worker=3", "cpu_worker"],
        ]
        docker.calls.clear()
        await conn.release(ids[0])
        assert docker.calls == [["docker", "stop", "-t", "30", new[0]], ["docker", "rm", new[0]]]
        assert conn.workers() == [ids[1]] and new[0] not in docker.running

        docker.calls.clear()  # a worker compose started before the autoscaler: found by its id
        await conn.release(f"worker-{FIRST[:12]}")
        assert docker.calls[-2:] == [["docker", "stop", "-t", "30", FIRST], ["docker", "rm", FIRST]]
        with pytest.raises(ConnectorError, match=r"'worker-nobody'.*no running container of cpu_worker"):
            await conn.release("worker-nobody")
        await conn.close()  # leaves the pool to compose
        assert list(docker.running) == [new[1]]

    asyncio.run(scenario())


def test_compose_gpu_slots_start_services_not_running_and_refuse_beyond_them():
    async def scenario():
        docker = FakeDocker({FIRST: inspect(FIRST, "gpu_worker", 1)})
        files = ["compose.yaml", "compose.gpus.yaml"]
        slots = ["gpu_worker", "gpu_worker_1", "gpu_worker_2"]
        conn = ComposeConnector(files, slots=slots, project="pool", profiles=["gpu"], grace_s=12, runner=docker,
                                release_on_close=True)
        ids = await conn.start(2)
        assert len(ids) == 2 and docker.calls[2] == [
            "docker", "compose", "-f", "compose.yaml", "-f", "compose.gpus.yaml", "-p", "pool", "--profile", "gpu",
            "up", "-d", "--no-deps", "--no-recreate", "gpu_worker_1", "gpu_worker_2"]
        with pytest.raises(ConnectorError, match=r"asked for 1 new workers but none of the services"):
            await conn.start(1)
        await conn.close()
        assert list(docker.running) == [FIRST] and conn.workers() == []
        assert [c[:4] for c in docker.calls if c[1] == "stop"] == [["docker", "stop", "-t", "12"]] * 2

    asyncio.run(scenario())


def test_compose_errors_carry_dockers_message():
    async def scenario():
        err = "service \"gpu_worker\" refers to undefined volume models: invalid compose project"
        docker = FakeDocker({}, fail={"up": (1, err)})
        conn = ComposeConnector(["compose.yaml"], runner=docker)
        with pytest.raises(ConnectorError, match=r"`docker compose -f compose.yaml up -d .*` failed with exit "
                                                 r"status 1: service \"gpu_worker\" refers to undefined volume"):
            await conn.start(1)
        with pytest.raises(ValueError, match="count must be"):
            await conn.start(0)

        same = ("TOKENPOOL_WORKER_ID=worker-0",)
        twins = {"b" * 64: inspect("b" * 64, "gpu_worker", 1, same), "c" * 64: inspect("c" * 64, "gpu_worker", 2, same)}
        with pytest.raises(ConnectorError, match="both report worker id 'worker-0'"):
            await ComposeConnector(["compose.yaml"], runner=FakeDocker(twins)).start(1)

    asyncio.run(scenario())


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")
def test_the_real_docker_cli_failing_gives_its_stderr():
    conn = ComposeConnector(["compose.yaml"], docker=shutil.which("docker"))
    with pytest.raises(ConnectorError, match=r"failed with exit status [1-9]\d*: \S"):
        asyncio.run(conn.release("worker-x"))
