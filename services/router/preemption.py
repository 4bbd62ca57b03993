"""Which running request gives its slot to a waiting tenant (PolicyConfig.tenant_preemption).

Fair dispatch (fair_queue.py) only orders who gets the next free slot: a tenant whose burst
filled the pool while nobody else asked keeps those slots until its requests finish, so a
tenant that asks later waits behind the burst's whole generation. With preemption, a waiting
tenant takes a slot from the tenant with the most requests in service, when that tenant holds
at least two more than the waiting one (so the swap never turns the order around). The victim
is the request that loses least: fewest tokens produced (its worker re-prefills them when it
resumes, as after a move), then the newest. A request is preempted at most once, so no request
pays for more than one recomputation, and a pool of one tenant (or of unnamed requests) never
preempts.

Pure: the policy passes its running requests in and acts on the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Running:
    request_id: str
    tenant: str
    worker_id: str
    produced: int
    accepted_at: float
    preempted: bool = False
    """Preempted once already: never again."""


def victim(waiting_tenant: str, in_service: Mapping[str, int], running: Iterable[Running]) -> Running | None:
    """The request that gives its slot to `waiting_tenant`; None when no tenant holds two more."""
    floor = in_service.get(waiting_tenant, 0) + 2
    candidates = [
        r for r in running
        if r.tenant != waiting_tenant and not r.preempted and in_service.get(r.tenant, 0) >= floor
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda r: (-in_service.get(r.tenant, 0), r.produced, -r.accepted_at, r.request_id))
