"""`python -m services.gateway` as a process: it serves, stops cleanly on SIGTERM, and refuses bad flags."""

import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from shared.nats_server import free_port


def run(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "services.gateway", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-inflight", "0"], "max_inflight must be at least 1"),
        (["--nats", " "], "nats URL is empty"),
        (["--stall-timeout-s", "-1"], "stall_timeout_s must be a positive number"),
        (["--catalog", "/nonexistent/catalog.toml"], "catalog /nonexistent/catalog.toml does not exist"),
    ],
)
def test_bad_settings_exit_2_with_one_clear_line(args, message):
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_serves_then_stops_on_sigterm(nats_server, catalog_path, model_store):
    port = free_port()
    cmd = [sys.executable, "-m", "services.gateway", "--nats", nats_server.url, "--catalog", str(catalog_path),
           "--model-store", str(model_store.root), "--port", str(port)]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        models = None
        deadline = time.monotonic() + 30
        while models is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1) as r:
                    models = json.loads(r.read())
            except OSError:
                time.sleep(0.1)
        assert models is not None and len(models["data"]) == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
    output = process.stdout.read()
    assert "gateway stopped" in output and "Traceback" not in output
