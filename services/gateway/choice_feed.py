"""One choice's tokens as Updates: reordered and detokenized, timed for the gateway's latency and SLO metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

from opentelemetry.trace import Span

from services.gateway.choices import Choice
from services.gateway.core import GatewayCore
from services.gateway.models import ServedModel
from services.gateway.stream import TextStream, Update
from services.gateway.upstream import TokenFeed
from services.router.slo.attainment import RequestSlo, request_slo


async def choice_updates(
    core: GatewayCore, model: ServedModel, choice: Choice, feed: TokenFeed, started: float, span: Span
) -> AsyncIterator[Update]:
    """The choice's updates until (and with) the one that finishes it."""
    request = choice.request
    text = TextStream(model.tokenizer, request.sampling.stop, request.prompt_token_ids)
    last = None
    token_times: list[float] = []  # when each token, by index, was ready to go to the client
    held = None  # an error that arrived in a batch: it goes out after the tokens before it
    while True:
        update, held = held or text.push(await feed.next_chunk()), None
        # Chunks that queued up behind this one go out with it: one SSE event and one socket
        # write for the lot instead of one per token, which is what lets a busy gateway catch up.
        while not update.finished and (chunk := feed.ready_chunk()) is not None:
            later = text.push(chunk)
            if later.error is not None:
                held = later
                break
            update.extend(later)
        if update.token_ids:
            now = core.clock()
            if last is None:
                core.metrics.ttft.observe(now - started, model=model.name)
                if len(update.token_ids) > 1:  # tokens that came with the first arrived together
                    core.metrics.token_latency.observe(0.0, model=model.name)
            else:
                core.metrics.token_latency.observe((now - last) / len(update.token_ids), model=model.name)
            last = now
            token_times += [now] * len(update.token_ids)
            core.metrics.tokens_out.inc(len(update.token_ids), model=model.name)
        if update.stopped_early:
            feed.cancel_reason = "stop string reached"
        elif update.finished:
            feed.finished = True
        if not (update.token_ids or update.finished):
            continue  # a chunk that arrived ahead of its turn: nothing to show yet
        if update.finish_reason is not None and token_times:
            _record_slo(core, model, span, request_slo(started, token_times, model.slo.ttft_s, model.slo.tbt_s))
        yield update
        if update.finished:
            return


def _record_slo(core: GatewayCore, model: ServedModel, span: Span, slo: RequestSlo) -> None:
    """Counts a completed choice against its model's SLO class, on /metrics and on its span."""
    core.metrics.observe_request_slo(model.name, slo)
    attributes = {"ttft_s": slo.ttft_s, "slo_attainment": slo.attainment, "slo_strict": slo.strict}
    if slo.mean_tbt_s is not None:
        attributes["mean_tbt_s"] = slo.mean_tbt_s
    span.set_attributes(attributes)
