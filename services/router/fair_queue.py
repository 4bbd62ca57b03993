"""One model's waiting requests, and which of them goes next when a worker has room.

Plain FCFS lets one tenant that sends a burst hold every slot the pool frees until its burst is
served, however few requests the others send. So the next request is the oldest one of the
tenant with the fewest requests in service (assigned to a worker); among equals, the oldest.
With one tenant (or none named: every request is tenant "") that is FCFS. A tenant is the
OpenAI `user` field of the request. A tenant can also be held back altogether (`blocked`: it
holds its cap of the pool, PolicyConfig.max_tenant_share).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Waiting:
    request_id: str
    tenant: str
    accepted_at: float


class FairQueue:
    def __init__(self) -> None:
        self._items: deque[Waiting] = deque()
        self._tenants: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return (w.request_id for w in self._items)

    def append(self, request_id: str, tenant: str, accepted_at: float) -> None:
        """Requests come in arrival order; `resort` restores it after out-of-order appends."""
        self._items.append(Waiting(request_id, tenant, accepted_at))
        self._tenants[tenant] += 1

    def remove(self, request_id: str) -> None:
        for item in self._items:
            if item.request_id == request_id:
                self._items.remove(item)
                self._tenants[item.tenant] -= 1
                if not self._tenants[item.tenant]:
                    del self._tenants[item.tenant]
                return
        raise ValueError(f"request {request_id} is not queued")

    def resort(self) -> None:
        self._items = deque(sorted(self._items, key=lambda w: w.accepted_at))

    def next(
        self, in_service: Mapping[str, int], fair: bool = True, blocked: Callable[[str], bool] | None = None
    ) -> Waiting | None:
        """The request that goes next (not removed), None when none may; `fair=False` is plain
        FCFS; requests of a tenant `blocked` says so of wait."""
        if blocked is None:
            if not self._items:
                return None
            if not fair or len(self._tenants) == 1:
                return self._items[0]
        oldest: dict[str, Waiting] = {}
        for item in self._items:  # the oldest request of each waiting tenant
            if item.tenant not in oldest:
                oldest[item.tenant] = item
                if not fair and not (blocked and blocked(item.tenant)):
                    return item
            if len(oldest) == len(self._tenants):
                break
        allowed = [w for w in oldest.values() if not (blocked and blocked(w.tenant))]
        if not allowed:
            return None
        return min(allowed, key=lambda w: (in_service.get(w.tenant, 0), w.accepted_at))
