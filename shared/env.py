"""Every environment variable tokenpool reads is declared here, nowhere else.

Each variable is a name constant with a docstring and an accessor that parses
it. Accessors take the environment as an argument (default ``os.environ``) so
that tests can pass a plain dict.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

MODEL_STORE = "TOKENPOOL_MODEL_STORE"
"""Directory of prepared models, one subfolder per model.

Default: ``${XDG_CACHE_HOME:-~/.cache}/tokenpool/models``.
"""

LOG_LEVEL = "TOKENPOOL_LOG_LEVEL"
"""Logging level of every tokenpool process: DEBUG, INFO, WARNING or ERROR.

Default: ``INFO``.
"""

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class EnvError(ValueError):
    """An environment variable holds a value tokenpool cannot use."""


def model_store(environ: Mapping[str, str] = os.environ) -> Path:
    if value := environ.get(MODEL_STORE):
        return Path(value).expanduser()
    cache = environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "tokenpool" / "models"


def log_level(environ: Mapping[str, str] = os.environ) -> int:
    name = (environ.get(LOG_LEVEL) or "INFO").upper()
    if name not in _LOG_LEVELS:
        raise EnvError(f"{LOG_LEVEL}={environ[LOG_LEVEL]!r}: use one of {', '.join(_LOG_LEVELS)}")
    return logging.getLevelName(name)


GATEWAY_HOST = "TOKENPOOL_GATEWAY_HOST"
"""Address the gateway's HTTP server listens on.

Default: ``127.0.0.1``.
"""

GATEWAY_PORT = "TOKENPOOL_GATEWAY_PORT"
"""TCP port of the gateway's HTTP server.

Default: ``8000``.
"""


def gateway_host(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get(GATEWAY_HOST) or "127.0.0.1"


def gateway_port(environ: Mapping[str, str] = os.environ) -> int:
    value = environ.get(GATEWAY_PORT) or "8000"
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise EnvError(f"{GATEWAY_PORT}={value!r}: use a TCP port number between 1 and 65535")
    return int(value)


STATE_DIR = "TOKENPOOL_STATE_DIR"
"""Where `tokenpool up` keeps each run's folder (JetStream data).

Default: ``${XDG_STATE_HOME:-~/.local/state}/tokenpool``.
"""

CATALOG = "TOKENPOOL_CATALOG"
"""The model catalog (TOML) every service reads.

Default: ``deploy/catalog.toml`` in the current directory.
"""

OTEL = "TOKENPOOL_OTEL"
"""Trace export: ``off`` (default), ``console``, or an OTLP/HTTP endpoint URL such as
``http://127.0.0.1:4318/v1/traces``.
"""


def state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    if value := environ.get(STATE_DIR):
        return Path(value).expanduser()
    return Path(environ.get("XDG_STATE_HOME") or "~/.local/state").expanduser() / "tokenpool"


def catalog_path(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get(CATALOG) or "deploy/catalog.toml").expanduser()


def otel_exporter(environ: Mapping[str, str] = os.environ) -> str:
    value = (environ.get(OTEL) or "off").strip()
    if value not in ("off", "console") and not value.startswith(("http://", "https://")):
        raise EnvError(f"{OTEL}={value!r}: use off, console or an http(s):// OTLP endpoint")
    return value


NATS_URL = "TOKENPOOL_NATS_URL"
"""NATS server URL(s) every service connects to, comma-separated.

Default: ``nats://127.0.0.1:4222``.
"""

WORKER_ID = "TOKENPOOL_WORKER_ID"
"""A gpu_worker's id on the bus (letters, digits, - and _).

Default: ``worker-<hostname>-<pid>``.
"""

DEVICE = "TOKENPOOL_DEVICE"
"""The gpu_worker's torch device: ``cpu``, ``cuda`` or ``cuda:N``.

Default: ``cpu``.
"""


def nats_url(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get(NATS_URL) or "nats://127.0.0.1:4222"


def worker_id(environ: Mapping[str, str] = os.environ) -> str | None:
    return environ.get(WORKER_ID) or None


def device(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get(DEVICE) or "cpu"


KV_HANDOFF_DIR = "TOKENPOOL_KV_HANDOFF_DIR"
"""Directory through which gpu_workers on one machine hand a request's KV cache from prefill to
decode (disaggregated mode); every worker of the machine must use the same one.

Default: ``/dev/shm/tokenpool-kv`` where /dev/shm exists (memory, not disk), else
``tokenpool-kv`` in the temporary directory.
"""


def kv_handoff_dir(environ: Mapping[str, str] = os.environ) -> Path:
    if value := environ.get(KV_HANDOFF_DIR):
        return Path(value).expanduser()
    shm = Path("/dev/shm")
    return (shm if shm.is_dir() else Path(tempfile.gettempdir())) / "tokenpool-kv"
