"""Serving one generation request: submit its choices, read their tokens, answer with JSON or SSE."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web

from services.gateway.answers import CollectedAnswer, StreamedAnswer
from services.gateway.choice_feed import choice_updates
from services.gateway.choices import Choice, plan_choices, sampling_of
from services.gateway.core import GatewayCore
from services.gateway.errors import ApiError
from services.gateway.fanout import Batch, fan_out
from services.gateway.models import ServedModel, find_model
from services.gateway.openai_schema import GenerationSpec, resolve_max_tokens
from services.gateway.responses import DONE, ResponseHead, new_request_id, sse
from services.gateway.stream import Update
from services.gateway.upstream import error_from_info
from shared.protocol import GenerateRequest
from shared.tracing import tracer

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def serve_generation(request: web.Request, core: GatewayCore, spec: GenerationSpec) -> web.StreamResponse:
    started = core.clock()
    model = find_model(core.models, spec.model)
    prompts = model.prompt_ids(spec)
    model.check_logit_bias(spec.logit_bias)
    many = len(prompts) > 1
    budgets = [
        resolve_max_tokens(spec, len(p), model.context_window, f"prompt[{i}]" if many else "")
        for i, p in enumerate(prompts)
    ]
    health = core.watch.check(started)
    if not health.ok:
        raise health.problem
    head = ResponseHead(new_request_id(spec.endpoint), spec.endpoint, int(time.time()), spec.model)
    base = GenerateRequest(
        head.id, model.name, (), sampling_of(spec), core.upstream.inbox, model.entry.slo_class, time.time(), spec.tenant
    )
    echoes = [model.prompt_text(p) for p in spec.prompts] if spec.echo else ()
    choices = plan_choices(base, prompts, budgets, spec.n, echoes)
    attributes = {"request.id": head.id, "model": model.name, "endpoint": spec.endpoint, "stream": spec.stream}
    if len(choices) > 1:
        attributes["choices"] = len(choices)
    with tracer().start_as_current_span("gateway.request", attributes=attributes) as span:
        if len(choices) > 1:
            async with fan_out(core, model, choices, started) as batches:
                return await _answer(request, core, spec, head, model, choices, batches)
        # A lone choice needs no task of its own: the handler reads its tokens.
        choice = choices[0]
        async with core.upstream.generate(choice.request) as feed:
            batches = _one_by_one(choice.index, choice_updates(core, model, choice, feed, started, span))
            return await _answer(request, core, spec, head, model, choices, batches)


async def _one_by_one(index: int, updates: AsyncIterator[Update]) -> AsyncIterator[Batch]:
    async for update in updates:
        yield [(index, update)]


async def _answer(
    request: web.Request, core: GatewayCore, spec: GenerationSpec, head: ResponseHead, model: ServedModel,
    choices: list[Choice], batches: AsyncIterator[Batch],
) -> web.StreamResponse:
    if spec.stream:
        return await _stream(request, core, StreamedAnswer(head, choices, spec, model.token_text), batches)
    return await _collect(CollectedAnswer(head, choices, spec, model.token_text), batches)


async def _collect(answer: CollectedAnswer, batches: AsyncIterator[Batch]) -> web.Response:
    async for batch in batches:
        for index, update in batch:
            if update.error is not None:
                raise error_from_info(update.error)
            answer.add(index, update)
    return web.json_response(answer.body())


async def _stream(
    request: web.Request, core: GatewayCore, answer: StreamedAnswer, batches: AsyncIterator[Batch]
) -> web.StreamResponse:
    response = None
    try:
        async for batch in batches:
            events, failed = [], None  # events are written at once: one socket write per batch
            for index, update in batch:
                if update.error is not None:
                    failed = error_from_info(update.error)
                    break
                events += answer.events(index, update)
            if response is None:  # headers wait for the first token, so an early error keeps its status
                if failed is not None:
                    raise failed
                response = web.StreamResponse(headers=SSE_HEADERS)
                await response.prepare(request)
            if answer.done:
                await response.write_eof(b"".join(events))  # the last events and the body's end: one write
            elif events:
                await response.write(b"".join(events))
            if failed is not None:
                raise failed
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
