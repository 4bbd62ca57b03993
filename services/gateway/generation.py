"""Serving one generation request: submit it, read its tokens, answer with JSON or SSE."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web
from opentelemetry.trace import Span

from services.gateway.core import GatewayCore
from services.gateway.errors import ApiError
from services.gateway.models import ServedModel, find_model
from services.gateway.openai_schema import GenerationSpec, resolve_max_tokens
from services.gateway.responses import DONE, ResponseHead, new_request_id, sse
from services.gateway.stream import TextStream, Update
from services.gateway.upstream import TokenFeed, error_from_info
from services.router.slo.attainment import RequestSlo, request_slo
from shared.tracing import tracer
from shared.protocol import GenerateRequest, Sampling

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def serve_generation(request: web.Request, core: GatewayCore, spec: GenerationSpec) -> web.StreamResponse:
    started = core.clock()
    model = find_model(core.models, spec.model)
    prompt = model.prompt_ids(spec)
    max_tokens = resolve_max_tokens(spec, len(prompt), model.context_window)
    health = core.watch.check(started)
    if not health.ok:
        raise health.problem
    head = ResponseHead(new_request_id(spec.endpoint), spec.endpoint, int(time.time()), spec.model)
    sampling = Sampling(
        max_tokens=max_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        top_k=spec.top_k,
        seed=spec.seed,
        stop=spec.stop,
        ignore_eos=spec.ignore_eos,
        logprobs=spec.logprobs,
    )
    generate = GenerateRequest(
        head.id, model.name, prompt, sampling, core.upstream.inbox, model.entry.slo_class, time.time(), spec.tenant
    )
    text = TextStream(model.tokenizer, spec.stop, prompt)
    attributes = {"request.id": head.id, "model": model.name, "endpoint": spec.endpoint, "stream": spec.stream}
    with tracer().start_as_current_span("gateway.request", attributes=attributes) as span:
        async with core.upstream.generate(generate) as feed:
            updates = _updates(core, model, feed, text, started, span)
            if spec.stream:
                return await _stream(request, core, spec, head, model, updates)
            return await _collect(spec, head, model, updates)


async def _updates(
    core: GatewayCore, model: ServedModel, feed: TokenFeed, text: TextStream, started: float, span: Span
) -> AsyncIterator[Update]:
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
    """Counts a completed request against its model's SLO class, on /metrics and on its span."""
    core.metrics.observe_request_slo(model.name, slo)
    attributes = {"ttft_s": slo.ttft_s, "slo_attainment": slo.attainment, "slo_strict": slo.strict}
    if slo.mean_tbt_s is not None:
        attributes["mean_tbt_s"] = slo.mean_tbt_s
    span.set_attributes(attributes)


async def _collect(spec: GenerationSpec, head: ResponseHead, model: ServedModel, updates) -> web.Response:
    parts, token_ids, logprobs = [], [], []
    async for update in updates:
        if update.error is not None:
            raise error_from_info(update.error)
        parts.append(update.text)
        token_ids += update.token_ids
        logprobs += update.logprobs
        last = update
    chosen = head.logprobs(token_ids, logprobs, model.token_text) if spec.logprobs else None
    return web.json_response(head.response("".join(parts), last.finish_reason, last.usage, chosen))


async def _stream(
    request: web.Request, core: GatewayCore, spec: GenerationSpec, head: ResponseHead, model: ServedModel, updates
) -> web.StreamResponse:
    response = None
    sent_chars = 0
    try:
        async for update in updates:
            if update.error is not None:
                raise error_from_info(update.error)
            if response is None:  # headers wait for the first token, so an early error keeps its status
                response = web.StreamResponse(headers=SSE_HEADERS)
                await response.prepare(request)
                if (opener := head.first_chunk()) is not None:
                    await response.write(sse(opener))
            chosen = None
            if spec.logprobs and update.token_ids:
                chosen = head.logprobs(update.token_ids, update.logprobs, model.token_text, sent_chars)
            events = []  # written at once: one socket write per update
            if update.text or chosen:
                events.append(sse(head.delta_chunk(update.text, None, chosen)))
                sent_chars += len(update.text)
            if update.finish_reason is not None:
                events.append(sse(head.delta_chunk("", update.finish_reason, None)))
                if spec.include_usage:
                    events.append(sse(head.usage_chunk(update.usage)))
                events.append(DONE)
            if update.finish_reason is not None:
                await response.write_eof(b"".join(events))  # the last events and the body's end: one write
            elif events:
                await response.write(b"".join(events))
    except ApiError as e:
        if response is None:
            raise
        core.metrics.errors.inc(status=str(e.status), code=e.code or e.type)
        await _write_quietly(response, sse(e.body()) + DONE)  # mid-stream: the status line is long gone
    except ConnectionResetError:
        pass  # the client left; leaving the `async with` unfinished cancels the request upstream
    return response


async def _write_quietly(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionResetError:
        pass
