"""Dedicated serving, capacity planning (`tokenpool plan`) and the plots, as a user sees them."""

import json

import pytest

from services.cli.main import main
from services.sim.dedicated import allocate
from services.sim.errors import SimError
from services.sim.plan import plan
from services.sim.run import SimConfig, simulate
from services.sim.sweep import market_sizes, sub_market
from services.sim.workload import Arrival, Workload

ARCHS = {"m0": "qwen2.5-7b", "m1": "yi-1.5-9b", "m2": "llama-2-13b", "m3": "qwen2.5-7b"}


def market(rate_per_model=(0.3, 0.1, 0.1, 0.05), seconds=60.0) -> Workload:
    """Evenly spaced requests, 500 prompt and 200 output tokens each, m0 the hottest."""
    arrivals = []
    for i, rate in enumerate(rate_per_model):
        t = 0.5 + 0.1 * i
        while t < seconds:
            arrivals.append(Arrival(t, f"m{i}", 500, 200))
            t += 1 / rate
    arrivals.sort(key=lambda a: a.time_s)
    return Workload("market", tuple(arrivals), {f"m{i}": ARCHS[f"m{i}"] for i in range(len(rate_per_model))})


def test_dedicated_gives_each_model_its_own_gpu_that_never_switches():
    result = simulate(market(), SimConfig(gpus=4, scheduling="dedicated"))
    s = result.summary()
    assert (s["policy"], s["gpus"], s["completed"], s["rejected"]) == ("dedicated", 4, s["requests"], 0)
    assert s["switches"] == 4  # each GPU loads its model once
    assert s["attainment"] > 0.99


def test_dedicated_with_fewer_gpus_than_models_rejects_the_requests_of_the_coldest():
    w = market()
    s = simulate(w, SimConfig(gpus=2, scheduling="dedicated")).summary()
    cold = sum(a.model in ("m2", "m3") for a in w.arrivals)  # m1 and m2 tie on rate; m1 is first
    assert allocate(w, 2) == {"m0": 1, "m1": 1}
    assert (s["rejected"], s["completed"]) == (cold, s["requests"] - cold)
    assert s["attainment"] == pytest.approx((s["requests"] - cold) / s["requests"], abs=0.01)


def test_dedicated_gpus_beyond_one_per_model_go_to_the_hottest():
    assert allocate(market(), 6) == {"m0": 3, "m1": 1, "m2": 1, "m3": 1}


def test_plan_finds_a_pool_that_reaches_the_target_and_one_gpu_fewer_that_misses_it():
    w = market(rate_per_model=(0.4, 0.4, 0.4, 0.4), seconds=90.0)
    plans = plan(w, 0.9, SimConfig(drain_s=120))
    for name in ("token", "request"):
        p = plans[name]
        assert p.attainment >= 0.9 and p.probes[p.gpus] == p.attainment
        if p.gpus > 1:
            assert p.probes[p.gpus - 1] < 0.9, name
    assert plans["dedicated"].gpus >= 4 and plans["dedicated"].attainment >= 0.9
    assert plans["token"].gpus <= plans["request"].gpus <= plans["dedicated"].gpus
    assert plans["token"].models_per_gpu == 4 / plans["token"].gpus


def test_bad_targets_and_policies_are_refused():
    with pytest.raises(SimError, match="target attainment"):
        plan(market(), 1.5)
    with pytest.raises(SimError, match="policy 'fifo'"):
        plan(market(), 0.9, policies=("fifo",))


def test_sub_markets_take_the_first_models_in_name_order():
    w = market()
    assert sub_market(w, 2).models == ["m0", "m1"]
    assert all(a.model in ("m0", "m1") for a in sub_market(w, 2).arrivals)
    assert market_sizes(80, 4) == [20, 40, 60, 80] and market_sizes(3, 6) == [1, 2, 3]


# ---- the command line -------------------------------------------------------------------


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


SYNTHETIC = ("--workload", "synthetic", "--synthetic-models", "6", "--duration", "60", "--seed", "3")


def test_plan_json_has_every_policy_with_gpus_models_per_gpu_and_attainment(capsys):
    code, out, _ = run(capsys, "plan", *SYNTHETIC, "--target", "0.9", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["target"] == 0.9 and report["models"] == 6
    assert set(report["policies"]) == {"dedicated", "request", "token"}
    for p in report["policies"].values():
        assert p["gpus"] >= 1 and p["attainment"] >= 0.9
        assert p["models_per_gpu"] == pytest.approx(6 / p["gpus"], abs=1e-3)
    token, request = report["policies"]["token"], report["policies"]["request"]
    assert report["ratios"]["token_vs_request_models_per_gpu"] == pytest.approx(
        token["models_per_gpu"] / request["models_per_gpu"], abs=1e-3
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (("--target", "1.5"), "fraction in (0, 1]"),
        (("--target", "x"), "not a number"),
        (("--policies", "token,fifo"), "unknown policy fifo"),
    ],
)
def test_plan_bad_flags_name_the_problem(capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(["plan", *SYNTHETIC, *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_plan_draws_the_gpus_each_policy_needs(capsys, tmp_path):
    png = tmp_path / "gpus.png"
    code, _, _ = run(capsys, "plan", *SYNTHETIC, "--policies", "token,request", "--plot", str(png), "--json")
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_sim_draws_attainment_against_models_and_refuses_a_missing_folder(capsys, tmp_path):
    png = tmp_path / "attainment.png"
    code, out, _ = run(capsys, "sim", *SYNTHETIC, "--gpus", "1", "--compare", "--plot", str(png), "--plot-points", "3", "--json")
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"
    result = json.loads(out)
    assert set(result) >= {"token", "request", "dedicated", "ratios", "ratios_vs_dedicated"}
    assert result["dedicated"]["rejected"] > 0  # one GPU serves one of the six models
    code, _, err = run(capsys, "sim", *SYNTHETIC, "--plot", str(tmp_path / "nowhere" / "a.png"))
    assert code == 2 and "does not exist" in err


def test_dedicated_keeps_a_gpu_for_a_model_nobody_called():
    w = market()
    idle = Workload("idle", w.arrivals, {**w.architectures, "m9": "qwen2.5-7b"})
    plans = plan(idle, 0.9, SimConfig(drain_s=120), policies=("dedicated",))
    assert plans["dedicated"].gpus == 5 and plans["dedicated"].attainment > 0.99


def test_an_engine_profile_prices_a_paper_market_with_our_own_models(capsys):
    """The paper's synth models deal over the models an engine profile measured."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    csv = root / "../shared/data/aegaeon/workloads/synth-8-0.1-1.0-1.0.csv"
    profile = f"engine:{root / 'bench/results/engine-cost-cpu-2026-11-21.json'}"
    code, out, _ = run(capsys, "sim", "--workload", str(csv), "--gpu-profile", profile, "--ttft", "1.5", "--tbt", "0.3", "--rate-scale", "0.2", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["gpu_profile"] == "engine:cpu" and summary["completed"] == summary["requests"] == 81
    code, _, err = run(capsys, "sim", "--workload", str(csv), "--gpu-profile", "engine:/nowhere.json")
    assert code == 2 and "nowhere.json" in err
