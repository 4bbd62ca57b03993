"""One simulated GPU's memory and copy links, as our engine lays them out (engine/memory.py).

Device memory = reserved + a weight region + KV pages. The weight region holds the resident
models; a model copied in evicts the least recently used ones that are not in use. KV pages
are fixed-size byte pages shared by all models (a page holds page_bytes // KV bytes per token
tokens of a model). Paused requests' KV lives in a host swap area (twice the KV region, as
the real worker's default).

Copies take link time: host-to-device (weights, KV swap-in) is one FIFO link, so a prefetch
still in flight delays a KV swap-in; device-to-host (KV swap-out) is the other direction.
Times are absolute virtual times; nothing here advances a clock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from services.sim.cost import CostModel
from services.sim.errors import SimError


def pages_for(tokens: int, block_tokens: int) -> int:
    return -(-tokens // block_tokens)


@dataclass(frozen=True)
class DeviceLayout:
    weight_region_bytes: int | None = None
    """Bytes for resident weights; None: twice the largest served model (the computing model
    plus a prefetched one). The rest of the device, less the reserve, holds KV pages."""
    kv_page_bytes: int = 4 << 20
    """Bytes of one KV page: 73 tokens of Qwen2.5-7B, 42 of Yi-1.5-9B, 5 of Llama-2-13B."""
    host_swap_factor: float = 2.0
    """Host swap area for paused requests' KV, as a multiple of the KV region."""


class SimDevice:
    def __init__(self, cost: CostModel, serving: list[str], layout: DeviceLayout):
        self.cost = cost
        gpu = cost.gpu
        sizes = {m: cost.weight_bytes(m) for m in serving}
        largest = max(sizes.values())
        self.weight_region = layout.weight_region_bytes or 2 * largest
        if self.weight_region < largest:
            raise SimError(f"weight region of {self.weight_region} bytes cannot hold a {largest}-byte model")
        kv_bytes = gpu.memory_bytes - gpu.reserved_bytes - self.weight_region
        if kv_bytes < layout.kv_page_bytes:
            raise SimError(
                f"{gpu.name}: {gpu.memory_bytes} bytes less {gpu.reserved_bytes} reserved and a "
                f"{self.weight_region}-byte weight region leave no room for KV pages"
            )
        self.page_bytes = layout.kv_page_bytes
        self.total_pages = kv_bytes // layout.kv_page_bytes
        self.free_pages = self.total_pages
        self.host_pages_total = int(self.total_pages * layout.host_swap_factor)
        self.host_pages_free = self.host_pages_total
        self.block_tokens = {m: max(1, self.page_bytes // cost.kv_bytes_per_token(m)) for m in serving}
        self.weight_sizes = sizes
        self.resident: OrderedDict[str, float] = OrderedDict()
        """Models with weights in the region (least recently used first) -> when their copy ends."""
        self.active: str | None = None
        self.h2d_free_at = 0.0
        self.d2h_free_at = 0.0
        self.copies = 0
        """Weight copies started (switches and prefetches)."""

    # ---- weights --------------------------------------------------------------------

    def tier(self, model: str) -> str:
        return "device" if model in self.resident else "host"

    def activate(self, model: str, now: float) -> tuple[float, bool]:
        """Makes `model` the computing one; returns (when it can compute, whether it changed).

        Free when it is resident with its copy done; a prefetch still copying costs what is left
        of it; else the weights are copied now, after whatever the link is busy with, plus the
        fixed switch cost."""
        changed = model != self.active
        if model in self.resident:
            ready = max(now, self.resident[model])
            self.resident.move_to_end(model)
        else:
            ready = self._copy_in(model, now, keep={model}) + self.cost.switch_fixed_s
        self.active = model
        return ready, changed

    def prefetch(self, model: str, now: float) -> bool:
        """Starts copying `model` in behind whatever the link is doing; False if it cannot fit."""
        if model in self.resident or model not in self.weight_sizes:
            return False
        if self._room_without({self.active, model}) < self.weight_sizes[model]:
            return False
        self._copy_in(model, now, keep={self.active, model})
        return True

    def _copy_in(self, model: str, now: float, keep: set) -> float:
        start = now
        while self.weight_region - sum(self.weight_sizes[m] for m in self.resident) < self.weight_sizes[model]:
            victim = next((m for m in self.resident if m not in keep), None)
            if victim is None:
                raise SimError(f"weight region cannot hold {model!r} beside {', '.join(keep - {model})}")
            start = max(start, self.resident.pop(victim))  # the engine waits for a copy in flight before evicting
            if victim == self.active:
                self.active = None
        begin = max(start, self.h2d_free_at)
        done = begin + self.cost.copy_in_s(self.weight_sizes[model])
        self.h2d_free_at = done
        self.resident[model] = done
        self.copies += 1
        return done

    def _room_without(self, keep: set) -> int:
        evictable = sum(self.weight_sizes[m] for m in self.resident if m not in keep)
        return self.weight_region - sum(self.weight_sizes[m] for m in self.resident) + evictable

    # ---- KV -------------------------------------------------------------------------

    def allocate(self, pages: int) -> bool:
        if pages > self.free_pages:
            return False
        self.free_pages -= pages
        return True

    def release(self, pages: int) -> None:
        self.free_pages += pages
        assert self.free_pages <= self.total_pages, "released more KV pages than were allocated"

    def release_host(self, pages: int) -> None:
        self.host_pages_free += pages
        assert self.host_pages_free <= self.host_pages_total, "released more host pages than were allocated"

    def swap_out(self, pages: int, now: float) -> float | None:
        """Moves `pages` device pages to host memory; returns when the copy ends, None if the swap area is full."""
        if pages > self.host_pages_free:
            return None
        self.host_pages_free -= pages
        self.free_pages += pages
        begin = max(now, self.d2h_free_at)
        self.d2h_free_at = begin + self.cost.copy_out_s(pages * self.page_bytes)
        return self.d2h_free_at

    def swap_in(self, pages: int, now: float) -> float | None:
        """Moves `pages` host pages back; returns when the copy ends, None if the device lacks pages."""
        if pages > self.free_pages:
            return None
        self.free_pages -= pages
        self.host_pages_free += pages
        begin = max(now, self.h2d_free_at)
        self.h2d_free_at = begin + self.cost.copy_in_s(pages * self.page_bytes)
        return self.h2d_free_at
