"""The simulator predicts the real stack: the same seeded load through `tokenpool up`'s services
and through the simulator with the engine cost profile, attainment within 5 points.

One real run per policy (bench sched's stack: router, one gpu_worker serving our four models with
one engine thread, gateway; 40 s of Poisson arrivals at 1.6 requests/s), ~100 s in all. The rate
stays below request-level's knee: at 2 requests/s its queue grows for the whole run, and identical
runs of the real stack measured 0.76, 0.83 and 0.89 (40 s each), a spread no simulator can meet;
at 1.6 three runs measured 0.957-0.974 and the calibrated simulation was within 1.3 points. On this shared 2-core host
the load of other processes slows the engine's steps by 1.1-1.5x against the committed profile,
and differently from run to run, so the simulation that is held to 5 points scales each model's
step times by what the run's own TurnReports show (cost_validate.step_ratios); the profile as
measured is reported beside it (bench/results/validation-*.json) and must still be this engine's
cost within a factor of 2.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.cli_processes import processes_mentioning


ROOT = Path(__file__).resolve().parents[2]
PROFILE = sorted((ROOT / "bench/results").glob("engine-cost-cpu-*.json"))[-1]


def test_simulated_attainment_is_within_5_points_of_the_real_stacks(model_store, tmp_path):
    env = {**os.environ, "TOKENPOOL_MODEL_STORE": str(model_store.root), "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-m", "services.sim.cost_validate", "--profile", str(PROFILE), "--duration-s", "40", "--rate", "1.6"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)

    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(report["policies"]) == {"token", "request"}
    for name, policy in report["policies"].items():
        real, sim = policy["real"], policy["sim_calibrated"]
        assert real["completed"] == real["requests"] == sim["completed"] > 30, name
        assert abs(sim["attainment"] - real["mean_attainment"]) <= 0.05, (name, policy)
        for model, ratios in policy["step_ratios"].items():
            assert 0.5 <= ratios["decode"] <= 2.0, (name, model, ratios)
    assert processes_mentioning(str(tmp_path)) == []  # the stack it started is gone
