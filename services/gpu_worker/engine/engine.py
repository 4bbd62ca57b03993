"""The multi-model engine: explicit model memory, paged KV, continuous batching.

    engine = Engine(EngineConfig(), {"smollm2": path})
    engine.activate("smollm2")
    engine.add_request(EngineRequest("r1", "smollm2", prompt_ids, SamplingParams(max_tokens=32)))
    while engine.has_work():
        outputs = engine.step()          # or engine.step(["r1"]): only those requests
        engine.last_step                 # StepInfo(is_prefill, num_seqs, num_tokens, context_tokens)

One model computes at a time (the active one); others can be resident in the arena
(switching to them is free), in host memory (switching is one bulk copy, which
`prefetch` overlaps with the current model's compute) or on disk.

Disaggregated prefill on one machine moves a request's KV between two engines through a file
in host memory (handoff.py): `export_kv(request_id, path)` on the prefill side, then
`add_request(request, kv_entry=path)` on the decode side, whose next step is a decode step.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.tokenizer import Tokenizer, TokenizerError

from . import cpu_matmul
from .config import EngineConfig, load_model_config
from .errors import InvalidRequestError, OutOfMemoryError, UnknownModelError
from .handoff import (
    EntryHeader,
    KvHandoffError,
    KvNoRoomError,
    KvShape,
    dtype_name,
    read_entry,
    tokens_digest,
    write_entry,
)
from .layout import weight_layout
from .loader import load_weights
from .memory import Copier, DeviceArena, HostSwapArea, copy_pages
from .model import DecoderModel, projection_weights
from .prefix_cache import PrefixCache
from .residency import ModelSlot, Tier
from .runner import run_batch
from .sampler import Sampled, sample
from .scheduler import Scheduler, pages_needed
from .sequence import EngineRequest, Sequence, SeqState, check_token_ids


@dataclass(frozen=True)
class StepOutput:
    request_id: str
    model: str
    token_id: int
    index: int
    """Position of the token in the request's output, from 0."""
    logprob: float | None
    finish_reason: str | None
    """None while the request goes on; "stop" or "length" on its last token."""
    top_logprobs: tuple[tuple[int, float], ...] | None = None
    """The most likely (token id, logprob) at this position, when the request asked for them."""
    cached_tokens: int = 0
    """Prompt tokens the prefix cache served at the request's prefill."""


@dataclass(frozen=True)
class StepInfo:
    """What one step computed: for the caller's step-time accounting."""

    is_prefill: bool
    num_seqs: int
    num_tokens: int
    """Tokens whose K/V the step computed (prompt chunk lengths, or one per decoded sequence)."""
    context_tokens: int
    """Context lengths the step attended to, summed over its sequences (its own tokens included)."""


@dataclass(frozen=True)
class EngineStats:
    active: str | None
    models: dict[str, str]
    total_pages: int
    free_pages: int
    total_host_pages: int
    free_host_pages: int
    waiting: int
    running: int
    swapped: int
    prefix_hit_tokens: int = 0
    """Prompt tokens whose K/V came from the prefix cache, since the engine started."""


class Engine:
    def __init__(self, config: EngineConfig, models: dict[str, Path]):
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = config.torch_dtype
        self.model_paths = {name: Path(p) for name, p in models.items()}
        self.prefix_cache = PrefixCache() if config.prefix_caching else None
        self.arena = DeviceArena(
            self.device, self.dtype, config.weight_arena_bytes, config.kv_arena_bytes, config.kv_page_bytes,
            self.prefix_cache,
        )
        pin = self.device.type == "cuda"
        self.swap = HostSwapArea(self.dtype, self.arena.page_elems, config.host_swap_bytes, pin)
        self.copier = Copier(self.device)
        self.packs_matmul = (
            self.device.type == "cpu" and config.packed_cpu_matmul and cpu_matmul.supported(self.dtype)
        )
        """Whether models compute with packed projection weights (CPU, cpu_matmul.py)."""
        self.scheduler = Scheduler(self.arena.pages, config.max_batch_tokens, config.max_batch_size)
        self.active: str | None = None
        self.pinned: frozenset[str] = frozenset()
        """Hot models the autoscaler pinned: evicted from the arena only when nothing else can go."""
        self._slots: dict[str, ModelSlot] = {}
        self._seqs: dict[str, Sequence] = {}
        self._arrivals = itertools.count()
        self._clock = itertools.count(1)
        self.last_step: StepInfo | None = None
        """The latest step's batch; None when the latest step found nothing to run."""

    # ---- model memory ---------------------------------------------------------------

    def slot(self, name: str) -> ModelSlot:
        if name in self._slots:
            return self._slots[name]
        if name not in self.model_paths:
            known = ", ".join(sorted(self.model_paths)) or "none"
            raise UnknownModelError(f"unknown model {name!r} (this engine serves: {known})")
        path = self.model_paths[name]
        cfg = load_model_config(name, path)
        per_token = cfg.kv_bytes_per_token(self.dtype)
        block_tokens = self.config.kv_page_bytes // per_token
        if block_tokens < 1:
            raise OutOfMemoryError(
                f"model {name!r} needs {per_token} KV bytes per token; raise kv_page_bytes above that"
            )
        kv = self.arena.kv[:, : block_tokens * per_token // self.dtype.itemsize].view(
            self.arena.num_pages + 1, cfg.num_layers, 2, block_tokens, cfg.num_kv_heads, cfg.head_dim
        )
        self._slots[name] = ModelSlot(cfg, path, weight_layout(cfg), block_tokens, kv)
        return self._slots[name]

    def tier(self, name: str) -> Tier:
        return self.slot(name).tier

    def load(self, name: str) -> None:
        """Disk to host memory (pinned on CUDA)."""
        slot = self.slot(name)
        if slot.host is None:
            slot.host = load_weights(slot.cfg, slot.path, slot.layout, self.dtype, pin=self.device.type == "cuda")
            if self.packs_matmul:
                weights = projection_weights(slot.cfg, slot.layout.views(slot.host))
                slot.packed = {key: cpu_matmul.pack(w) for key, w in weights.items()}

    def prefetch(self, name: str) -> None:
        """Starts copying the model into the arena while the active model keeps computing."""
        slot = self.slot(name)
        if slot.tier is Tier.DEVICE:
            return
        dest = self._place_in_arena(slot, keep={name, self.active})
        slot.pending_copy = self.copier.start(dest, slot.host)

    def activate(self, name: str) -> None:
        """Makes `name` the computing model, copying it in now if no prefetch did."""
        slot = self.slot(name)
        if slot.tier is not Tier.DEVICE:
            self.copier.copy(self._place_in_arena(slot, keep={name}), slot.host)
        self.copier.wait(slot.pending_copy)
        slot.pending_copy = None
        slot.last_used = next(self._clock)
        self.active = name

    def evict(self, name: str) -> None:
        """Frees the model's range of the arena; its host copy stays. KV pages are untouched."""
        slot = self.slot(name)
        if slot.tier is not Tier.DEVICE:
            return
        self.copier.wait(slot.pending_copy)
        slot.pending_copy = None
        self.arena.weight_ranges.free(slot.device_offset)
        slot.device_offset, slot.model = None, None
        if self.active == name:
            self.active = None

    def pin(self, names: frozenset[str]) -> None:
        self.pinned = frozenset(names)

    def unload(self, name: str) -> None:
        self.evict(name)
        slot = self.slot(name)
        slot.host, slot.packed = None, None

    def _place_in_arena(self, slot: ModelSlot, keep: set) -> torch.Tensor:
        """Loads the model to host memory if needed, reserves its arena range, builds its views once."""
        self.load(slot.cfg.name)
        offset = self._allocate_weights(slot, keep)
        dest = self.arena.weights[offset : offset + slot.layout.numel]
        slot.device_offset = offset
        slot.model = DecoderModel(slot.cfg, slot.layout.views(dest), self.device, slot.packed)
        return dest

    def _allocate_weights(self, slot: ModelSlot, keep: set) -> int:
        size = slot.layout.numel
        while (offset := self.arena.weight_ranges.allocate(size)) is None:
            victims = [s for n, s in self._slots.items() if s.tier is Tier.DEVICE and n not in keep]
            if not victims:
                raise OutOfMemoryError(
                    f"model {slot.cfg.name!r} needs {slot.weight_bytes} bytes of the weight arena "
                    f"({self.config.weight_arena_bytes} bytes); raise weight_arena_bytes"
                )
            self.evict(min(victims, key=lambda s: (s.cfg.name in self.pinned, s.last_used)).cfg.name)
        return offset

    # ---- requests -------------------------------------------------------------------

    def add_request(self, request: EngineRequest, kv_entry: Path | None = None) -> None:
        """Queues the request for prefill; with `kv_entry` (a hand-off entry holding the KV of
        its first tokens) the request starts with those tokens cached, on the device if pages
        are free, else in the host swap area (the next swap_in brings it over), and computes only
        the rest: for an entry of all tokens but the last, its next step is a decode step.

        Raises KvHandoffError (nothing is added) when the entry is missing, does not fit this
        engine or the request, or no page is free for it; the caller can add it without one.
        """
        slot = self.slot(request.model)
        request.params.validate()
        if request.request_id in self._seqs:
            raise InvalidRequestError(f"request id {request.request_id!r} is already in use")
        prompt = request.prompt_token_ids
        if not prompt:
            raise InvalidRequestError("the prompt is empty")
        check_token_ids(request, slot.cfg.vocab_size)
        if len(prompt) >= slot.cfg.max_position:
            raise InvalidRequestError(
                f"the prompt has {len(prompt)} tokens; model {request.model!r} has a context window "
                f"of {slot.cfg.max_position} tokens, which must also hold at least one new token"
            )
        if pages_needed(len(prompt) + 1, slot.block_tokens) > self.arena.num_pages:
            raise InvalidRequestError(
                f"the prompt has {len(prompt)} tokens, more than the KV cache can ever hold "
                f"({self.arena.num_pages * slot.block_tokens} tokens of model {request.model!r})"
            )
        if request.params.stop:
            self.tokenizer(request.model)
        seq = Sequence(request, arrival=next(self._arrivals))
        if kv_entry is None:
            self.scheduler.add(seq)
        else:
            self._import_kv(seq, Path(kv_entry))
            self.scheduler.add_cached(seq)
        self._seqs[request.request_id] = seq

    def abort(self, request_id: str) -> bool:
        seq = self._seqs.pop(request_id, None)
        if seq is None:
            return False
        self.swap.pages.free(seq.host_pages)
        seq.host_pages, seq.parked_prefix = [], []
        self.scheduler.finish(seq, "abort")
        return True

    def has_work(self, model: str | None = None) -> bool:
        return self.scheduler.has_work(model)

    def models_with_work(self) -> list[str]:
        return sorted({s.model for s in self._seqs.values()})

    def step(self, request_ids: Collection[str] | None = None) -> list[StepOutput]:
        """One prefill or decode step of the active model; returns the tokens it produced.

        With `request_ids`, only those requests of the active model take part: only they are
        swapped back in, and the batch is chosen among them (prefill first, as always).
        """
        self.last_step = None
        if self.active is None:
            return []
        only = None if request_ids is None else set(request_ids)
        self.swap_in(model=self.active, request_ids=only)
        slot = self._slots[self.active]
        batch = self.scheduler.schedule(self.active, slot.block_tokens, only)
        if batch is None and self._has_work_among(only) and self._park_others(only):
            self.swap_in(model=self.active, request_ids=only)
            batch = self.scheduler.schedule(self.active, slot.block_tokens, only)
        if batch is None:
            return []
        logits = run_batch(slot, batch, self.device, self.arena.zero_page)
        samplers = [s for s, sampled in zip(batch.seqs, batch.sampling) if sampled]
        self.scheduler.commit(batch, slot.block_tokens)
        self.last_step = StepInfo(
            batch.is_prefill, len(batch.seqs), sum(batch.num_tokens), sum(s.num_cached for s in batch.seqs)
        )
        if not samplers:  # a prefill chunk: nothing reads the logits, so wait here, or the
            self.synchronize()  # caller's step time would be the launch time alone (CUDA)
            return []
        return self._append(slot, samplers, sample(logits, samplers))

    def _has_work_among(self, only: set[str] | None) -> bool:
        if only is None:
            return self.has_work(self.active)
        return any((s := self._seqs.get(r)) is not None and s.model == self.active for r in only)

    def _append(self, slot: ModelSlot, seqs, sampled: Sampled) -> list[StepOutput]:
        outputs = []
        for i, (seq, token) in enumerate(zip(seqs, sampled.token_ids)):
            seq.token_ids.append(token)
            logprob = top = None
            if seq.params.logprobs:
                logprob = sampled.logprobs[i]
                seq.output_logprobs.append(logprob)
                if seq.params.top_logprobs:
                    top = sampled.top_logprobs[i]
            reason = self._finish_reason(slot, seq, token)
            if reason is not None:
                self.scheduler.finish(seq, reason)
                del self._seqs[seq.request_id]
            outputs.append(
                StepOutput(
                    seq.request_id, seq.model, token, len(seq.output_ids) - 1, logprob, reason, top,
                    seq.cached_prompt_tokens,
                )
            )
        return outputs

    def _finish_reason(self, slot: ModelSlot, seq: Sequence, token: int) -> str | None:
        params = seq.params
        if (not params.ignore_eos and token in slot.cfg.eos_token_ids) or token in params.stop_token_ids:
            return "stop"
        if params.stop and self.stop_string_hit(slot, seq):
            return "stop"
        if len(seq.output_ids) >= params.max_tokens or len(seq.token_ids) >= slot.cfg.max_position:
            return "length"
        if pages_needed(len(seq.token_ids) + 1, slot.block_tokens) > self.arena.num_pages:
            return "length"  # the whole KV cache could not hold one more token
        return None

    def stop_string_hit(self, slot: ModelSlot, seq: Sequence) -> bool:
        text = self.tokenizer(slot.cfg.name).decode(seq.output_ids)
        # Only the tail can hold a match that the previous token did not complete.
        window = max(len(s) for s in seq.params.stop) + 16
        return any(s in text[-window:] for s in seq.params.stop)

    def tokenizer(self, name: str) -> Tokenizer:
        slot = self.slot(name)
        if slot.tokenizer is None:
            try:
                slot.tokenizer = Tokenizer(slot.path)
            except TokenizerError as e:
                raise InvalidRequestError(f"model {name!r}: stop strings need a tokenizer ({e})") from None
        return slot.tokenizer

    def _park_others(self, only: set[str] | None) -> bool:
        """Swaps the running sequences that are not stepping (other models', and with `only` the
        active model's unlisted ones) out when the stepping ones have no page to run on."""
        idle = [
            s.request_id
            for s in self.scheduler.running
            if s.model != self.active or (only is not None and s.request_id not in only)
        ]
        return bool(idle) and self.swap_out(request_ids=idle) > 0

    # ---- KV swap --------------------------------------------------------------------

    def swap_out(self, model: str | None = None, request_ids: Collection[str] | None = None) -> int:
        """Parks running sequences' KV pages in host memory, freeing their device pages. The
        leading pages the prefix cache holds stay where they are (shared pages would otherwise
        come back as one copy per sequence); the sequence lets go of them like any other."""
        seqs = self._select(self.scheduler.running, model, request_ids)
        for seq in seqs:
            kept = self._cached_lead(seq)
            tail = seq.pages[len(kept) :]
            if not self.swap.pages.can_allocate(len(tail)):
                raise OutOfMemoryError(
                    f"host swap area is full ({self.swap.pages.num_free} pages free, "
                    f"{len(tail)} needed); raise host_swap_bytes"
                )
            seq.host_pages = self.swap.pages.allocate(len(tail))
            copy_pages(self.swap.kv, seq.host_pages, self.arena.kv, tail)
            seq.parked_prefix = kept
            self.scheduler.release_pages(seq)
            self.scheduler.mark_swapped(seq)
        return len(seqs)

    def _cached_lead(self, seq: Sequence) -> list[tuple[int, int]]:
        """(entry, page) of seq's leading pages that the prefix cache holds as its own entries."""
        kept: list[tuple[int, int]] = []
        if self.prefix_cache is not None:
            for entry, page in zip(seq.prefix_entries, seq.pages):
                if not self.prefix_cache.still_holds(entry, page):
                    break
                kept.append((entry, page))
        return kept

    def _parked_intact(self, seq: Sequence) -> bool:
        """Whether every page a swapped-out seq left cached on the device is still cached."""
        return all(self.prefix_cache.still_holds(entry, page) for entry, page in seq.parked_prefix)

    def swap_in(self, model: str | None = None, request_ids: Collection[str] | None = None) -> int:
        """Brings swapped sequences back, oldest first, while device pages last: their cached
        leading pages again (unless one was reclaimed meanwhile: then the sequence computes its
        KV again), the rest from host memory."""
        count = 0
        for seq in self._select(self.scheduler.swapped, model, request_ids):
            cache, kept = self.prefix_cache, seq.parked_prefix
            if not self._parked_intact(seq):
                self.synchronize()  # its host pages may still be the target of the swap-out copy
                self.swap.pages.free(seq.host_pages)
                seq.host_pages, seq.parked_prefix = [], []
                self.scheduler.recompute_swapped(seq)
                continue
            reviving = sum(cache.refs(page) == 0 for _, page in kept)  # idle pages count as free now
            if not self.arena.pages.can_allocate(len(seq.host_pages) + reviving):
                break
            if kept:
                cache.acquire([page for _, page in kept])
            tail = self.arena.pages.allocate(len(seq.host_pages))
            copy_pages(self.arena.kv, tail, self.swap.kv, seq.host_pages)
            self.swap.pages.free(seq.host_pages)
            seq.pages = [page for _, page in kept] + tail
            seq.prefix_entries = [entry for entry, _ in kept]
            seq.host_pages, seq.parked_prefix = [], []
            self.scheduler.mark_swapped_in(seq)
            count += 1
        return count

    @staticmethod
    def _select(queue: list[Sequence], model: str | None, request_ids: Collection[str] | None) -> list[Sequence]:
        wanted = None if request_ids is None else set(request_ids)
        return [
            s for s in queue if (model is None or s.model == model) and (wanted is None or s.request_id in wanted)
        ]

    # ---- KV hand-off -----------------------------------------------------------------

    def kv_shape(self, model: str) -> KvShape:
        """What an engine importing this model's KV entries must share with this one."""
        page_bytes = self.arena.page_elems * self.dtype.itemsize
        return KvShape(model, self.slot(model).block_tokens, page_bytes, dtype_name(self.dtype))

    def export_kv(self, request_id: str, path: Path) -> None:
        """Writes the KV of the request's cached tokens (device pages, or host pages when it is
        swapped out) to a hand-off entry at `path`. The request stays; the caller aborts it."""
        seq = self._seqs.get(request_id)
        if seq is None:
            raise KvHandoffError(f"request {request_id!r} is not held by this engine")
        if seq.num_cached == 0:
            raise KvHandoffError(f"request {request_id!r} has no KV cached yet (it was not prefilled)")
        slot = self._slots[seq.model]
        count = pages_needed(seq.num_cached, slot.block_tokens)
        if seq.state is SeqState.SWAPPED:
            self.synchronize()  # its device-to-host copies may still be in flight
            if not self._parked_intact(seq):
                raise KvHandoffError(f"request {request_id!r}: part of its swapped-out KV was reclaimed")
            parts = [(self.arena.kv, [page for _, page in seq.parked_prefix]), (self.swap.kv, seq.host_pages)]
        else:
            parts = [(self.arena.kv, seq.pages)]
        data = torch.cat([
            source.index_select(0, torch.tensor(pages, device=source.device)).cpu() for source, pages in parts if pages
        ])[:count]
        digest = tokens_digest(seq.token_ids[: seq.num_cached])
        header = EntryHeader(self.kv_shape(seq.model), seq.num_cached, count, digest, seq.cached_prompt_tokens)
        write_entry(path, header, data)

    def _import_kv(self, seq: Sequence, path: Path) -> None:
        header, data = read_entry(path, self.kv_shape(seq.model), seq.token_ids)
        count = data.shape[0]
        if self.arena.pages.can_allocate(count):
            seq.pages = self.arena.pages.allocate(count)
            self.arena.kv.index_copy_(0, torch.tensor(seq.pages, device=self.device), data.to(self.device))
        elif self.swap.pages.can_allocate(count):
            self.synchronize()  # a freed host page may still be the source of a queued swap-in copy
            seq.host_pages = self.swap.pages.allocate(count)
            self.swap.kv.index_copy_(0, torch.tensor(seq.host_pages), data)
        else:
            raise KvNoRoomError(
                f"the KV entry {path} needs {count} pages; {self.arena.pages.num_free} device and "
                f"{self.swap.pages.num_free} host pages are free"
            )
        seq.num_cached = header.cached_tokens
        seq.cached_prompt_tokens = header.prompt_cache_hits

    # ---- introspection --------------------------------------------------------------

    def stats(self) -> EngineStats:
        s = self.scheduler
        return EngineStats(
            active=self.active,
            models={n: slot.tier.value for n, slot in self._slots.items()},
            total_pages=self.arena.num_pages,
            free_pages=self.arena.pages.num_free,
            total_host_pages=self.swap.pages.num_pages,
            free_host_pages=self.swap.pages.num_free,
            waiting=len(s.waiting),
            running=len(s.running),
            swapped=len(s.swapped),
            prefix_hit_tokens=self.prefix_cache.hit_tokens if self.prefix_cache else 0,
        )

    def sequence(self, request_id: str) -> Sequence | None:
        return self._seqs.get(request_id)

    def synchronize(self) -> None:
        """Waits for the device work queued on the compute stream (copies included), for timing."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def close(self) -> None:
        self.copier.synchronize()
        self.copier.close()

