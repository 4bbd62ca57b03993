from pathlib import Path

import pytest

from shared.nats_server import NatsServer

CATALOG = """
[[models]]
name = "m1"

[[models]]
name = "m2"
"""


@pytest.fixture
def nats_server(tmp_path):
    with NatsServer(tmp_path / "nats") as server:
        yield server


@pytest.fixture
def catalog_path(tmp_path) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG)
    return path
