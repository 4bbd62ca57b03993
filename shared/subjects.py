"""Every NATS subject, stream and bucket name tokenpool uses, in one place.

    gateway --REQUEST_SUBMIT (JetStream work queue)--> router
    gateway --REQUEST_CANCEL--> router --worker_commands(id)--> gpu_worker
    gpu_worker --token_inbox(gateway id): TokenBatch--> gateway (and router, which tracks progress)
    gpu_worker --WORKER_STATE--> router, autoscaler
    router --RunTurn on worker_commands(id)--> gpu_worker --TURN_REPORTS--> router
    router --ROUTER_STATE--> gateway, autoscaler
    autoscaler --PLACEMENT_BUCKET (JetStream KV)--> router, gpu_worker
"""

from __future__ import annotations

PREFIX = "tp"

REQUEST_STREAM = "TP_REQUESTS"
REQUEST_SUBMIT = f"{PREFIX}.req.submit"
REQUEST_CANCEL = f"{PREFIX}.req.cancel"

TOKENS_PREFIX = f"{PREFIX}.tokens"
TOKENS_ALL = f"{TOKENS_PREFIX}.>"

WORKER_STATE = f"{PREFIX}.worker.state"
TURN_REPORTS = f"{PREFIX}.worker.turns"
ROUTER_STATE = f"{PREFIX}.router.state"

PLACEMENT_BUCKET = "tp_placement"
PLACEMENT_KEY = "placement"

ROUTER_CONSUMER = "router"


def tokens(request_id: str) -> str:
    return f"{TOKENS_PREFIX}.{request_id}"


def token_inbox(gateway_id: str) -> str:
    """Where one gateway reads the tokens of all its requests (GenerateRequest.token_subject)."""
    return f"{TOKENS_PREFIX}.gw.{gateway_id}"


def worker_commands(worker_id: str) -> str:
    return f"{PREFIX}.worker.{worker_id}.cmd"
