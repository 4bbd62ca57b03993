"""What every service's `main` does the same way: logging, tracing, the event loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys

from shared import env
from shared.tracing import setup_tracing, shutdown_tracing

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

GC_THRESHOLDS = (10_000, 20, 20)
"""Python's default (700, 10, 10) runs a young collection every 700 allocations; a busy service
makes and drops thousands of short-lived objects per request (messages, events, futures), nearly
all freed by reference counting, so most collections find nothing."""


def setup_logging(flag: str | None) -> None:
    """Uses --log-level when given, else TOKENPOOL_LOG_LEVEL; raises env.EnvError for a bad name."""
    level = env.log_level({env.LOG_LEVEL: flag} if flag else os.environ)
    logging.basicConfig(level=level, format=LOG_FORMAT)


async def until_stopped() -> None:
    """Returns on the first SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def run_service(name: str, coro) -> None:
    """Runs the service's coroutine on uvloop when it is installed, with tracing set up around it.

    A configuration error (env.EnvError: a bad NATS variable, credentials NATS refused) ends the
    process with its message and exit status 2; the NATS variables are checked before anything runs."""
    try:
        env.nats_auth()
        env.nats_replicas()
        setup_tracing(name)
    except env.EnvError as e:
        print(f"error: {e}", file=sys.stderr)
        coro.close()
        raise SystemExit(2) from None
    settle_heap()
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(coro)
        else:
            uvloop.run(coro)
    except env.EnvError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        shutdown_tracing()


def settle_heap() -> None:
    """Moves what exists now (modules, classes, configuration) out of the collector's sight
    (gc.freeze) and makes young collections rarer; a full collection then scans only what the
    service made since."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
