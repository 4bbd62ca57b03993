"""Every environment variable tokenpool reads is declared here, nowhere else.

Each variable is a name constant with a docstring and an accessor that parses
it. Accessors take the environment as an argument (default ``os.environ``) so
that tests can pass a plain dict.
"""

from __future__ import annotations

import logging
import os
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
