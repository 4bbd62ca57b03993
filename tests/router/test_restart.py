"""A router killed with SIGKILL mid-request loses nothing: its successor gets every unacked
request again, adopts the one a worker is still running, and takes the one sent meanwhile."""

import os
import signal
import subprocess
import sys

from shared import bus, subjects
from shared.protocol import RouterState, decode

from .fake_worker import Client, FakeWorker, eventually, make_request
from .test_service import eventually_drained, run


def start_router(url, catalog_path, log_path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "services.router", "--nats", url, "--catalog", str(catalog_path)]
    argv += ["--ack-wait", "3", "--worker-timeout", "1.5", "--startup-wait", "0.5", "--log-level", "DEBUG"]
    env = os.environ | {"PYTHONUNBUFFERED": "1", "TOKENPOOL_MODEL_STORE": str(catalog_path.parent)}
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)


def test_killed_router_loses_no_accepted_request(nats_server, catalog_path, tmp_path):
    log_path = tmp_path / "router.log"

    async def scenario():
        nc = await bus.connect(nats_server.url, "test")
        states: list[RouterState] = []

        async def on_state(msg):
            states.append(decode(msg.data, RouterState))

        await nc.subscribe(subjects.ROUTER_STATE, cb=on_state)
        await bus.ensure_request_stream(nc)  # as the gateway does, so requests are accepted with no router up
        first = start_router(nats_server.url, catalog_path, log_path)
        second = None
        try:
            async with FakeWorker(nc, "w1", ("m1",)) as w1:
                client = Client(nc)
                await client.submit(make_request("running", "m1"))
                await eventually(lambda: "running" in w1.holding, 20, "the first router's assignment")
                await w1.emit("running", 2)
                first.send_signal(signal.SIGKILL)
                first.wait(10)

                await client.submit(make_request("sent-while-down", "m1"))
                states.clear()
                second = start_router(nats_server.url, catalog_path, log_path)
                await eventually(lambda: "sent-while-down" in w1.holding, 20, "the new router's assignment")
                # once JetStream redelivers the unacked request, the new router adopts it from w1's reports
                await eventually(lambda: states and states[-1].models[0].running == 2, 20, "adoption")
                assert [a.request.id for a in w1.assigns].count("running") == 1  # not run twice

                await w1.emit("running", 1, finish="stop")
                await w1.emit("sent-while-down", 1, finish="stop")
                await eventually(lambda: client.finished("running") and client.finished("sent-while-down"))
                assert [t for c in client.chunks["running"] for t in c.token_ids] == [0, 1, 2]
                await eventually_drained(nc)

            second.send_signal(signal.SIGTERM)
            assert second.wait(10) == 0
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
            await nc.close()

    try:
        run(scenario(), timeout_s=60)
    except BaseException:
        print(log_path.read_text(errors="replace")[-6000:])
        raise
