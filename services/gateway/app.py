"""The aiohttp application: routes, and one middleware that turns every failure into OpenAI-style JSON."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from services.gateway.core import GatewayCore
from services.gateway.errors import ApiError, api_error
from services.gateway.generation import serve_generation
from services.gateway.models import ServedModel, find_model
from services.gateway.openai_schema import parse_chat, parse_completion, parse_json_body
from shared.metrics import CONTENT_TYPE

log = logging.getLogger("tokenpool.gateway")

CORE = web.AppKey("core", GatewayCore)
ERROR_CODE = web.ResponseKey("error_code", str)
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/models/{model}", "/health", "/metrics")


def build_app(core: GatewayCore) -> web.Application:
    app = web.Application(client_max_size=core.config.max_body_bytes, middlewares=[_errors_and_metrics])
    app[CORE] = core
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/models/{model:.+}", _model)  # a model's name may hold a slash
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    return app


async def _completions(request: web.Request) -> web.StreamResponse:
    core = request.app[CORE]
    with core.admit():
        spec = parse_completion(parse_json_body(await request.read()))
        return await serve_generation(request, core, spec)


async def _chat(request: web.Request) -> web.StreamResponse:
    core = request.app[CORE]
    with core.admit():
        spec = parse_chat(parse_json_body(await request.read()))
        return await serve_generation(request, core, spec)


async def _models(request: web.Request) -> web.Response:
    data = [_model_object(m) for m in request.app[CORE].models.values()]
    return web.json_response({"object": "list", "data": data})


async def _model(request: web.Request) -> web.Response:
    return web.json_response(_model_object(find_model(request.app[CORE].models, request.match_info["model"])))


def _model_object(m: ServedModel) -> dict:
    return {"id": m.name, "object": "model", "created": 0, "owned_by": "tokenpool", "max_model_len": m.context_window}


async def _health(request: web.Request) -> web.Response:
    core = request.app[CORE]
    health = core.watch.check(core.clock())
    return web.json_response(health.body, status=200 if health.ok else 503)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[CORE].metrics.render().encode(), headers={"Content-Type": CONTENT_TYPE})


@web.middleware
async def _errors_and_metrics(request: web.Request, handler) -> web.StreamResponse:
    metrics = request.app[CORE].metrics
    endpoint = _endpoint(request)
    try:
        response = await handler(request)
    except ApiError as e:
        response = _error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        response = _error_response(_from_http_exception(request, e))
    except asyncio.CancelledError:
        metrics.requests.inc(endpoint=endpoint, status="499")  # the client went away
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        response = _error_response(api_error(500, "the gateway hit an internal error; it is logged"))
    metrics.requests.inc(endpoint=endpoint, status=str(response.status))
    if response.status >= 400:
        metrics.errors.inc(status=str(response.status), code=response.get(ERROR_CODE) or "none")
    return response


def _endpoint(request: web.Request) -> str:
    """The route a request took, as the requests counter labels it."""
    if request.path in ROUTES:
        return request.path
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None and resource.canonical in ROUTES else "other"


def _error_response(e: ApiError) -> web.Response:
    response = web.json_response(e.body(), status=e.status, headers=e.headers())
    response[ERROR_CODE] = e.code or e.type  # for the errors counter
    return response


def _from_http_exception(request: web.Request, e: web.HTTPException) -> ApiError:
    if e.status == 404:
        return api_error(404, f"no route {request.path}; the API serves {', '.join(ROUTES)}", code="not_found")
    if e.status == 405:
        allowed = ", ".join(sorted(getattr(e, "allowed_methods", ()) or ()))
        return api_error(
            405, f"{request.method} is not allowed on {request.path}; use {allowed}", code="method_not_allowed",
            extra_headers={"Allow": allowed},
        )
    if e.status == 413:
        limit = request.app[CORE].config.max_body_bytes
        return api_error(413, f"the request body is larger than this server's limit of {limit} bytes")
    return api_error(e.status, e.text or e.reason, code=e.reason.lower().replace(" ", "_"))
