"""The autoscaler end to end on CPU: real nats-server, router, gateway and an autoscaler whose
local connector starts and releases real gpu_worker processes (echo engine, whose step time
stands in for a model's). Three workers and six models at low load drain to one while every
request completes; a load step brings a second worker back and attainment recovers."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from services.router.slo.attainment import request_slo
from tests.e2e.conftest import Stack, run_async

MODELS = tuple(f"m{i}" for i in range(6))
STEP_S = 0.05
"""Echo step: one busy model needs half a worker at TBT 0.1 s, so two fill one (fill 0.8: two workers)."""
TTFT_S, TBT_S = 10.0, 0.1
SCALING = {
    "cold_after_s": 4, "cooldown_s": 3, "scale_up_cooldown_s": 3, "drain_grace_s": 2,
    "target_attainment": 0.9, "max_workers": 3,
}


def write_catalog(path, store_root):
    lines = ["[slo_classes.default]", f"ttft_s = {TTFT_S}", f"tbt_s = {TBT_S}", ""]
    for m in MODELS:  # six names over one tiny checkpoint: the echo engine reads only its config
        lines += ["[[models]]", f'name = "{m}"', f'path = "{store_root / "demo-llama"}"', ""]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory, model_store):
    tmp = tmp_path_factory.mktemp("autoscale")
    s = Stack(tmp, write_catalog(tmp / "catalog.toml", model_store.root))
    s.nats.start()
    s.start_service("router", "services.router")
    s.start_service("gateway", "services.gateway", "--host", "127.0.0.1", "--port", str(s.port))
    worker_args = ["--engine", "echo", "--echo-step-s", str(STEP_S)]
    s.start_service(
        "autoscaler", "services.autoscaler", "--connector", "local", "--initial-workers", "3",
        "--run-dir", str(tmp / "workers"), "--interval", "0.5", "--window", "6",
        *(f"--worker-arg={a}" for a in worker_args), *(f"--scaling={k}={v}" for k, v in SCALING.items()),
    )
    try:
        s.wait_healthy(workers=3, timeout=120)
        yield s
    finally:
        s.stop()
    # the workers' command lines name this test's catalog: none may outlive the autoscaler
    left = subprocess.run(["pgrep", "-f", f"services.gpu_worker.*{tmp / 'catalog.toml'}"], capture_output=True, text=True)
    assert left.stdout.split() == [], "the autoscaler's workers outlived it"


def workers(stack) -> list[str]:
    return stack.health()[1].get("workers", [])


async def one_request(client, model: str, max_tokens: int) -> tuple[str, float]:
    """(finish reason, attainment as the client saw the tokens arrive)."""
    start = time.monotonic()
    times, finish = [], None
    stream = await client.completions.create(model=model, prompt="hello there, autoscaler", max_tokens=max_tokens,
                                             temperature=0, stream=True)
    async for chunk in stream:
        choice = chunk.choices[0]
        if choice.text:
            times.append(time.monotonic())
        finish = choice.finish_reason or finish
    return finish, request_slo(start, times, TTFT_S, TBT_S).attainment if times else 0.0


def test_low_load_drains_three_workers_to_one_and_a_load_step_brings_a_second_back(stack):
    from openai import AsyncOpenAI

    async def scenario():
        client = AsyncOpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
        tasks: list[asyncio.Task] = []

        # low load: one request a second, round-robin over the six models; every sixth one runs
        # for seconds, about a drain's grace, so drains may move requests as well as wait for them
        deadline = time.monotonic() + 60
        i = 0
        while time.monotonic() < deadline:
            tasks.append(asyncio.create_task(one_request(client, MODELS[i % 6], 20 if i % 6 == 0 else 4)))
            i += 1
            await asyncio.sleep(1.0)
            if i >= 12 and len(workers(stack)) == 1:
                break
        drained_after_s = 60 - (deadline - time.monotonic())
        low = await asyncio.gather(*tasks)
        assert len(workers(stack)) == 1, f"still {workers(stack)} after {drained_after_s:.0f} s of low load"
        assert [f for f, _ in low] == ["length"] * len(low), "a request did not complete while workers drained"

        # load step: two models, four streams each, back to back
        step_at = time.monotonic()
        results: list[tuple[float, str, float]] = []

        async def stream_loop(model: str, until: float):
            while time.monotonic() < until:
                started = time.monotonic()
                finish, attained = await one_request(client, model, 24)
                results.append((started, finish, attained))

        until = step_at + 45
        loops = [asyncio.create_task(stream_loop(m, until)) for m in MODELS[:2] for _ in range(4)]
        second_at = None
        while time.monotonic() < until and second_at is None:
            await asyncio.sleep(0.5)
            if len(workers(stack)) >= 2:
                second_at = time.monotonic()
        await asyncio.gather(*loops)
        await client.close()
        return drained_after_s, step_at, second_at, results

    drained_after_s, step_at, second_at, results = run_async(scenario())
    assert second_at is not None, "the load step brought no second worker"
    assert all(f == "length" for _, f, _ in results), "a request failed during the scale-up"
    before = [a for started, _, a in results if started < second_at]
    settled = [a for started, _, a in results if started >= second_at + 3]
    assert len(settled) >= 8, f"too few requests after the scale-up to judge ({len(settled)})"
    recovered = sum(settled) / len(settled)
    moves = stack.services["autoscaler"].log().count("'move'")
    print(f"drained to 1 worker after {drained_after_s:.0f} s ({moves} move orders in the log's tail); second worker "
          f"{second_at - step_at:.1f} s after the load step; attainment {sum(before) / max(1, len(before)):.3f} over "
          f"{len(before)} requests before it, {recovered:.3f} over {len(settled)} after")
    assert recovered >= 0.9
