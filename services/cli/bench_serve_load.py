"""The load of `tokenpool bench serve`: closed-loop streaming clients and what they saw.

    records = asyncio.run(run_load(LoadSpec(url, "demo-llama", PROMPT, streams=100, tokens=64, duration_s=30)))
    summary = summarize(records, warmup_s=2.0)

Each of `streams` clients POSTs a streaming /v1/completions (ignore_eos, so every request
yields exactly `tokens` tokens), reads it to the end, and sends its next request at once,
until `duration_s` has passed or `max_requests` were sent. A client stamps the arrival of
every SSE event that carries text: TTFT is request start to the first one, TBT each gap
between consecutive ones of the same request (an event can carry several tokens when the
stack coalesced them: tokens_per_chunk). TPOT is a request's per-token interval after its
first token: (last event - first event) / (tokens - 1). request_per_token_ms is its whole
latency divided by its tokens: unlike TBT and TPOT it cannot look small when a backlog
delivers a request's tokens in one burst after a long wait for the first.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass(frozen=True)
class LoadSpec:
    base_url: str
    model: str
    prompt: str
    streams: int
    tokens: int
    duration_s: float
    max_requests: int = 1_000_000
    request_timeout_s: float = 60.0


@dataclass
class RequestRecord:
    started: float
    """Seconds since the load began."""
    ended: float = 0.0
    ttft_s: float | None = None
    tbt_s: list[float] = field(default_factory=list)
    tokens: int = 0
    """completion_tokens from the final usage chunk."""
    error: str | None = None
    events: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the load began, tokens it carried) of every event with tokens; the count
    comes from the event's logprobs when the request asked for them (an event may carry
    tokens whose text is not complete yet), else 1 per event with text."""


async def run_load(spec: LoadSpec) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    begin = time.perf_counter()
    stop_at = begin + spec.duration_s
    budget = [spec.max_requests]
    body = {
        "model": spec.model,
        "prompt": spec.prompt,
        "max_tokens": spec.tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    url = spec.base_url + "/v1/completions"
    timeout = aiohttp.ClientTimeout(total=spec.request_timeout_s)
    connector = aiohttp.TCPConnector(limit=spec.streams, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            while time.perf_counter() < stop_at and budget[0] > 0:
                budget[0] -= 1
                record = RequestRecord(started=time.perf_counter() - begin)
                records.append(record)
                await stream_request(session, url, body, spec.tokens, record, begin)

        await asyncio.gather(*(client() for _ in range(spec.streams)))
    return records


async def stream_request(session, url: str, body: dict, tokens: int, record: RequestRecord, begin: float) -> None:
    """POSTs one streaming request and fills `record` with what came back, stamped on arrival."""
    t0 = time.perf_counter()
    last = None
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                record.error = f"http_{response.status}"
                await response.read()
                return
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    continue  # read on to the body's end, so that the connection is kept for the next request
                event = json.loads(payload)
                if "error" in event:
                    record.error = "stream_error"
                    return
                if event.get("usage"):
                    record.tokens = event["usage"]["completion_tokens"]
                choices = event.get("choices") or ()
                carried = _tokens_carried(choices[0]) if choices else 0
                if carried:
                    now = time.perf_counter()
                    record.events.append((now - begin, carried))
                    if last is None:
                        record.ttft_s = now - t0
                    else:
                        record.tbt_s.append(now - last)
                    last = now
        if record.tokens != tokens:
            record.error = "wrong_token_count"
    except asyncio.TimeoutError:
        record.error = "timeout"
    except (aiohttp.ClientError, OSError, ValueError) as e:
        record.error = type(e).__name__
    finally:
        record.ended = time.perf_counter() - begin


def _tokens_carried(choice: dict) -> int:
    logprobs = choice.get("logprobs")
    if logprobs and logprobs.get("tokens"):
        return len(logprobs["tokens"])
    return 1 if choice.get("text") else 0


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks; q in [0, 100]. None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def summarize(records: list[RequestRecord], warmup_s: float) -> dict:
    """Latencies of the requests started after the warm-up; throughput over the whole load."""
    done = [r for r in records if r.error is None]
    measured = [r for r in done if r.started >= warmup_s]
    ttft = [r.ttft_s for r in measured if r.ttft_s is not None]
    tbt = [x for r in measured for x in r.tbt_s]
    tpot = [sum(r.tbt_s) / (r.tokens - 1) for r in measured if r.tokens > 1 and r.ttft_s is not None]
    per_token = [(r.ended - r.started) / r.tokens for r in measured if r.tokens]
    events = sum(len(r.tbt_s) + 1 for r in measured if r.ttft_s is not None)
    span = max((r.ended for r in records), default=0.0)
    tokens = sum(r.tokens for r in done)
    errors: dict[str, int] = {}
    for r in records:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
    return {
        "requests": len(records),
        "completed": len(done),
        "measured_requests": len(measured),
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
        "tokens": tokens,
        "elapsed_s": round(span, 3),
        "tokens_per_s": round(tokens / span, 1) if span > 0 else 0.0,
        "ttft_ms": {"p50": ms(percentile(ttft, 50)), "p90": ms(percentile(ttft, 90)), "p99": ms(percentile(ttft, 99))},
        "tbt_ms": {
            "p50": ms(percentile(tbt, 50)),
            "p90": ms(percentile(tbt, 90)),
            "p99": ms(percentile(tbt, 99)),
            "mean": ms(sum(tbt) / len(tbt)) if tbt else None,
            "samples": len(tbt),
            "tokens_per_chunk": round(sum(r.tokens for r in measured) / events, 2) if events else None,
        },
        "tpot_ms": {"p50": ms(percentile(tpot, 50)), "p90": ms(percentile(tpot, 90)), "p99": ms(percentile(tpot, 99))},
        "request_per_token_ms": {
            "p50": ms(percentile(per_token, 50)),
            "p90": ms(percentile(per_token, 90)),
            "p99": ms(percentile(per_token, 99)),
        },
    }
