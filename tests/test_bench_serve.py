"""Smoke test of `tokenpool bench serve`: its own stack comes up, serves, reports every section, goes away.

No timing thresholds here: the overhead target lives in the benchmark's own output.
"""

import json
import os
import signal
import subprocess
import time
import urllib.request
from subprocess import PIPE

import pytest

from tests.cli_processes import TOKENPOOL, processes_mentioning


def test_bench_serve_json_has_every_section_with_positive_numbers(model_store, tmp_path):
    out = tmp_path / "serve.json"
    # The stack's folder (in every child's command line) lands under tmp_path.
    env = {**os.environ, "TOKENPOOL_MODEL_STORE": str(model_store.root), "TMPDIR": str(tmp_path)}
    args = ["bench", "serve", "--json", "--streams", "4", "--tokens", "8", "--duration-s", "3", "--out", str(out)]
    process = subprocess.Popen([str(TOKENPOOL), *args], env=env, stdout=PIPE, stderr=PIPE, text=True)
    stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == 0, stderr
    report = json.loads(stdout)
    assert json.loads(out.read_text()) == report
    assert report["config"]["streams"] == 4 and report["config"]["engine"] == "echo"

    stack = report["stack"]
    assert stack["requests"] >= 4 and stack["completed"] == stack["requests"] and stack["errors"] == 0
    assert stack["tokens"] == 8 * stack["completed"] and stack["tokens_per_s"] > 0
    assert stack["ttft_ms"]["p50"] > 0 and stack["ttft_ms"]["p99"] >= stack["ttft_ms"]["p50"]
    assert stack["request_per_token_ms"]["p50"] > 0 and stack["tpot_ms"]["p50"] >= 0
    assert stack["tbt_ms"]["tokens_per_chunk"] >= 1
    assert {"gateway", "router", "worker", "nats-server"} <= set(stack["cpu_ms_per_token"])
    assert stack["stack_cpu_over_load_generator"] > 0

    alone = report["engine_alone"]
    assert alone["sequences"] == 4 and alone["tokens_per_s"] > 0
    assert alone["per_token_ms"]["p50"] > 0 and alone["request_per_token_ms"]["p50"] > 0

    for key in ("bus_overhead_per_token_ms_p50", "added_latency_per_token_ms_p50", "chunk_tbt_minus_engine_ms_p50"):
        assert key in report
    assert isinstance(report["target_met"], bool) and report["target"]["conditions_match"] is False
    assert "engine_alone.per_token_ms.p50" in report["method"]
    assert processes_mentioning(str(tmp_path)) == []  # nothing it started outlives it


@pytest.mark.parametrize("args, message", [
    (["--tokens", "1"], "at least 2 tokens"),
    (["--turn-linger-s", "-0.1"], "--turn-linger-s -0.1: use 0 to 1 seconds"),
])
def test_bench_serve_rejects_bad_settings_naming_them(args, message):
    result = subprocess.run([str(TOKENPOOL), "bench", "serve", *args], capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert args[0] in result.stderr and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_during_the_load_stops_every_process_it_started(model_store, tmp_path, signum):
    env = {**os.environ, "TOKENPOOL_MODEL_STORE": str(model_store.root), "TMPDIR": str(tmp_path)}
    args = ["bench", "serve", "--streams", "4", "--tokens", "8", "--duration-s", "120", "--engine-duration-s", "0.5"]
    process = subprocess.Popen([str(TOKENPOOL), *args], env=env, stdout=PIPE, stderr=PIPE, text=True)
    try:
        base_url = _stack_url(process)
        assert processes_mentioning(str(tmp_path)), "the stack should be running now"
        _wait_for_tokens(base_url)  # the load runs: the signal lands in its event loop
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()

    assert process.returncode == 130, stderr
    assert "every process this benchmark started was stopped" in stderr and "Traceback" not in stderr
    assert processes_mentioning(str(tmp_path)) == []


def _stack_url(process: subprocess.Popen) -> str:
    """The gateway's address, from the benchmark's "stack healthy at URL; ..." line."""
    for line in process.stderr:
        if "stack healthy at " in line:
            return line.split("stack healthy at ", 1)[1].split(";", 1)[0]
    raise AssertionError("the benchmark ended before its stack was healthy")


def _wait_for_tokens(base_url: str, timeout_s: float = 60.0) -> None:
    """Until the gateway has delivered output tokens (its /metrics counts them)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(base_url + "/metrics", timeout=5) as response:
            lines = response.read().decode().splitlines()
        if sum(float(line.split()[-1]) for line in lines if line.startswith("tokenpool_gateway_tokens_out_total")):
            return
        time.sleep(0.1)
    raise AssertionError(f"no tokens delivered within {timeout_s} s")
