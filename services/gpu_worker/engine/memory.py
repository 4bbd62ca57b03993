"""Explicit device memory: one preallocated arena, carved into a weight region and KV pages.

Nothing is allocated on the device after start-up: a model switched in is copied into a
range of the weight region, a KV block is a page of the KV region. Host-to-device copies
run on a side CUDA stream on GPUs and on a helper thread on CPU, so a prefetch overlaps
the current model's compute on both.
"""

from __future__ import annotations

from collections.abc import Callable

from concurrent.futures import Future, ThreadPoolExecutor

import torch

from .errors import OutOfMemoryError
from .prefix_cache import PrefixCache


class RangeAllocator:
    """First-fit allocator of [0, capacity) ranges, in elements."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._used: list[tuple[int, int]] = []  # sorted (offset, size)

    def allocate(self, size: int) -> int | None:
        cursor = 0
        for i, (offset, used) in enumerate(self._used):
            if offset - cursor >= size:
                self._used.insert(i, (cursor, size))
                return cursor
            cursor = offset + used
        if self.capacity - cursor < size:
            return None
        self._used.append((cursor, size))
        return cursor

    def free(self, offset: int) -> None:
        for i, (start, _) in enumerate(self._used):
            if start == offset:
                del self._used[i]
                return
        raise KeyError(f"no allocation at offset {offset}")

    @property
    def used(self) -> int:
        return sum(size for _, size in self._used)


class PagePool:
    """Fixed-size pages handed out by index; the free list is a stack (recently freed first).
    `clear` zeroes pages, for allocate(..., clear=True). With a prefix `cache`, pages it holds
    are freed into it (shared by count, idle when unused) and its idle pages count as free:
    allocate reclaims them, least recently used first, once the free list is empty."""

    def __init__(self, num_pages: int, clear: Callable[[list[int]], None] | None = None, cache: PrefixCache | None = None):
        self.num_pages = num_pages
        self._free = list(range(num_pages - 1, -1, -1))
        self._clear = clear
        self.cache = cache

    @property
    def num_free(self) -> int:
        return len(self._free) + (self.cache.num_idle if self.cache else 0)

    def can_allocate(self, n: int) -> bool:
        return n <= self.num_free

    def allocate(self, n: int, clear: bool = False) -> list[int]:
        """With `clear`, the pages come zeroed (for pages a sequence fills slot by slot)."""
        if n > self.num_free:
            raise OutOfMemoryError(f"asked for {n} KV pages, {self.num_free} free")
        while len(self._free) < n:
            self._free.append(self.cache.reclaim())
        pages = self._free[-n:] if n else []
        del self._free[len(self._free) - n :]
        pages.reverse()
        if clear and pages and self._clear is not None:
            self._clear(pages)
        return pages

    def free(self, pages: list[int]) -> None:
        for page in reversed(pages):
            if self.cache is not None and self.cache.holds(page):
                self.cache.release(page)
            else:
                self._free.append(page)


def page_runs(dst: list[int], src: list[int]) -> list[tuple[int, int, int]]:
    """Copying page src[i] to page dst[i] for every i, as (dst_start, src_start, count) runs in
    which both sides are consecutive: one copy call per run, not per page (a call per 1 MiB page
    costs a launch each on CUDA)."""
    runs: list[tuple[int, int, int]] = []
    for d, s in zip(dst, src):
        if runs and d == runs[-1][0] + runs[-1][2] and s == runs[-1][1] + runs[-1][2]:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((d, s, 1))
    return runs


def copy_pages(dst: torch.Tensor, dst_pages: list[int], src: torch.Tensor, src_pages: list[int]) -> None:
    """dst[dst_pages[i]] = src[src_pages[i]], asynchronously where the device allows."""
    for d, s, n in page_runs(dst_pages, src_pages):
        dst[d : d + n].copy_(src[s : s + n], non_blocking=True)


class DeviceArena:
    """The one device allocation: weights region, then KV pages, then one zero page.

    Attention gathers whole pages, so it reads slots no token was written to: the tail of a
    sequence's last page, and the padding of a block table. Masked scores still carry a NaN or
    inf found there into the output (0 * NaN), and the arena is uninitialised memory (on CUDA,
    whatever the process freed before). So such slots must hold zeros: a sequence's pages are
    zeroed when it takes them (`allocate(..., clear=True)`) and block tables are padded with
    `zero_page`, which is never handed out."""

    def __init__(
        self, device: torch.device, dtype: torch.dtype, weight_bytes: int, kv_bytes: int, page_bytes: int,
        cache: PrefixCache | None = None,
    ):
        item = dtype.itemsize
        self.page_elems = page_bytes // item
        self.num_pages = kv_bytes // page_bytes
        self.zero_page = self.num_pages
        weight_elems = weight_bytes // item
        total = weight_elems + (self.num_pages + 1) * self.page_elems
        self.buffer = torch.empty(total, dtype=dtype, device=device)
        self.weights = self.buffer[:weight_elems]
        self.kv = self.buffer[weight_elems:].view(self.num_pages + 1, self.page_elems)
        self.kv[self.zero_page].zero_()
        self.weight_ranges = RangeAllocator(weight_elems)
        self.pages = PagePool(self.num_pages, clear=self._clear, cache=cache)

    def _clear(self, pages: list[int]) -> None:
        self.kv.index_fill_(0, torch.tensor(pages, device=self.kv.device), 0)


class HostSwapArea:
    """Host pages (pinned on CUDA) that hold the KV pages of paused sequences."""

    def __init__(self, dtype: torch.dtype, page_elems: int, swap_bytes: int, pin: bool):
        num_pages = max(swap_bytes // (page_elems * dtype.itemsize), 0)
        self.kv = torch.empty((num_pages, page_elems), dtype=dtype, pin_memory=pin)
        self.pages = PagePool(num_pages)


class Copier:
    """Asynchronous host-to-device copies that overlap compute; wait() joins one."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self._stream = torch.cuda.Stream(device)
            self._pool = None
        else:
            self._stream = None
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="h2d-copy")

    def start(self, dest: torch.Tensor, src: torch.Tensor):
        if self._stream is not None:
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._stream):
                dest.copy_(src, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self._stream)
            return event
        return self._pool.submit(dest.copy_, src)

    def wait(self, handle) -> None:
        if isinstance(handle, Future):
            handle.result()
        elif handle is not None:
            torch.cuda.current_stream(self.device).wait_event(handle)

    def copy(self, dest: torch.Tensor, src: torch.Tensor) -> None:
        dest.copy_(src, non_blocking=self._stream is not None)

    def synchronize(self) -> None:
        if self._stream is not None:
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
