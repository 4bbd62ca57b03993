"""`python -m services.router` settings: the attainment window it reports to the autoscaler, tenant rules, the round-load limit."""

from services.router.__main__ import build_config, build_parser, main


def test_the_attainment_window_flag_reaches_the_policy():
    args = build_parser().parse_args(["--nats", "nats://x:1", "--attainment-window", "30"])
    assert build_config(args).policy.attainment_window_s == 30.0


def test_the_tenant_flags_reach_the_policy():
    plain = build_config(build_parser().parse_args(["--nats", "nats://x:1"])).policy
    assert (plain.tenant_fairness, plain.tenant_preemption, plain.max_tenant_share) == (True, False, 1.0)
    args = ["--nats", "nats://x:1", "--tenant-preemption", "--max-tenant-share", "0.5"]
    policy = build_config(build_parser().parse_args(args)).policy
    assert (policy.tenant_preemption, policy.max_tenant_share) == (True, 0.5)
    assert not build_config(build_parser().parse_args(["--nats", "nats://x:1", "--no-tenant-fairness"])).policy.tenant_fairness


def test_a_window_that_is_not_positive_stops_the_router_naming_it(capsys, tmp_path):
    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[[models]]\nname = "m"\npath = "m"\n')
    assert main(["--nats", "nats://127.0.0.1:1", "--catalog", str(catalog), "--attainment-window", "0"]) == 2
    assert "attainment_window_s must be > 0" in capsys.readouterr().err


def test_the_round_load_flag_reaches_the_policy_and_a_bad_one_stops_the_router(capsys, tmp_path):
    args = build_parser().parse_args(["--nats", "nats://x:1", "--max-round-load", "inf"])
    assert build_config(args).policy.max_round_load == float("inf")  # no limit: the router before it
    assert build_config(build_parser().parse_args(["--nats", "nats://x:1"])).policy.max_round_load == 0.6
    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[[models]]\nname = "m"\npath = "m"\n')
    assert main(["--nats", "nats://127.0.0.1:1", "--catalog", str(catalog), "--max-round-load", "-1"]) == 2
    assert "max_round_load must be > 0" in capsys.readouterr().err


def test_the_prefix_routing_flags_reach_the_policy_and_a_bad_slack_stops_the_router(capsys, tmp_path):
    default = build_config(build_parser().parse_args(["--nats", "nats://x:1"])).policy
    assert (default.prefix_routing, default.prefix_load_slack) == (True, 0.25)
    args = build_parser().parse_args(["--nats", "nats://x:1", "--no-prefix-routing", "--prefix-load-slack", "0.5"])
    assert (build_config(args).policy.prefix_routing, build_config(args).policy.prefix_load_slack) == (False, 0.5)
    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[[models]]\nname = "m"\npath = "m"\n')
    assert main(["--nats", "nats://127.0.0.1:1", "--catalog", str(catalog), "--prefix-load-slack", "2"]) == 2
    assert "prefix_load_slack must be in [0, 1]" in capsys.readouterr().err
