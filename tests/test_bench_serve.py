"""Smoke test of `tokenpool bench serve`: its own stack comes up, serves, reports every section, goes away.

No timing thresholds here: the overhead target lives in the benchmark's own output.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

TOKENPOOL = Path(sys.executable).parent / "tokenpool"


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in argv:
            found.append(argv)
    return found


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

    alone = report["engine_alone"]
    assert alone["sequences"] == 4 and alone["tokens_per_s"] > 0
    assert alone["per_token_ms"]["p50"] > 0 and alone["request_per_token_ms"]["p50"] > 0

    for key in ("bus_overhead_per_token_ms_p50", "added_latency_per_token_ms_p50", "chunk_tbt_minus_engine_ms_p50"):
        assert key in report
    assert isinstance(report["target_met"], bool) and report["target"]["conditions_match"] is False
    assert "engine_alone.per_token_ms.p50" in report["method"]
    assert _processes_mentioning(str(tmp_path)) == []  # nothing it started outlives it


def test_bench_serve_rejects_a_single_token():
    result = subprocess.run(
        [str(TOKENPOOL), "bench", "serve", "--tokens", "1"], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2
    assert "--tokens 1" in result.stderr and "at least 2 tokens" in result.stderr and "Traceback" not in result.stderr


def test_ctrl_c_during_the_load_stops_every_process_it_started(model_store, tmp_path):
    env = {**os.environ, "TOKENPOOL_MODEL_STORE": str(model_store.root), "TMPDIR": str(tmp_path)}
    args = ["bench", "serve", "--streams", "4", "--tokens", "8", "--duration-s", "60", "--engine-duration-s", "0.5"]
    process = subprocess.Popen([str(TOKENPOOL), *args], env=env, stdout=PIPE, stderr=PIPE, text=True)
    try:
        for line in process.stderr:
            if "stack healthy" in line:
                break
        assert _processes_mentioning(str(tmp_path)), "the stack should be running now"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()

    assert process.returncode == 130
    assert "every process this benchmark started was stopped" in stderr and "Traceback" not in stderr
    assert _processes_mentioning(str(tmp_path)) == []
