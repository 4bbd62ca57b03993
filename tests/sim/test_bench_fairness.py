"""`tokenpool bench fairness`: one tenant's burst in the paper's synth-24 market, simulated with the
router's tenant fairness and with plain FCFS (services/cli/bench_fairness.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli.bench_fairness import BURST_TENANT, with_burst
from services.cli.bench_market import PAPER_WORKLOADS
from services.sim.errors import SimError
from services.sim.workload import load_csv

TOKENPOOL = Path(sys.executable).parent / "tokenpool"


def bench(*args, timeout=300):
    return subprocess.run([str(TOKENPOOL), "bench", "fairness", *args], capture_output=True, text=True, timeout=timeout)


def test_the_burst_joins_the_market_from_its_own_tenant():
    market = load_csv(PAPER_WORKLOADS / "synth-24-0.1-1.0-1.0.csv")
    workload = with_burst(market, tenants=5, burst=30, burst_at=12.0, burst_models=3, seed=1)
    burst = [a for a in workload.arrivals if a.tenant == BURST_TENANT]
    assert len(workload.arrivals) == len(market.arrivals) + 30 and len(burst) == 30
    assert {a.model for a in burst} == set(sorted(market.models)[:3])
    assert all(12.0 <= a.time_s < 12.01 for a in burst)
    assert {a.tenant for a in workload.arrivals} - {BURST_TENANT} <= {f"t{i}" for i in range(5)}
    with pytest.raises(SimError, match="--tenants"):
        with_burst(market, tenants=0, burst=1, burst_at=0.0, burst_models=1, seed=0)


def test_fairness_keeps_the_market_served_through_a_burst_and_the_burst_pays():
    result = bench("--burst", "200", "--max-tenant-share", "0.25", "--json")

    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    for side in ("fair", "fcfs", "preempt", "scattered"):
        assert r[side]["all"]["completed"] == r[side]["all"]["requests"] == 637 - 200, "every request served"
    assert r["market_alone"]["attainment"] >= 0.95, "the pool fits the market alone"
    fair, fcfs = r["fair"], r["fcfs"]
    assert fair["market"]["attainment"] > 1.5 * fcfs["market"]["attainment"]
    assert fair["market"]["ttft_p50_s"] < fcfs["market"]["ttft_p50_s"] / 3
    assert fair["burst"]["attainment"] < fcfs["burst"]["attainment"], "the burst waits its turn instead"
    assert fair["market_before_burst"]["requests"] == fcfs["market_before_burst"]["requests"] > 0
    assert r["capped"]["market"]["attainment"] > fair["market"]["attainment"], "a cap keeps more room for the others"
    # Freed slots that open a model on every worker leave rounds that keep no one's TBT.
    assert fair["market"]["attainment"] > 1.2 * r["scattered"]["market"]["attainment"]


@pytest.mark.parametrize("flags, says", [
    (["--burst-models", "0"], "--burst-models must be >= 1"),
    (["--max-tenant-share", "1.5"], "max_tenant_share must be in (0, 1], got 1.5"),
    (["--max-round-load", "0"], "max_round_load must be > 0"),
])
def test_a_bad_flag_gets_a_one_line_error(flags, says):
    result = bench(*flags, timeout=60)
    assert result.returncode == 1
    assert says in result.stderr and "Traceback" not in result.stderr
