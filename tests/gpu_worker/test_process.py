"""The worker as a real process: it becomes ready, and SIGTERM drains it and exits cleanly."""

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_asyncio

from shared.protocol import Sampling

from .conftest import CATALOG, BusClient, token_indexes

pytestmark = pytest.mark.asyncio
REPO = Path(__file__).resolve().parents[2]
DRAIN_S = 2.0


@pytest_asyncio.fixture
async def client(nats_url):
    c = await BusClient.connect(nats_url)
    yield c
    await c.close()


def start_worker(nats_url: str, worker_id: str, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "services.gpu_worker", "--nats", nats_url, "--catalog", str(CATALOG),
            "--worker-id", worker_id, "--models", "demo-llama", "--drain-timeout", str(DRAIN_S), *extra]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def test_sigterm_releases_unfinished_requests_silently_and_exits_cleanly(nats_url, client, prompt_ids):
    """What does not finish within the drain timeout is left to the router to move: no error reaches the client."""
    worker = start_worker(nats_url, "w-proc")
    try:
        await client.state("w-proc", lambda s: s.ready, timeout=60)
        long = Sampling(max_tokens=100_000, temperature=0, ignore_eos=True)  # capped by the 4096-token window
        await client.assign("w-proc", "proc-1", "demo-llama", prompt_ids, long)
        await client.run_turn("w-proc", "demo-llama", ["proc-1"])
        await client.until(lambda: client.chunks("proc-1"), what="the first token")
        reports_before = len(client.states)
        worker.send_signal(signal.SIGTERM)
        not_ready = await client.state("w-proc", lambda s: not s.ready)
        status = await asyncio.to_thread(worker.wait, 30)
        await asyncio.sleep(0.3)
        last_report = [s for s in client.states[reports_before:] if s.worker_id == "w-proc"][-1]
    finally:
        if worker.poll() is None:
            worker.kill()
        output, _ = worker.communicate()

    assert status == 0, output
    assert not_ready.worker_id == "w-proc" and not last_report.ready and not last_report.running
    chunks = client.chunks("proc-1")
    assert all(c.error is None and c.finish_reason is None for c in chunks)
    assert token_indexes(chunks) == list(range(len(token_indexes(chunks)))), "a token lost or repeated"
    assert "Traceback" not in output


async def test_a_bad_flag_exits_with_a_message_naming_the_fix(nats_url):
    worker = start_worker(nats_url, "w.bad")
    output, _ = await asyncio.to_thread(worker.communicate, timeout=60)
    assert worker.returncode == 2
    assert "worker_id 'w.bad' must contain only letters, digits, - and _" in output
    assert "Traceback" not in output
