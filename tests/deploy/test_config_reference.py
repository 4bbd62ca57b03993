"""The README's configuration reference lists exactly the variables shared/env.py declares."""

import re

from shared import env

from .compose_file import REPO


def _reference_table() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def test_every_declared_variable_is_in_the_reference_and_nothing_else():
    declared = {v for k, v in vars(env).items() if k.isupper() and isinstance(v, str) and v.startswith("TOKENPOOL_")}
    listed = set(re.findall(r"`(TOKENPOOL_[A-Z0-9_]+)`", _reference_table()))
    assert sorted(declared - listed) == [], "declared in shared/env.py but missing from the README's reference"
    assert sorted(listed - declared) == [], "in the README's reference but read by no service"


def test_reference_defaults_match_the_code():
    table = _reference_table()
    defaults = {
        env.NATS_URL: env.nats_url({}),
        env.NATS_REPLICAS: str(env.nats_replicas({})),
        env.DEVICE: env.device({}),
        env.OTEL: env.otel_exporter({}),
        env.GATEWAY_PORT: str(env.gateway_port({})),
    }
    for name, default in defaults.items():
        row = next(line for line in table.splitlines() if f"`{name}`" in line)
        assert f"`{default}`" in row, (name, default, row)
