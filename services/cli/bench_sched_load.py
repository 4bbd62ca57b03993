"""The open-loop client of `tokenpool bench sched`: every arrival sent on time, every token stamped.

    sent = asyncio.run(run_open_loop(OpenLoopSpec(url, PROMPT, tokens=32, drain_s=30), arrivals))

Unlike the closed loop of `bench serve`, a request is sent at its arrival time whether or not
earlier ones have finished, so a scheduler that falls behind builds a queue instead of
slowing the load down. Each request is a streaming /v1/completions with `ignore_eos` (every
request produces exactly `tokens` tokens, so both policies do the same work) and
`logprobs: 0`, which makes each event list the tokens it carries: the client stamps every
token, not just every event (`bench_serve_load.stream_request` does the stamping).
Requests still open `drain_s` after the last arrival are cut off and count as errors
("unfinished").
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

from services.cli.bench_sched_workload import Arrival
from services.cli.bench_serve_load import RequestRecord, stream_request


@dataclass(frozen=True)
class OpenLoopSpec:
    base_url: str
    prompt: str
    tokens: int
    """max_tokens of every request (ignore_eos: exactly this many come back)."""
    drain_s: float
    """How long after the last arrival open requests may still finish."""


@dataclass
class Sent:
    arrival: Arrival
    record: RequestRecord
    """`record.started` is when the request was sent, `record.events` when its tokens came,
    both in seconds since the load began."""


def request_body(model: str, prompt: str, tokens: int) -> dict:
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        "logprobs": 0,
        "stream_options": {"include_usage": True},
    }


async def run_open_loop(spec: OpenLoopSpec, arrivals: list[Arrival]) -> list[Sent]:
    url = spec.base_url + "/v1/completions"
    sent: list[Sent] = []
    tasks: list[asyncio.Task] = []
    # No total timeout per request: the drain deadline below bounds them all.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        begin = time.perf_counter()
        for arrival in arrivals:
            delay = begin + arrival.at_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            record = RequestRecord(started=time.perf_counter() - begin)
            body = request_body(arrival.model, spec.prompt, spec.tokens)
            tasks.append(asyncio.create_task(stream_request(session, url, body, spec.tokens, record, begin)))
            sent.append(Sent(arrival, record))
        last = arrivals[-1].at_s if arrivals else 0.0
        remaining = begin + last + spec.drain_s - time.perf_counter()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(remaining, 0.0))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task, item in zip(tasks, sent):
                if task.cancelled() and item.record.error is None:
                    item.record.error = "unfinished"
    return sent
