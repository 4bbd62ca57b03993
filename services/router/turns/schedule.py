"""One worker's turns: the requests it holds, the turn it runs, and which turn comes next.

Two disciplines share this bookkeeping:

- token (after Aegaeon, SOSP'25, §4): rounds in which every model with work gets one turn.
  A round forms one batch per model (FCFS; split when the KV cache cannot hold it) and gives
  each a quota from the TBT objective (`slo.quota.decode_quotas`). A turn first prefills the
  model's newcomers, then decodes the whole batch, so a newcomer costs no extra switch.
  Only a newcomer whose TTFT deadline would pass before its model's turn gets a prefill turn
  of its own at once (grouped FCFS, `batching.prefill_groups`). A lone batch runs without a
  quota and is replaced as soon as anything new arrives.
- request (the baseline of request-level serving, e.g. ServerlessLLM): one model at a time,
  all of its requests together, until none is left; only then the next model.

The schedule never talks to the worker: `next_turn` returns a RunTurn for the policy to send,
`should_replace` says whether the running turn must give way now.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from services.router.config import PolicyConfig
from services.router.slo.quota import TurnInput, decode_quotas, round_load
from services.router.turns.batching import decode_batches, prefill_groups
from services.router.turns.estimates import WorkerEstimates
from services.router.turns.held import Held, pages_for
from services.router.views import WorkerView
from shared.protocol import RunTurn, TurnReport


class WorkerSchedule:
    def __init__(self, worker_id: str, config: PolicyConfig, estimates: WorkerEstimates, new_turn_id: Callable[[], int]):
        self.worker_id = worker_id
        self.config = config
        self.estimates = estimates
        self._new_turn_id = new_turn_id
        self.held: dict[str, Held] = {}
        self.turn: RunTurn | None = None
        """The latest turn sent: running, or about to replace the running one."""
        self.turn_sent_at = 0.0
        self.device_model: str | None = None
        """The model the latest turn computes (what the device holds once it starts)."""
        self._round: list[tuple[list[str], float]] = []
        """Decode batches (request ids) still to take their turn in this round, with quotas."""
        self._last_turn: dict[str, int] = {}
        """Model -> number of the latest turn it got, so each round starts with the longest-waiting."""
        self._turns = 0
        self.prefill_only = False
        """Disaggregated mode: this worker only prefills (its requests move on after their first token)."""
        self._version = 0
        """Bumped by every change that can turn should_replace's answer (held set, turn, first tokens, finishes)."""
        self._stays: tuple[int, int] | None = None
        """(version, the view's report seq) when should_replace last said no: the answer holds until either moves."""

    # ---- events ------------------------------------------------------------------------

    def add(self, held: Held) -> None:
        self.held[held.request_id] = held
        self._version += 1

    def remove(self, request_id: str) -> Held | None:
        self._version += 1
        return self.held.pop(request_id, None)

    def progress(self, request_id: str, produced_here: int) -> None:
        held = self.held.get(request_id)
        if held is not None and produced_here > 0:
            if not held.prefilled or produced_here >= held.max_new:
                self._version += 1
            held.produced = max(held.produced, produced_here)
            held.prefilled = held.on_device = True

    def on_report(self, report: TurnReport, view: WorkerView) -> bool:
        """Learns from a finished turn; True when it was the latest turn (the worker is idle)."""
        self._version += 1
        switched = report.switch_s > 0
        self.estimates.observe(report, view.weight_bytes.get(report.model, 0), switched)
        for rid in report.prefilled:
            if (held := self.held.get(rid)) is not None:
                held.prefilled = held.on_device = True
        if self.turn is None or report.turn_id != self.turn.turn_id:
            return False
        self.turn = None
        return True

    def forget_turn(self) -> None:
        """The latest turn or its report went missing: plan afresh."""
        self.turn = None
        self._round = []
        self._version += 1

    # ---- decisions ---------------------------------------------------------------------

    def next_turn(self, view: WorkerView, now: float) -> RunTurn | None:
        plan = self._plan_token(view, now) if self.config.scheduling == "token" else self._plan_request(view)
        if plan is None:
            return None
        model, members, quota, until_prefilled, prefetch = plan
        park = self._make_room(view, model, members)
        for held in members:
            held.on_device = True
        turn = RunTurn(
            self._new_turn_id(),
            model,
            tuple(h.request_id for h in members),
            quota,
            until_prefilled,
            tuple(park),
            prefetch if prefetch != model else None,
            self.prefill_only and self.config.kv_handoff,
            admit_new=math.isinf(quota) and not until_prefilled,
        )
        self.turn, self.turn_sent_at, self.device_model = turn, now, model
        self._version += 1
        self._turns += 1
        self._last_turn[model] = self._turns
        return turn

    def should_replace(self, view: WorkerView, now: float) -> bool:
        """Whether the running turn must give way now. The answer depends on the held requests,
        the turn and the worker's report, not on the clock, so a no is remembered until one moves."""
        if self._stays == (self._version, view.seq):
            return False
        replace = self._should_replace(view)
        self._stays = None if replace else (self._version, view.seq)
        return replace

    def _should_replace(self, view: WorkerView) -> bool:
        turn = self.turn
        if turn is None or turn.until_prefilled:
            return False
        members = set(turn.request_ids)
        newcomers = [
            h for h in self.held.values()
            if h.request_id not in members and (h.remaining or not h.prefilled)
            and not (turn.admit_new and h.model == turn.model)  # it joined the running turn at the worker
        ]
        if self.config.scheduling == "request":
            return any(h.model == turn.model for h in newcomers) and len(members) < self.config.max_batch_size
        if self.prefill_only:
            return bool(newcomers)
        if math.isinf(turn.quota_s):
            return bool(newcomers)  # a lone batch gives way to anything new
        if self._joiners(view):
            return True  # their model is on the device: they join the running turn (beyond Aegaeon)
        # Otherwise a bounded turn gives way only when waiting it out would break a TTFT objective.
        turn_ends = self.turn_sent_at + turn.quota_s
        return any(turn_ends + self._prefill_cost(view, [h]) > h.ttft_deadline for h in newcomers if not h.prefilled)

    # ---- token-level -------------------------------------------------------------------

    def _plan_token(self, view: WorkerView, now: float):
        waiting = [h for h in self.held.values() if not h.prefilled]
        if self.prefill_only:
            if not waiting:
                return None
            group = prefill_groups(waiting, self.config.max_prefill_group)[0]
            return group[0].model, group, math.inf, True, None
        extended = self._extend_running(view, now)
        if extended is not None:
            return extended
        urgent = self._urgent_group(waiting, view, now)
        if urgent is not None:
            return self._urgent_turn(urgent, view, now)
        work = self._decoding() + waiting
        if not work:
            return None
        if not self._round:
            self._round = self._new_round(work, view)
        while self._round:
            ids, quota = self._round.pop(0)
            batch = self._batch_now(ids, view)
            if batch:
                if not self._round and not self._others_waiting(batch):
                    quota = math.inf  # alone now: no one to give way to
                fresh = [h for h in batch if not h.prefilled]
                if fresh and math.isfinite(quota):  # newcomers prefill first, within Q_max
                    quota = max(quota, min(quota + self._prefill_cost(view, fresh, switching=False), self.config.max_quota_s))
                return batch[0].model, batch, quota, False, self._prefetch_after(batch[0].model, quota, view, now)
        return None

    def _extend_running(self, view: WorkerView, now: float):
        """The running bounded turn again, with the newcomers of its model (already on the
        device, so they cost no switch) and the rest of its quota plus their prefill time."""
        turn = self.turn
        if turn is None or turn.until_prefilled or math.isinf(turn.quota_s):
            return None
        joining = self._joiners(view)
        if not joining:
            return None
        batch = [self.held[r] for r in turn.request_ids if r in self.held] + joining
        left = max(self.turn_sent_at + turn.quota_s - now, 0.0)
        return turn.model, batch, left + self._prefill_cost(view, joining, switching=False), False, turn.prefetch

    def _joiners(self, view: WorkerView) -> list[Held]:
        """Newcomers that can join the running bounded turn: of its model, in no later batch of
        the round, while the batch size and the KV pages last."""
        turn = self.turn
        if turn is None or turn.until_prefilled or math.isinf(turn.quota_s):
            return []
        members = [self.held[r] for r in turn.request_ids if r in self.held]
        taken = {r for ids, _ in self._round for r in ids} | set(turn.request_ids)
        return self._room_for(turn.model, members, taken, view, lambda h: not h.prefilled)

    def _room_for(self, model: str, batch: list[Held], taken: set[str], view: WorkerView, wanted) -> list[Held]:
        """Requests of `model`, not `taken` and `wanted`, in arrival order, that fit beside the
        batch within max_batch_size and the worker's KV pages."""
        block, grow = view.block_tokens_of(model), self._growth(view)
        pages = sum(pages_for(h.context + grow(h), block) for h in batch)
        joining: list[Held] = []
        for held in sorted(self.held.values(), key=lambda h: h.arrival):
            if held.model != model or held.request_id in taken or not wanted(held):
                continue
            need = pages_for(held.context + grow(held), block)
            if len(batch) + len(joining) >= self.config.max_batch_size:
                break
            if view.total_kv_pages > 0 and pages + need > view.total_kv_pages:
                break
            joining.append(held)
            pages += need
        return joining

    def _urgent_group(self, waiting: list[Held], view: WorkerView, now: float) -> list[Held] | None:
        """Newcomers normally prefill at the start of their model's next turn, which saves a
        switch. A group whose TTFT deadline would pass before that turn comes gets a prefill
        turn of its own now (grouped FCFS among those, Aegaeon §4.2)."""
        if not waiting:
            return None
        wait = self._waits(view)
        late = [
            h for h in waiting
            if now + wait.get(h.model, wait[None]) + self._prefill_cost(view, [h]) > h.ttft_deadline - self._margin(h)
        ]
        if not late:
            return None
        late_models = {h.model for h in late}
        groups = prefill_groups([h for h in waiting if h.model in late_models], self.config.max_prefill_group)
        return groups[0]

    def _urgent_turn(self, urgent: list[Held], view: WorkerView, now: float):
        """The urgent group's model takes its turn of the round now: its newcomers prefill, then
        its batch decodes for the batch's quota. A prefill-only turn would pay the model's
        switch twice, once now and again at its turn in the round. A model with no batch in the
        round decodes for the round's median quota (prefill-only when it is alone)."""
        model = urgent[0].model
        at = next((i for i, (ids, _) in enumerate(self._round) if any(self.held[r].model == model for r in ids if r in self.held)), None)
        if at is None:
            quotas = sorted(q for _, q in self._round if math.isfinite(q))
            if not quotas:
                return model, urgent, math.inf, True, self._next_round_model()
            ids, quota = [h.request_id for h in urgent], quotas[len(quotas) // 2]
        else:
            ids, quota = self._round.pop(at)
        batch = self._batch_now(list(dict.fromkeys([*(h.request_id for h in urgent), *ids])), view)
        fresh = [h for h in batch if not h.prefilled]
        quota = min(quota + self._prefill_cost(view, fresh, switching=False), self.config.max_quota_s)
        return model, batch, quota, False, self._prefetch_after(model, quota, view, now)

    def _waits(self, view: WorkerView) -> dict[str | None, float]:
        """Estimated seconds until each model's next turn starts; None: a model not in this round."""
        waits: dict[str | None, float] = {}
        elapsed = 0.0
        previous = self.device_model
        for ids, quota in self._round:
            held = [self.held[r] for r in ids if r in self.held]
            if not held:
                continue
            model = held[0].model
            if model != previous:
                elapsed += self.estimates.switch_s(view.weight_bytes.get(model, 0))
            waits.setdefault(model, elapsed)
            elapsed += quota if math.isfinite(quota) else 0.0
            previous = model
        waits[None] = elapsed
        return waits

    def _margin(self, held: Held) -> float:
        return 0.1 * held.ttft_s

    def _new_round(self, work: list[Held], view: WorkerView) -> list[tuple[list[str], float]]:
        c = self.config
        batches = decode_batches(work, view.total_kv_pages, view.block_tokens_of, self._growth(view), c.max_batch_size)
        # Models that waited longest first; among those never served, the one on the device.
        batches.sort(
            key=lambda b: (self._last_turn.get(b[0].model, 0), b[0].model != self.device_model, min(h.arrival for h in b))
        )
        if len(batches) == 1:
            return [([h.request_id for h in batches[0]], math.inf)]
        inputs = []
        for i, batch in enumerate(batches):
            model, previous = batch[0].model, batches[i - 1][0].model
            weight_bytes = view.weight_bytes.get(model, 0)
            step = self.estimates.decode_step_s(model, weight_bytes, sum(h.context for h in batch))
            switch = self.estimates.switch_s(weight_bytes) if model != previous else 0.0
            inputs.append(TurnInput(str(i), step, max(switch, c.min_switch_s), min(h.tbt_s for h in batch)))
        quotas = decode_quotas(inputs, c.max_quota_s)
        # The formula can ask for less than a step when switches are cheap; a turn that short
        # pays a bus round trip per token, so a turn lasts at least min_turn_steps steps.
        floor = {t.model: c.min_turn_steps * t.step_s for t in inputs}
        return [([h.request_id for h in b], max(quotas[str(i)], floor[str(i)])) for i, b in enumerate(batches)]

    def _batch_now(self, ids: list[str], view: WorkerView) -> list[Held]:
        """The batch as it stands at its turn: finished requests gone, and requests of its model
        that arrived since the round was planned (and no later batch holds) joined while room lasts."""
        batch = [self.held[r] for r in ids if r in self.held and (self.held[r].remaining or not self.held[r].prefilled)]
        if not batch:
            return []
        taken = {h.request_id for h in batch} | {r for rest, _ in self._round for r in rest}
        return batch + self._room_for(batch[0].model, batch, taken, view, lambda h: h.remaining or not h.prefilled)

    def _others_waiting(self, batch: list[Held]) -> bool:
        members = {h.request_id for h in batch}
        return any(h.request_id not in members and (h.remaining or not h.prefilled) for h in self.held.values())

    def _prefetch_after(self, model: str, quota: float, view: WorkerView, now: float) -> str | None:
        """The model to copy in behind this turn: that of the newcomer that will be most urgent
        when the turn ends (its model's turn then comes first, `_urgent_group`), else the
        round's next."""
        if math.isfinite(quota):
            ends = now + quota
            wait = self._waits(view)
            urgent = [
                h for h in self.held.values()
                if not h.prefilled and h.model != model
                and ends + wait.get(h.model, wait[None]) + self._prefill_cost(view, [h]) > h.ttft_deadline - self._margin(h)
            ]  # fmt: skip
            if urgent:
                return min(urgent, key=lambda h: h.ttft_deadline).model
        return self._next_round_model()

    def _next_round_model(self) -> str | None:
        for ids, _ in self._round:
            for rid in ids:
                if rid in self.held:
                    return self.held[rid].model
        return None

    def load_with(self, view: WorkerView, model: str, tbt_s: float) -> float:
        """The round load (`slo.quota.round_load`) of this worker's live batches, one batch per
        model, with a request of `model` added."""
        context: dict[str, int] = {model: 0}
        tbt: dict[str, float] = {model: tbt_s}
        for h in self.held.values():
            if h.remaining or not h.prefilled:
                context[h.model] = context.get(h.model, 0) + h.context
                tbt[h.model] = min(tbt.get(h.model, h.tbt_s), h.tbt_s)
        inputs = []
        for m, ctx in context.items():
            weight_bytes = view.weight_bytes.get(m, 0)
            step = self.estimates.decode_step_s(m, weight_bytes, ctx)
            switch = max(self.estimates.switch_s(weight_bytes), self.config.min_switch_s)
            inputs.append(TurnInput(m, step, switch, tbt[m]))
        return round_load(inputs, self.config.max_quota_s)

    # ---- request-level -----------------------------------------------------------------

    def _plan_request(self, view: WorkerView):
        live = sorted((h for h in self.held.values() if h.remaining or not h.prefilled), key=lambda h: h.arrival)
        if not live:
            return None
        models = [h.model for h in live]
        model = self.device_model if self.device_model in models else models[0]
        members = [h for h in live if h.model == model][: self.config.max_batch_size]
        following = next((m for m in models if m != model), None)
        return model, members, math.inf, False, following

    # ---- shared ------------------------------------------------------------------------

    def _decoding(self) -> list[Held]:
        return [h for h in self.held.values() if h.prefilled and h.remaining]

    def _growth(self, view: WorkerView) -> Callable[[Held], int]:
        """Tokens a request may add during one turn, for KV sizing: a page of headroom."""
        return lambda h: min(h.remaining, max(view.block_tokens_of(h.model), 1))

    def _prefill_cost(self, view: WorkerView, group: Iterable[Held], switching: bool = True) -> float:
        group = list(group)
        model = group[0].model
        weight_bytes = view.weight_bytes.get(model, 0)
        tokens = sum(max(h.prompt_tokens - h.cached_tokens, 1) for h in group)
        cost = self.estimates.prefill_s(model, weight_bytes, tokens)
        if switching and model != self.device_model:
            cost += self.estimates.switch_s(weight_bytes)
        return cost

    def _make_room(self, view: WorkerView, model: str, members: list[Held]) -> list[str]:
        """KV of other requests to park in host memory so that the turn's requests fit on the
        device: the requests that will wait longest go first."""
        total = view.total_kv_pages
        if total <= 0:
            return []
        ids = {h.request_id for h in members}
        grow = self._growth(view)
        need = sum(pages_for(h.context + grow(h), view.block_tokens_of(h.model)) for h in members)
        others = [h for h in self.held.values() if h.on_device and h.request_id not in ids]
        used = sum(pages_for(h.context, view.block_tokens_of(h.model)) for h in others)
        upcoming = [r for batch, _ in self._round for r in batch]
        order = {rid: i for i, rid in enumerate(upcoming)}
        park = []
        for held in sorted(others, key=lambda h: order.get(h.request_id, len(order)), reverse=True):
            if used + need <= total:
                break
            used -= pages_for(held.context, view.block_tokens_of(held.model))
            held.on_device = False
            park.append(held.request_id)
        return park
