"""The OpenAI-compatible HTTP gateway of tokenpool.

Usage:
    python -m services.gateway [--nats URL[,URL...]] [--catalog PATH] [--host H] [--port P]
        [--model-store DIR] [--max-body-bytes N] [--max-inflight N] [--stall-timeout-s S]
        [--router-stale-s S] [--submit-timeout-s S] [--drain-timeout-s S] [--log-level LEVEL]

Serves POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health and
GET /metrics. Flags fall back to TOKENPOOL_NATS_URL, TOKENPOOL_CATALOG, TOKENPOOL_MODEL_STORE,
TOKENPOOL_GATEWAY_HOST, TOKENPOOL_GATEWAY_PORT and TOKENPOOL_LOG_LEVEL. SIGTERM or SIGINT
stops it: it stops listening, lets open requests finish, and drains NATS.
"""

from __future__ import annotations

import sys

from services.gateway.config import build_parser, config_from_args
from services.gateway.models import ModelSetupError
from services.gateway.service import Gateway
from shared import env
from shared.service_main import run_service, setup_logging
from shared.catalog import CatalogError


async def _serve(config) -> None:
    async with Gateway(config) as gateway:
        await gateway.serve_forever()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        setup_logging(args.log_level)
        config = config_from_args(args)
    except (ValueError, env.EnvError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        run_service("gateway", _serve(config))
    except (CatalogError, ModelSetupError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before serving began; once serving, SIGINT stops cleanly
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
