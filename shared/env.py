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
from dataclasses import dataclass
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
"""NATS server URL(s) every service connects to, comma-separated: the nodes of a cluster, tried
in the order given (list the nearest first); a service reconnects forever to any of them.

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


NATS_USER = "TOKENPOOL_NATS_USER"
"""User name this service presents to NATS (user/password auth); needs TOKENPOOL_NATS_PASSWORD.

Default: none (no auth).
"""

NATS_PASSWORD = "TOKENPOOL_NATS_PASSWORD"
"""Password of TOKENPOOL_NATS_USER.

Default: none.
"""

NATS_CREDS = "TOKENPOOL_NATS_CREDS"
"""Path of a NATS credentials file (user JWT and nkey seed, decentralized auth).

Default: none.
"""

NATS_NKEY_SEED = "TOKENPOOL_NATS_NKEY_SEED"
"""Path of a file holding this service's nkey seed (``SU...``), for nkey auth.

Default: none.
"""

NATS_TLS_CA = "TOKENPOOL_NATS_TLS_CA"
"""PEM file of the CA that signed the NATS servers' certificates; setting it turns TLS on.

Default: none (TLS only for ``tls://`` URLs, verified against the system's CAs).
"""

NATS_TLS_CERT = "TOKENPOOL_NATS_TLS_CERT"
"""PEM client certificate for servers that verify clients (mutual TLS); needs TOKENPOOL_NATS_TLS_KEY.

Default: none.
"""

NATS_TLS_KEY = "TOKENPOOL_NATS_TLS_KEY"
"""PEM private key of TOKENPOOL_NATS_TLS_CERT.

Default: none.
"""

NATS_REPLICAS = "TOKENPOOL_NATS_REPLICAS"
"""JetStream replicas of the request stream and the placement bucket: 1 on a single server,
3 on a three-node cluster so that both survive the loss of a node.

Default: ``1``.
"""


@dataclass(frozen=True)
class NatsAuth:
    """How a service authenticates to NATS and whether it speaks TLS; all None: neither."""

    user: str | None = None
    password: str | None = None
    creds: Path | None = None
    nkey_seed: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def tls(self) -> bool:
        return any((self.tls_ca, self.tls_cert))


def _existing_file(environ: Mapping[str, str], name: str) -> Path | None:
    if not (value := environ.get(name)):
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise EnvError(f"{name}={value!r}: no such file")
    return path


def nats_auth(environ: Mapping[str, str] = os.environ) -> NatsAuth:
    user, password = environ.get(NATS_USER) or None, environ.get(NATS_PASSWORD) or None
    if bool(user) != bool(password):
        given, missing = (NATS_USER, NATS_PASSWORD) if user else (NATS_PASSWORD, NATS_USER)
        raise EnvError(f"{given} is set but {missing} is not; set both or neither")
    auth = NatsAuth(
        user=user,
        password=password,
        creds=_existing_file(environ, NATS_CREDS),
        nkey_seed=_existing_file(environ, NATS_NKEY_SEED),
        tls_ca=_existing_file(environ, NATS_TLS_CA),
        tls_cert=_existing_file(environ, NATS_TLS_CERT),
        tls_key=_existing_file(environ, NATS_TLS_KEY),
    )
    methods = [n for n, v in ((NATS_USER, user), (NATS_CREDS, auth.creds), (NATS_NKEY_SEED, auth.nkey_seed)) if v]
    if len(methods) > 1:
        raise EnvError(f"{' and '.join(methods)} are both set; use one way to authenticate to NATS")
    if bool(auth.tls_cert) != bool(auth.tls_key):
        given, missing = (NATS_TLS_CERT, NATS_TLS_KEY) if auth.tls_cert else (NATS_TLS_KEY, NATS_TLS_CERT)
        raise EnvError(f"{given} is set but {missing} is not; a client certificate needs its key")
    return auth


def nats_replicas(environ: Mapping[str, str] = os.environ) -> int:
    value = environ.get(NATS_REPLICAS) or "1"
    if not value.isdigit() or not 1 <= int(value) <= 5:
        raise EnvError(f"{NATS_REPLICAS}={value!r}: use a number of replicas from 1 to 5 (at most the cluster's nodes)")
    return int(value)
