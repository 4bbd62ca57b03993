"""Subject permissions of deploy/nats/auth.conf, on a real nats-server running deploy/nats/single.conf."""

import asyncio
import os
import subprocess
import sys

import nats
import nats.errors
import pytest

from shared import bus, subjects
from shared.protocol import CancelAssignment, encode

from .conftest import auth_of, password_of

class Client:
    """A NATS client with one service's credentials that keeps the errors the server sends it."""

    def __init__(self, user: str, url: str):
        self.user, self.url = user, url
        self.errors: list[str] = []
        self.nc = None

    async def __aenter__(self):
        async def on_error(e):
            self.errors.append(str(e))

        self.nc = await nats.connect(
            self.url, error_cb=on_error, max_reconnect_attempts=0, **bus.auth_options(auth_of(self.user))
        )
        return self

    async def violations(self, timeout: float = 2.0) -> list[str]:
        await self.nc.flush()
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.errors and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        return [e for e in self.errors if "permissions violation" in e.lower()]

    async def __aexit__(self, *exc):
        await self.nc.close()


@pytest.fixture
def client(single_nats):
    return lambda user: Client(user, single_nats.url)


async def _stream_messages(client) -> int:
    async with client("admin") as admin:
        return (await admin.nc.jetstream().stream_info(subjects.REQUEST_STREAM)).state.messages


@pytest.mark.asyncio
async def test_worker_credentials_cannot_submit_requests(client):
    async with client("gateway") as gateway:
        await bus.ensure_request_stream(gateway.nc)
        await gateway.nc.jetstream().publish(subjects.REQUEST_SUBMIT, b"from the gateway", timeout=5)
        assert await gateway.violations(timeout=0.2) == []
    before = await _stream_messages(client)
    assert before >= 1

    async with client("gpu_worker") as worker:
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await worker.nc.jetstream().publish(subjects.REQUEST_SUBMIT, b"forged by a worker", timeout=1)
        await worker.nc.publish(subjects.REQUEST_SUBMIT, b"forged by a worker, core NATS")
        violations = await worker.violations()
    assert violations and all(f'publish to "{subjects.REQUEST_SUBMIT}"' in v for v in violations), worker.errors
    assert await _stream_messages(client) == before, "a request the worker published reached the stream"


@pytest.mark.asyncio
async def test_gateway_credentials_cannot_command_workers(client):
    command = subjects.worker_commands("worker-0")
    async with client("admin") as admin:
        received = []

        async def on_command(msg):
            received.append(msg.data)

        sub = await admin.nc.subscribe(command, cb=on_command)
        await admin.nc.flush()
        async with client("router") as router:
            await router.nc.publish(command, encode(CancelAssignment("r-1")))
            assert await router.violations(timeout=0.2) == []
        async with client("gateway") as gateway:
            await gateway.nc.publish(command, encode(CancelAssignment("r-2")))
            violations = await gateway.violations()
        await asyncio.sleep(0.2)
        await sub.unsubscribe()
    assert violations == [f'nats: permissions violation for publish to "{command}"'], gateway.errors
    assert received == [encode(CancelAssignment("r-1"))], "only the router's command reaches the worker"


@pytest.mark.asyncio
async def test_worker_credentials_cannot_read_requests_or_other_tokens_subjects(client):
    async with client("gpu_worker") as worker:
        await worker.nc.subscribe(subjects.REQUEST_SUBMIT)
        await worker.nc.subscribe(subjects.TOKENS_ALL)
        await worker.violations()
        await asyncio.sleep(0.2)  # the second refusal may trail the first
        violations = [v for v in worker.errors if "permissions violation" in v.lower()]
    assert any(f'subscription to "{subjects.REQUEST_SUBMIT}"' in v for v in violations), worker.errors
    assert any(f'subscription to "{subjects.TOKENS_ALL}"' in v for v in violations), worker.errors


def test_a_service_with_a_wrong_password_stops_with_a_clear_error(single_nats, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENPOOL_")} | {"TOKENPOOL_NATS_URL": single_nats.url, "TOKENPOOL_NATS_USER": "router",
           "TOKENPOOL_NATS_PASSWORD": password_of("router") + "-wrong"}
    done = subprocess.run([sys.executable, "-m", "services.router", "--catalog", "deploy/catalog.toml"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"error: NATS at {single_nats.url} refused user 'router'" in done.stderr
    assert "Traceback" not in done.stderr
