"""The ``tokenpool`` command line.

Usage:
    tokenpool models prepare [--force]   convert and create the bundled models
    tokenpool models list [--json]       show the models in the model store
    tokenpool generate --model M --prompt P [--chat] [--json]   run the engine in-process
    tokenpool up [--host H] [--port P] [--workers N] [--config FILE] [--nats URL]   start the stack
    tokenpool sim --workload PATH --gpus N --policy token|request|dedicated [--json]   simulate a pool
    tokenpool plan --workload PATH --gpu-profile H100 [--target 0.9] [--json]   GPUs each policy needs

Each subcommand lives in its own module with a ``register(subparsers)``
function that adds its parser and sets ``handler`` to a function taking the
parsed arguments and returning an exit status.
"""

from __future__ import annotations

import argparse
import logging
import sys

from services.cli import bench_cmd, generate_cmd, models_cmd, plan_cmd, sim_cmd, up_cmd
from services.gpu_worker.engine.errors import EngineError
from shared import env
from shared.model_store import ModelStoreError
from shared.tokenizer import TokenizerError

COMMANDS = (models_cmd, generate_cmd, bench_cmd, up_cmd, sim_cmd, plan_cmd)
KNOWN_ERRORS: tuple[type[Exception], ...] = (ModelStoreError, env.EnvError, EngineError, TokenizerError)
"""Errors a user can act on: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenpool", description="Serve many LLMs from a small GPU pool.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        logging.basicConfig(level=env.log_level(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return args.handler(args)
    except KNOWN_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
