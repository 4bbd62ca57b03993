"""Per-request SLO metrics: a request served on time and one that stalls look different on /metrics and on their spans.

The model's SLO class (TTFT 2 s, TBT 0.1 s) comes from the catalog. The stalled request gets
two tokens at once and the rest STALL_S later: token 2, due 2.2 s after acceptance at the
latest, is at least STALL_S - 2.2 s late, so the request's attainment is at most
2.2 / STALL_S (0.73), however slow the machine.
"""

import asyncio
import json
from dataclasses import dataclass

import aiohttp
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.gateway import generation
from shared.protocol import GenerateRequest, TokenChunk, Usage
from tests.gateway.conftest import MODULE, SMOL, EchoWorker, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="module")

TTFT_S, TBT_S = 2.0, 0.1
STALL_S = 3.0
ON_TIME = "tokens that all come at once, well within their deadlines"
STALLED = "[stall-mid] tokens that pause after the first two"


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory, model_store):
    path = tmp_path_factory.mktemp("catalog") / "catalog.toml"
    path.write_text(
        f"[slo_classes.interactive]\nttft_s = {TTFT_S}\ntbt_s = {TBT_S}\n\n"
        f'[[models]]\nname = "{SMOL}"\npath = "{model_store.path(SMOL)}"\nslo_class = "interactive"\n'
    )
    return path


class StallingWorker(EchoWorker):
    """The echo worker, plus [stall-mid]: two tokens at once, then the rest STALL_S later."""

    async def _answer(self, request: GenerateRequest) -> None:
        if "[stall-mid]" not in self.tok.decode(list(request.prompt_token_ids)):
            return await super()._answer(request)
        ids = request.prompt_token_ids
        await self._send(request, TokenChunk(request.id, 0, ids[:2]))
        await asyncio.sleep(STALL_S)
        usage = Usage(len(ids), len(ids))
        await self._send(request, TokenChunk(request.id, 2, ids[2:], finish_reason="length", usage=usage))


@dataclass
class Served:
    on_time_id: str
    stalled_id: str
    completion_tokens: int
    """Of both requests together."""
    metrics: dict[str, float]
    spans: dict[str, dict]
    """gateway.request span attributes by request id."""


@pytest_asyncio.fixture(**MODULE)
async def served(gateway, router, nc, tokenizer):
    worker = await StallingWorker(nc, tokenizer).start()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(generation, "tracer", lambda: provider.get_tracer("test"))
            await wait_ready(gateway)
            async with aiohttp.ClientSession() as http:
                url = gateway.base_url + "/v1/completions"
                body = {"model": SMOL, "max_tokens": 100}
                stream = {"stream": True, "stream_options": {"include_usage": True}}
                on_time, stalled, rejected = await asyncio.gather(
                    _json(http.post(url, json=body | {"prompt": ON_TIME})),
                    _streamed(http.post(url, json=body | stream | {"prompt": STALLED})),
                    _json(http.post(url, json=body | {"prompt": "no token at all [429]"}), status=429),
                )
                assert rejected["error"]["type"] == "rate_limit_error"  # an error before any token: not counted
                async with http.get(gateway.base_url + "/metrics") as r:
                    metrics = _parse(await r.text())
    finally:
        await worker.stop()
    spans = {s.attributes["request.id"]: dict(s.attributes) for s in exporter.get_finished_spans()}
    tokens = on_time["usage"]["completion_tokens"] + stalled["usage"]["completion_tokens"]
    return Served(on_time["id"], stalled["id"], tokens, metrics, spans)


async def _json(request, status: int = 200) -> dict:
    async with request as r:
        assert r.status == status, await r.text()
        return await r.json()


async def _streamed(request) -> dict:
    """The stream's id and usage, from its last chunk."""
    async with request as r:
        assert r.status == 200, await r.text()
        events = [line[6:] for line in (await r.text()).splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return json.loads(events[-2])


def _parse(text: str) -> dict[str, float]:
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")}


def sample(served: Served, metric: str, **labels) -> float:
    key = metric + "{" + ",".join(f'{k}="{v}"' for k, v in ({"model": SMOL} | labels).items()) + "}"
    return served.metrics.get(key, 0.0)


async def test_attainment_and_strict_counters_tell_on_time_from_stalled(served):
    attainment = "tp_request_slo_attainment_bucket"
    assert sample(served, attainment, le="0.8") == 1  # the stalled one
    assert sample(served, attainment, le="0.99") == 1  # the on-time one is above 0.99: it is 1
    assert sample(served, attainment, le="1") == sample(served, "tp_request_slo_attainment_count") == 2
    assert sample(served, "tp_requests_slo_strict_total", met="true") == 1
    assert sample(served, "tp_requests_slo_strict_total", met="false") == 1


async def test_ttft_once_per_request_and_every_gap_between_tokens(served):
    assert sample(served, "tp_request_ttft_seconds_count") == 2
    gaps = served.completion_tokens - 2
    assert sample(served, "tp_request_tbt_seconds_count") == gaps
    assert sample(served, "tp_request_tbt_seconds_bucket", le="2.5") == gaps - 1  # the stall: one gap of >= 3 s


async def test_the_request_spans_carry_the_figures(served):
    on_time, stalled = served.spans[served.on_time_id], served.spans[served.stalled_id]
    assert on_time["slo_attainment"] == 1.0 and on_time["slo_strict"] is True
    assert stalled["slo_attainment"] <= (TTFT_S + 2 * TBT_S) / STALL_S and stalled["slo_strict"] is False
    assert stalled["mean_tbt_s"] > TBT_S and stalled["ttft_s"] >= 0
    assert set(on_time) >= {"ttft_s", "mean_tbt_s", "slo_attainment", "slo_strict"}
