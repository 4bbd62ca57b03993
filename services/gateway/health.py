"""Whether the pool behind this gateway can serve: judged from recent RouterState reports.

Pure: the caller passes the time a report arrived and the time of the question.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.gateway.errors import ApiError, api_error
from shared.protocol import RouterState

RETRY_AFTER_S = 1


@dataclass(frozen=True)
class Health:
    ok: bool
    body: dict
    problem: ApiError | None = None
    """Why a request cannot be served now (a 503); None when ok."""


class RouterWatch:
    def __init__(self, stale_s: float):
        self.stale_s = stale_s
        self._latest: dict[str, tuple[RouterState, float]] = {}

    def observe(self, state: RouterState, now: float) -> None:
        self._latest[state.router_id] = (state, now)

    def check(self, now: float) -> Health:
        fresh = [s for s, seen in self._latest.values() if now - seen <= self.stale_s]
        if not fresh:
            heard = min((now - seen for _, seen in self._latest.values()), default=None)
            when = "never" if heard is None else f"{heard:.1f} s ago"
            reason = f"no router is alive: no RouterState in the last {self.stale_s:g} s (last one: {when})"
            return self._down("no_router", reason)
        ready = [s for s in fresh if s.ready]
        if not ready:
            return self._down("router_not_ready", f"router {fresh[0].router_id} is not ready yet")
        serving = [s for s in ready if s.workers]
        if not serving:
            return self._down("no_worker", f"router {ready[0].router_id} reports no live worker")
        best = max(serving, key=lambda s: len(s.workers))
        workers = sorted({w for s in serving for w in s.workers})
        body = {
            "status": "ok",
            "router": best.router_id,
            "workers": workers,
            "pending": sum(s.pending for s in serving),
            "models": {m.name: {"queued": m.queued, "running": m.running} for m in best.models},
        }
        return Health(True, body)

    def _down(self, code: str, reason: str) -> Health:
        problem = api_error(503, reason, code=code, retry_after_s=RETRY_AFTER_S)
        return Health(False, {"status": "unavailable", "reason": reason, "code": code}, problem)
