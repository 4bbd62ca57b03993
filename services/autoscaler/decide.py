"""The scaling planner: decide(tick, state, config) -> (actions, new state). Pure: no I/O, no clock.

Each tick:
1. demand: each model's GPU share (demand.py) from its windowed tokens; a model with arrivals
   or requests in flight within cold_after_s is active, else cold;
2. copies: an active model wants ceil(share / fill) copies, at once; a copy goes only after
   share has stayed <= (copies - 1) * fill * low_water for cooldown_s (one copy per cooldown_s);
   a cold model wants none (it keeps one copy while host memory allows);
3. pool: workers wanted = ceil(total share / fill) (>= min_workers). More wanted, or attainment
   below target: undrain a draining worker, else ScaleUp (at most once per scale_up_cooldown_s).
   Fewer: drain one worker when total share <= (kept - 1) * fill * low_water, attainment is
   >= target + margin (or unknown), no scale event within cooldown_s, and every active model
   still has a copy without it, with host memory to spare: the active models' weights within
   low_water of the other kept workers' host memory (else the next model to wake up finds no
   room and brings a worker straight back);
4. placement (layout.py) over the kept workers; a draining worker keeps only the models of the
   requests it holds; each of them is `finish` there for drain_grace_s, then `move` to a kept
   worker holding its model (it stays `finish` when none does: no request is dropped); a
   draining worker holding nothing is released;
5. pins: a copy whose share (model share / copies) >= pin_share is pinned, unpinned below
   pin_share * low_water.
"""

from __future__ import annotations

import math
from dataclasses import replace

from services.autoscaler.actions import (
    Action, Drain, Evict, Pin, Place, Release, RequestFate, ScaleUp, Undrain, Unpin,
)
from services.autoscaler.demand import copies_for, gpu_share, workers_for
from services.autoscaler.layout import lay_out
from services.autoscaler.scaling_config import ScalingConfig
from services.autoscaler.tick import PlannerState, TickInput, WorkerInput


def decide(tick: TickInput, state: PlannerState, config: ScalingConfig) -> tuple[tuple[Action, ...], PlannerState]:
    now = tick.now
    started_at = now if state.started_at is None else state.started_at
    sizes = {m.name: m.bytes for m in tick.models}
    share = {m.name: gpu_share(m, tick.window_s) for m in tick.models}
    last_active = {m: t for m, t in state.last_active.items() if m in sizes}
    last_active |= {m.name: now for m in tick.models if m.arrivals or m.in_flight}
    active = {m for m in sizes if now - last_active.get(m, -math.inf) < config.cold_after_s}
    live = {w.worker_id: w for w in tick.workers if w.live}

    early: list[Action] = []
    late: list[Action] = []
    released = {w: t for w, t in state.released.items() if w in live}
    draining = {w: since for w, since in state.draining.items() if w in live}
    late += [Release(w, "gone") for w in sorted(state.draining) if w not in live]
    kept = {w: live[w] for w in sorted(live) if w not in draining and w not in released}

    want, justified = _copies_wanted(state, config, kept, sizes, share, active, now)
    total = sum(share.values())
    needed = max(config.min_workers, workers_for(total, config.fill))
    low = tick.attainment is not None and tick.attainment < config.target_attainment
    scaled_up_at, scaled_down_at = state.scaled_up_at, state.scaled_down_at
    up_ready = now - scaled_up_at >= config.scale_up_cooldown_s
    extra = max(needed - len(kept), 1 if low and up_ready else 0)
    for worker_id in sorted(draining, key=lambda w: (-draining[w], w))[:extra]:
        early.append(Undrain(worker_id))
        kept[worker_id] = live[worker_id]
        del draining[worker_id]
        extra -= 1
        scaled_up_at = now if low else scaled_up_at

    layout = lay_out(kept, state.placement, sizes, want, share, last_active)
    unplaced = _unplaced(layout, kept, sizes, active, want)
    if unplaced and extra <= 0:
        extra = 1
    room = config.max_workers - len(kept) - len(draining)
    if extra > 0 and up_ready and room > 0:
        if low:
            reason = f"attainment {tick.attainment:.3f} < target {config.target_attainment}"
        elif needed > len(kept):
            reason = f"demand {total:.2f} GPU needs {needed} workers, {len(kept)} kept"
        else:
            reason = f"host memory: {', '.join(unplaced)} fit on no kept worker"
        early.append(ScaleUp(min(extra, room), reason))
        scaled_up_at = now
    elif (extra <= 0 and not low and len(kept) > max(needed, config.min_workers)
          and total <= (len(kept) - 1) * config.fill * config.low_water
          and (tick.attainment is None or tick.attainment >= config.target_attainment + config.attainment_margin)
          and now - max(scaled_up_at, scaled_down_at, started_at) >= config.cooldown_s):
        drained = _pick_drain(kept, layout, state, sizes, want, share, active, last_active, config.low_water)
        if drained is not None:
            worker_id, layout = drained
            del kept[worker_id]
            draining[worker_id] = now
            scaled_down_at = now

    placement = dict(layout)
    fates = {}
    for worker_id in sorted(draining):
        w = live[worker_id]
        placement[worker_id] = frozenset(r.model for r in w.in_flight if r.model in sizes)
        fates[worker_id] = _fates(w, now - draining[worker_id] >= config.drain_grace_s, layout, kept, share, want)
        if fates[worker_id] != state.fates.get(worker_id):
            late.append(Drain(worker_id, fates[worker_id]))
        if not w.in_flight:
            late.append(Release(worker_id, "drained"))
            released[worker_id] = now
            del draining[worker_id], fates[worker_id], placement[worker_id]

    pins = _pins(layout, state.pins, share, active, config)
    changes = _placement_changes(state.placement, placement, live, draining, released, active)
    actions = (*early, *changes[0], *(Pin(m, w) for w, m in sorted(pins - state.pins)),
               *late, *changes[1], *(Unpin(m, w) for w, m in sorted(state.pins - pins) if w in live))
    return actions, replace(
        state, placement=placement, pins=frozenset(pins), draining=draining, fates=fates, released=released,
        last_active=last_active, copies_justified_at=justified, started_at=started_at, scaled_up_at=scaled_up_at, scaled_down_at=scaled_down_at,
    )


def _copies_wanted(state, config, kept, sizes, share, active, now):
    """Copies per model, and when each model's demand last justified the copies it has."""
    want, justified = {}, {m: t for m, t in state.copies_justified_at.items() if m in sizes}
    for model in sizes:
        capable = sum(model in w.serving and sizes[model] <= min(w.host_bytes, w.gpu_bytes) for w in kept.values())
        had = sum(model in state.placement.get(w, ()) for w in kept)
        base = min(copies_for(share[model], config.fill), capable) if model in active else 0
        if model not in active:
            want[model] = 0
        elif base >= had or share[model] > (had - 1) * config.fill * config.low_water:
            want[model] = max(base, had)
            justified[model] = now
        elif now - justified.get(model, -math.inf) >= config.cooldown_s:
            want[model] = had - 1
            justified[model] = now
        else:
            want[model] = had
    return want, justified


def _unplaced(layout, kept, sizes, active, want) -> list[str]:
    return sorted(m for m in active if want[m] >= 1 and not any(m in models for models in layout.values()))


def _pick_drain(kept, layout, state, sizes, want, share, active, last_active, low_water):
    """The cheapest worker to drain (fewest requests held, least demand hosted) whose going
    leaves every active model placed and their weights within low_water of the rest's host
    memory; with the layout without it."""
    def hosted_share(w: str) -> float:
        return sum(share[m] for m in layout[w])

    active_bytes = sum(sizes[m] for m in active)
    for worker_id in sorted(kept, key=lambda w: (len(kept[w].in_flight), hosted_share(w), w)):
        rest = {w: s for w, s in kept.items() if w != worker_id}
        if active_bytes > low_water * sum(w.host_bytes for w in rest.values()):
            continue
        without = lay_out(rest, state.placement, sizes, want, share, last_active)
        if not _unplaced(without, rest, sizes, active, want):
            return worker_id, without
    return None


def _fates(worker: WorkerInput, grace_over: bool, layout, kept, share, want) -> tuple[RequestFate, ...]:
    fates = []
    for request in sorted(worker.in_flight, key=lambda r: r.request_id):
        holders = sorted(w for w in kept if request.model in layout.get(w, ()))
        if grace_over and holders:
            target = min(holders, key=lambda w: (sum(share[m] / max(1, want[m]) for m in layout[w]), w))
            fates.append(RequestFate(request.request_id, request.model, "move", target))
        else:
            fates.append(RequestFate(request.request_id, request.model, "finish"))
    return tuple(fates)


def _pins(layout, previous, share, active, config) -> set[tuple[str, str]]:
    copies = {}
    for models in layout.values():
        for m in models:
            copies[m] = copies.get(m, 0) + 1
    pins = set()
    for worker_id, models in layout.items():
        for m in models:
            per_copy = share[m] / copies[m]
            floor = config.pin_share * (config.low_water if (worker_id, m) in previous else 1.0)
            if m in active and per_copy >= floor:
                pins.add((worker_id, m))
    return pins


def _placement_changes(before, after, live, draining, released, active):
    copies = {}
    for models in after.values():
        for m in models:
            copies[m] = copies.get(m, 0) + 1
    was_on_leaving = {m for w, models in before.items() if w not in live or w in draining for m in models}
    places, evicts = [], []
    for worker_id in sorted(set(before) | set(after)):
        if worker_id not in live:
            continue
        old, new = before.get(worker_id, frozenset()), after.get(worker_id, frozenset())
        for m in sorted(new - old):
            reason = "moved" if m in was_on_leaving else "replica" if copies[m] > 1 else "placed"
            places.append(Place(m, worker_id, reason))
        for m in sorted(old - new):
            reason = "drained" if worker_id in draining or worker_id in released else "cold" if m not in active else "surplus"
            evicts.append(Evict(m, worker_id, reason))
    return places, evicts
