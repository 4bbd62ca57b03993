"""Token-level scheduling on the real stack: 4 models share one CPU worker.

Concurrent streams to all four make progress together (their tokens interleave in time:
every stream has its first token before any stream ends) and every output equals that model's
greedy output run alone. Under request-level scheduling the same load runs one model after
another: the second test shows the difference a user would see, from the same workload.
"""

import asyncio
import re
import time
import urllib.request

import pytest

from shared.tokenizer import Tokenizer

from shared.nats_server import free_port

from .conftest import Stack, run_async, write_catalog

MODELS = ("smollm2-135m-instruct", "demo-llama", "demo-qwen2", "demo-mistral")
PROMPT = "Once upon a time, in a land far away,"
TOKENS = 32


def start_stack(tmp_path_factory, model_store, scheduling: str) -> Stack:
    catalog = write_catalog(tmp_path_factory.mktemp("catalog") / "catalog.toml", model_store.root, MODELS)
    s = Stack(tmp_path_factory.mktemp(f"stack-{scheduling}"), catalog)
    s.nats.start()
    s.router_metrics_port = free_port()
    # Turns of at most 0.3 s (the CPU is slow; the default 2 s would let one stream end in one turn).
    s.start_service(
        "router", "services.router", "--scheduling", scheduling, "--max-quota", "0.3",
        "--metrics-port", str(s.router_metrics_port),
    )
    s.start_worker("worker-0")
    s.start_service("gateway", "services.gateway", "--host", "127.0.0.1", "--port", str(s.port))
    s.wait_healthy()
    return s


@pytest.fixture(scope="module")
def tok(model_store):
    return Tokenizer(model_store.path(MODELS[0]))


LONG_PROMPT = "The lighthouse keeper wrote in the log every evening: wind, sea, ships seen, lamp lit. " * 3


def cached_tokens_of_a_completion(base_url: str, prompt: str) -> int:
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    resp = client.completions.create(model=MODELS[0], prompt=prompt, max_tokens=4, temperature=0)
    return resp.usage.prompt_tokens_details.cached_tokens


def stream_all(base_url: str) -> dict[str, tuple[list[float], str, list[str]]]:
    """One streamed completion per model at once: {model: (token times, text, finish reasons)}."""
    from openai import AsyncOpenAI

    async def one(client, model):
        times, parts, reasons = [], [], []
        stream = await client.completions.create(
            model=model, prompt=PROMPT, max_tokens=TOKENS, temperature=0, stream=True,
            extra_body={"ignore_eos": True},
        )
        async for chunk in stream:
            if chunk.choices:
                times.append(time.monotonic())
                parts.append(chunk.choices[0].text)
                if chunk.choices[0].finish_reason:
                    reasons.append(chunk.choices[0].finish_reason)
        return model, (times, "".join(parts), reasons)

    async def main():
        client = AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=300)
        try:
            return dict(await asyncio.gather(*(one(client, m) for m in MODELS)))
        finally:
            await client.close()

    return run_async(main())


def metric(text: str, name: str, **labels) -> float:
    """The sum of a Prometheus metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{name}(?:{{(.*)}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def progress_before_first_finish(results) -> dict[str, int]:
    """How many chunks each stream had received when the first stream ended."""
    first_end = min(times[-1] for times, _, _ in results.values())
    return {m: sum(t < first_end for t in times) for m, (times, _, _) in results.items()}


def all_in_progress_together(results) -> bool:
    """Some moment at which every stream had started and none had ended."""
    return max(times[0] for times, _, _ in results.values()) < min(times[-1] for times, _, _ in results.values())


def test_four_models_on_one_worker_interleave_and_match_greedy_alone(tmp_path_factory, model_store, tok, greedy_reference):
    stack = start_stack(tmp_path_factory, model_store, "token")
    try:
        results = stream_all(stack.base_url)
        router_metrics = get(f"http://127.0.0.1:{stack.router_metrics_port}/metrics")
        gateway_metrics = get(stack.base_url + "/metrics")
    finally:
        stack.stop()
    for model, (times, text, reasons) in results.items():
        expected = greedy_reference(model, tuple(tok.encode(PROMPT)), TOKENS, ignore_eos=True)
        assert text == tok.decode(expected), model
        assert reasons == ["length"]
    # Every stream was under way before any of them finished: the models took turns.
    assert all_in_progress_together(results), progress_before_first_finish(results)
    # The router counts the worker's turns and switches; the gateway judges each request's SLO.
    for model in MODELS:
        assert metric(router_metrics, "tp_worker_turns_total", worker="worker-0", model=model) >= 2
    assert metric(router_metrics, "tp_worker_switches_total", worker="worker-0") >= 3
    assert metric(gateway_metrics, "tp_request_slo_attainment_count") == len(MODELS)
    assert metric(gateway_metrics, "tp_requests_slo_strict_total") == len(MODELS)


def test_request_level_scheduling_serves_the_same_load_one_model_at_a_time(tmp_path_factory, model_store):
    stack = start_stack(tmp_path_factory, model_store, "request")
    try:
        results = stream_all(stack.base_url)
    finally:
        stack.stop()
    assert all(reasons == ["length"] for _, _, reasons in results.values())
    progress = progress_before_first_finish(results)
    # One model ran to the end while the others had not started (they waited for the worker).
    assert not all_in_progress_together(results) and sorted(progress.values()).count(0) >= 2, progress


def test_disaggregated_prefill_hands_the_kv_to_the_decode_worker(tmp_path_factory, model_store, tok, greedy_reference):
    """worker-0 only prefills, worker-1 only decodes; the KV moves through the machine's host
    hand-off area, so worker-1 computes no prompt token, and the outputs equal greedy alone."""
    catalog = write_catalog(tmp_path_factory.mktemp("catalog") / "catalog.toml", model_store.root, MODELS)
    s = Stack(tmp_path_factory.mktemp("stack-disaggregated"), catalog)
    s.nats.start()
    port = free_port()
    s.start_service(
        "router", "services.router", "--prefill-workers", "1", "--kv-handoff", "--metrics-port", str(port)
    )
    handoff_dir = str(tmp_path_factory.mktemp("kv-handoff"))
    for worker_id in ("worker-0", "worker-1"):
        s.start_service(worker_id, "services.gpu_worker", "--worker-id", worker_id, "--kv-handoff-dir", handoff_dir)
    s.start_service("gateway", "services.gateway", "--host", "127.0.0.1", "--port", str(s.port))
    try:
        s.wait_healthy(workers=2)
        results = stream_all(s.base_url)
        # A turn's report follows its last tokens (by up to the worker's turn linger): wait for it.
        deadline = time.monotonic() + 10
        while True:
            metrics = get(f"http://127.0.0.1:{port}/metrics")
            decoded = metric(metrics, "tp_worker_turn_tokens_total", worker="worker-1", phase="decode")
            if decoded >= len(MODELS) * (TOKENS - 2) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        repeated = [cached_tokens_of_a_completion(s.base_url, LONG_PROMPT) for _ in range(2)]
    finally:
        s.stop()
    # The prompt was computed (and found cached the second time) on worker-0; the usage comes
    # from worker-1, which learnt it from the hand-off.
    assert repeated[0] == 0 and repeated[1] > len(tok.encode(LONG_PROMPT)) // 2, repeated
    for model, (_, text, reasons) in results.items():
        assert text == tok.decode(greedy_reference(model, tuple(tok.encode(PROMPT)), TOKENS, ignore_eos=True)), model
        assert reasons == ["length"]
    assert metric(metrics, "tp_worker_handed_off_total", worker="worker-0") == len(MODELS)
    assert metric(metrics, "tp_worker_prefill_tokens_total", worker="worker-0") > 0
    assert metric(metrics, "tp_worker_prefill_tokens_total", worker="worker-1") == 0  # the KV came with them
    assert metric(metrics, "tp_worker_turn_tokens_total", worker="worker-1", phase="decode") >= len(MODELS) * (TOKENS - 2)
