"""What the benchmarks that start their own stack share around one run.

    return run_bench("serve", lambda tmp: _run(args, tmp), args, _format)   # in the command
    records = run_async(run_load(spec))                                    # inside `run`

`run_bench` gives the run a temporary folder (the stack's files, deleted afterwards), makes
SIGTERM unwind it as Ctrl-C does (the run stops what it started on the way out: exit 130), turns
a RuntimeError or TimeoutError into a one-line error (exit 1), writes the JSON to --out and prints
it (--json) or its summary. `run_async` runs a coroutine on uvloop (asyncio without it) so that
SIGTERM still ends it: an exception raised by a Python signal handler inside a running uvloop is
only logged, so there the signal cancels the coroutine instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class Terminated(Exception):
    """SIGTERM arrived during the run."""


def _raise_terminated(signum, frame):
    raise Terminated()


def run_bench(
    name: str, run: Callable[[Path], dict], args: argparse.Namespace, format_report: Callable[[dict], str]
) -> int:
    """Runs `run(tmp)` and reports its result; returns the exit status. `args.out` (a Path or
    None) and `args.json` say where the result goes."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with tempfile.TemporaryDirectory(prefix=f"tokenpool-bench-{name}-") as tmp:
            result = run(Path(tmp))
    except (KeyboardInterrupt, Terminated):
        print("interrupted; every process this benchmark started was stopped", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def machine_brief() -> dict:
    """When and where a simulated benchmark ran (its figures do not depend on the machine)."""
    import platform
    from datetime import datetime, timezone

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Runs `coro` to its end; a SIGTERM meanwhile cancels it and raises Terminated."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_terminable(coro))
    return uvloop.run(_terminable(coro))


async def _terminable(coro: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    previous = signal.getsignal(signal.SIGTERM)
    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await coro
    except asyncio.CancelledError:
        if not terminated:
            raise
        raise Terminated() from None
    finally:
        loop.remove_signal_handler(signal.SIGTERM)  # leaves SIG_DFL behind: put back what was there
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
