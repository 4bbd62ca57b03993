"""`python -m services.autoscaler` refuses bad settings at start, naming the problem (exit 2)."""

import pytest

from services.autoscaler.__main__ import main
from services.autoscaler.scaling_args import scaling_config


@pytest.mark.parametrize("argv, message", [
    (["--scaling", "cooldown_s"], "write NAME=VALUE"),
    (["--scaling", "cooldwn_s=3"], "no setting 'cooldwn_s'"),
    (["--scaling", "max_workers=two"], "max_workers takes an integer"),
    (["--scaling", "fill=1.5"], "fill=1.5: must be in (0, 1]"),
    (["--scaling", "min_workers=3", "--scaling", "max_workers=2"], "max_workers=2: must be >= min_workers (3)"),
    (["--initial-workers", "2"], "need --connector local or compose"),
    (["--connector", "compose"], "--connector compose needs --compose-file"),
    (["--window", "0"], "window_s=0.0 must be > 0"),
    (["--initial-workers", "-1", "--connector", "local"], "initial_workers=-1 must be >= 0"),
])
def test_bad_settings_stop_the_autoscaler_at_start_with_the_reason(argv, message, capsys, tmp_path):
    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[[models]]\nname = "m"\npath = "m"\n')
    assert main(["--catalog", str(catalog), "--nats", "nats://127.0.0.1:1", *argv]) == 2
    assert message in capsys.readouterr().err


def test_scaling_flags_set_the_planner():
    config = scaling_config(["cooldown_s=5", "max-workers=4", " fill = 0.5"])
    assert (config.cooldown_s, config.max_workers, config.fill) == (5.0, 4, 0.5)
