"""`tokenpool bench sched`: both policies serve the same workload from one run, and bad flags say what is wrong.

The echo engine keeps it to seconds; no timing thresholds (the comparison lives in the
benchmark's own output).
"""

import json
import os
import subprocess

import pytest

from services.cli.bench_sched_workload import poisson_arrivals, popularity
from tests.cli_processes import TOKENPOOL, processes_mentioning

MODELS = ("smollm2-135m-instruct", "demo-llama", "demo-qwen2", "demo-mistral")


def test_both_policies_serve_every_request_of_the_same_workload(model_store, tmp_path):
    out = tmp_path / "results" / "sched.json"
    env = {**os.environ, "TOKENPOOL_MODEL_STORE": str(model_store.root), "TMPDIR": str(tmp_path)}
    args = ["bench", "sched", "--engine", "echo", "--duration-s", "1", "--rate", "8", "--tokens", "4",
            "--drain-s", "30", "--json", "--out", str(out)]
    result = subprocess.run([str(TOKENPOOL), *args], env=env, capture_output=True, text=True, timeout=180)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert json.loads(out.read_text()) == report
    config = report["config"]
    assert config["models"] == list(MODELS) and config["engine"] == "echo" and config["workers"] == 1
    assert config["requests"] >= 1 and sum(config["requests_by_model"].values()) == config["requests"]
    assert set(report["policies"]) == {"token", "request"}
    for name, policy in report["policies"].items():
        assert policy["scheduling"] == name
        assert policy["requests"] == policy["completed"] == config["requests"], policy["errors_by_kind"]
        assert policy["errors_by_kind"] == {}
        assert policy["tokens"] == 4 * config["requests"]
        assert 0 <= policy["mean_attainment"] <= 1 and 0 <= policy["strict_attainment"] <= 1
        assert policy["ttft_ms"]["p99"] >= policy["ttft_ms"]["p50"] > 0
        served = {m: v["completed"] for m, v in policy["by_model"].items()}
        assert served == {m: n for m, n in config["requests_by_model"].items() if n}
        assert policy["router"]["turns"] >= 1  # read from the router's /metrics
        assert policy["turns"]["turns"] >= 1  # watched on the bus
    ratios = {"mean_attainment", "strict_attainment", "ttft_p50", "ttft_p99", "tbt_p50", "tbt_p99"}
    assert set(report["ratios"]) == ratios
    assert set(report["token_beats_request"]) == {"mean_attainment", "strict_attainment"}
    assert "attainment" in report["method"]
    assert processes_mentioning(str(tmp_path)) == []  # nothing it started outlives it


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--models", "demo-llama"], "at least two models"),
        (["--models", "demo-llama,demo-llama"], "listed twice"),
        (["--tokens", "1"], "--tokens 1"),
        (["--tbt", "0"], "--tbt 0.0"),
        (["--ttft", "-1"], "--ttft -1.0"),
        (["--rate", "0"], "--rate 0.0"),
        (["--echo-step-s", "0.01"], "only goes with --engine echo"),
        (["--rate", "0.01", "--duration-s", "10"], "less than one request"),
    ],
)
def test_bad_flags_get_a_one_line_error(flags, says):
    result = subprocess.run([str(TOKENPOOL), "bench", "sched", *flags], capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert says in result.stderr and "Traceback" not in result.stderr


def test_a_model_missing_from_the_store_is_named(model_store):
    env = {**os.environ, "TOKENPOOL_MODEL_STORE": str(model_store.root)}
    result = subprocess.run([str(TOKENPOOL), "bench", "sched", "--models", "demo-llama,no-such-model"],
                            env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert "no-such-model" in result.stderr and "Traceback" not in result.stderr


def test_the_workload_is_the_same_for_the_same_seed_and_follows_the_popularity():
    weights = popularity(MODELS, "zipf")
    first = poisson_arrivals(MODELS, weights, rate_per_s=20, duration_s=50, seed=7)

    assert first == poisson_arrivals(MODELS, weights, rate_per_s=20, duration_s=50, seed=7)
    assert first != poisson_arrivals(MODELS, weights, rate_per_s=20, duration_s=50, seed=8)
    assert all(a.at_s < b.at_s for a, b in zip(first, first[1:])) and first[-1].at_s < 50
    counts = [sum(a.model == m for a in first) for m in MODELS]
    assert counts == sorted(counts, reverse=True)  # zipf: the first model the most popular
    assert 800 <= len(first) <= 1200  # ~20/s over 50 s
    assert popularity(MODELS, "uniform") == (0.25,) * 4
