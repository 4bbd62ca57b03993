"""The autoscaler's planner in the simulator, as a user sees it: a burst on a cold model brings a
GPU, falling load drains the pool with every request served, GPU time adds up, bad flags say why."""

import json

import pytest

from services.autoscaler.decide import decide
from services.autoscaler.demand import gpu_share
from services.autoscaler.scaling_config import ScalingConfig
from services.autoscaler.tick import ModelInput, PlannerState, TickInput, WorkerInput
from services.cli.main import main
from services.sim.autoscale import AutoscaleConfig, GpuLedger, ModelFacts, binned, model_inputs
from services.sim.errors import SimError
from services.sim.run import SimConfig, simulate
from services.sim.workload import Arrival, Workload

QWEN = "qwen2.5-7b"  # 15.2 GB of weights


def workload(arrivals, models=("m0", "m1", "m2")) -> Workload:
    return Workload("test", tuple(sorted(arrivals, key=lambda a: a.time_s)), {m: QWEN for m in models})


def every(model, start, end, gap, output_tokens=100):
    t, out = start, []
    while t < end:
        out.append(Arrival(t, model, 200, output_tokens))
        t += gap
    return out


def config(scheduling="token", gpus=1, host_bytes=256 * 10**9, **scaling) -> SimConfig:
    """Short cool-downs, a tick every 2 s, workers up 10 s after they are asked for."""
    settings = {"cooldown_s": 20.0, "scale_up_cooldown_s": 10.0, "drain_grace_s": 15.0, "cold_after_s": 30.0} | scaling
    autoscale = AutoscaleConfig(ScalingConfig(**settings), tick_s=2.0, window_s=30.0, bucket_s=2.0, boot_s=10.0,
                                host_bytes=host_bytes)  # fmt: skip
    return SimConfig(gpus=gpus, scheduling=scheduling, drain_s=300, autoscale=autoscale)


def autoscaled(w, scheduling="token", gpus=1, **settings):
    return simulate(w, config(scheduling, gpus, **settings))


def assert_every_request_served_once(result):
    for r in result.records:
        assert r.finished and r.ends == ["done"] and r.error is None, r
        assert len(r.token_times) == r.arrival.output_tokens, r


@pytest.mark.parametrize("scheduling", ["token", "request"])
def test_a_burst_on_a_cold_model_gets_a_gpu_of_its_own_when_host_memory_is_full(scheduling):
    # Each worker's host memory holds two of the three 15.2 GB models: m0 and m1 are busy from
    # the start, so m2's burst at 60 s fits on no kept worker and the planner asks for one.
    steady = every("m0", 0.5, 180, 3.0) + every("m1", 0.7, 180, 3.0)
    burst = every("m2", 60.0, 120.0, 2.0, output_tokens=10)
    result = autoscaled(workload(steady + burst), scheduling, host_bytes=40 * 10**9)
    s = result.summary()
    assert_every_request_served_once(result)
    assert s["actions"]["ScaleUp"] == 1 and s["peak_gpus"] == 2
    asked_at = next(t for t, n in result.gpus_over_time if n == 2)
    assert 60.0 <= asked_at <= 62.0  # the first tick that saw the burst
    [added] = [w for w in result.workers if w.worker_id == "gpu001"]
    assert added.stats.busy_s > 0  # it came up (10 s later) and served
    assert s["attainment"] > 0.9


def test_falling_load_drains_the_pool_to_one_gpu_and_moves_requests_without_losing_any():
    # Long requests (6000 tokens, a minute or more each) on three GPUs, then a trickle:
    # the planner drains two workers; their requests finish or move after the drain grace.
    first = [Arrival(1.0 + 0.5 * i, f"m{i % 3}", 300, 6000) for i in range(9)]
    late = every("m0", 20.0, 200.0, 10.0, output_tokens=50)
    result = autoscaled(workload(first + late), "token", gpus=3)
    s = result.summary()
    assert_every_request_served_once(result)
    assert [n for _, n in result.gpus_over_time] == [3, 2, 1]
    assert s["actions"]["Release"] == 2 and s["gpus_at_end"] == 1
    assert s["moves"] >= 1  # some held a request past the grace: it resumed on a kept worker
    released_at = [t for t, _ in result.gpus_over_time[1:]]
    assert s["gpu_hours"] == pytest.approx((sum(released_at) + result.simulated_s) / 3600, abs=1e-3)


@pytest.mark.parametrize("host_gb, drains", [(40, False), (50, True)])
def test_the_planner_drains_a_worker_only_when_the_active_models_leave_host_memory_to_spare(host_gb, drains):
    # Two active 15.2 GB models, demand for a fraction of one GPU, two workers. Without one of
    # them, 30.5 GB of weights would fill 40 GB of host memory past low_water (0.7): the next
    # model to wake up would bring a worker straight back (the ServeGen day flapped so, hourly).
    models = tuple(ModelInput(m, 15_231_233_024, arrivals=2, tokens=200) for m in ("m0", "m1"))
    workers = tuple(WorkerInput(w, True, ("m0", "m1", "m2"), host_gb * 10**9, 80 * 10**9) for w in ("w0", "w1"))
    state, seen = PlannerState(), []
    for now in range(0, 100, 5):
        actions, state = decide(TickInput(float(now), 60.0, models, workers), state, ScalingConfig())
        seen += [type(a).__name__ for a in actions]
    assert ("Drain" in seen) == drains and "ScaleUp" not in seen


def test_gpu_seconds_count_each_worker_from_asked_for_to_released():
    ledger = GpuLedger()
    ledger.ask("a", 0.0)
    ledger.ask("b", 10.0)
    ledger.release("b", 40.0)
    ledger.ask("c", 40.0)
    assert ledger.gpu_seconds(100.0) == 100 + 30 + 60
    assert ledger.series == [(0.0, 1), (10.0, 2), (40.0, 2)] and ledger.peak() == 2
    assert binned(ledger.series, 100.0, 50.0) == {"bin_s": 50.0, "mean": [1.8, 2.0], "peak": [2, 2]}
    with pytest.raises(SimError, match="released but never asked for"):
        ledger.release("b", 50.0)


def test_a_pool_the_planner_may_not_change_costs_its_size_times_the_run():
    w = workload(every("m0", 0.5, 60, 2.0))
    result = autoscaled(w, "request", gpus=2, min_workers=2, max_workers=2)
    assert result.gpus_over_time == [(0.0, 2)]
    assert result.summary()["gpu_hours"] == pytest.approx(2 * result.simulated_s / 3600, abs=1e-3)


def test_request_level_share_is_the_gpu_time_its_turns_took():
    facts = {"m0": ModelFacts(15 * 10**9, step_s=0.01, token_s=1e-4, switch_s=0.3)}
    counts = {"m0": (6, 600)}
    [token] = model_inputs("token", facts, counts, {}, {"m0": 12.0}, 60.0, 0.1)
    [request] = model_inputs("request", facts, counts, {}, {"m0": 12.0}, 60.0, 0.1)
    assert gpu_share(token, 60.0) == pytest.approx(1.0 * 0.01 / 0.1 + 10 * 1e-4)  # a step per TBT while busy
    assert gpu_share(request, 60.0) == pytest.approx(12.0 / 60.0)  # its turns' share of the window


def test_skipping_idle_stretches_changes_nothing_but_the_events_simulated():
    w = workload(every("m0", 1.0, 20.0, 2.0) + every("m0", 400.0, 420.0, 1.0) + every("m0", 3000.0, 3010.0, 5.0), ("m0",))
    plain, skipping = (simulate(w, SimConfig(scheduling="request", skip_idle=skip)) for skip in (False, True))
    keys = ("attainment", "strict_attainment", "ttft_p99_s", "tbt_p99_s", "completed", "switches")
    assert [plain.summary()[k] for k in keys] == [skipping.summary()[k] for k in keys]
    assert [r.token_times for r in plain.records] == [r.token_times for r in skipping.records]
    assert skipping.events < plain.events / 10


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_autoscale_reports_gpu_hours_per_policy_and_draws_them_over_time(capsys, tmp_path):
    args = ["plan", "--workload", "synthetic", "--models", "4", "--duration", "120", "--rate", "1",
            "--autoscale", "--scaling", "cooldown_s=20", "--boot-delay", "10", "--drain", "60", "--json",
            "--plot", str(tmp_path / "gpus.png")]  # fmt: skip
    code, out, err = run(capsys, *args)
    assert code == 0, err
    report = json.loads(out)
    policies = report["policies"]
    assert set(policies) == {"dedicated", "request", "token"}
    for name, p in policies.items():
        assert p["gpu_hours"] > 0 and 0 <= p["attainment"] <= 1 and p["target_met"] == (p["attainment"] >= 0.9), name
    assert policies["dedicated"]["gpu_hours"] == pytest.approx(policies["dedicated"]["gpus"] * report["hours"], abs=0.01)
    assert policies["token"]["peak_gpus"] >= 1 and policies["token"]["gpus_over_time"]["bin_s"] == 600.0
    ratio = report["ratios"]["token_vs_dedicated_gpu_hours"]
    assert ratio == pytest.approx(policies["token"]["gpu_hours"] / policies["dedicated"]["gpu_hours"], rel=1e-3)
    assert report["missed_target"] == [n for n, p in policies.items() if not p["target_met"]]
    assert (tmp_path / "gpus.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "args, message",
    [
        (["sim", "--policy", "dedicated", "--autoscale"], "dedicated serving keeps one GPU per model"),
        (["plan", "--policies", "dedicated", "--autoscale"], "--policies has neither"),
        (["sim", "--autoscale", "--scaling", "fill=2"], "fill=2.0: must be in (0, 1]"),
        (["sim", "--autoscale", "--scaling", "speed=3"], "no setting 'speed'"),
        (["plan", "--autoscale", "--scaling", "fill"], "write NAME=VALUE"),
        (["sim", "--scaling", "fill=0.5"], "add --autoscale"),
        (["sim", "--autoscale", "--compare"], "leave out --compare"),
        (["sim", "--autoscale", "--prefill-gpus", "1", "--gpus", "2"], "no prefill-only GPUs"),
    ],
)
def test_bad_autoscale_flags_say_what_is_wrong(capsys, args, message):
    code, out, err = run(capsys, *args, "--workload", "synthetic", "--duration", "5")
    assert code == 2 and out == ""
    assert message in err
