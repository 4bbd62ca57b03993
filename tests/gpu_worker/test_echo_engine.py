"""The echo engine (`--engine echo`): prompt tokens back, vetted like the real engine, through a real worker."""

import pytest

from services.gpu_worker.config import WorkerConfig
from services.gpu_worker.echo_engine import EchoEngine
from services.gpu_worker.engine.engine import StepInfo
from services.gpu_worker.engine.errors import InvalidRequestError, UnknownModelError
from services.gpu_worker.engine.residency import Tier
from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams
from shared.protocol import Sampling

from .conftest import BusClient, running_worker, token_ids, worker_config


@pytest.fixture
def engine(model_store):
    return EchoEngine({m: model_store.path(m) for m in ("demo-llama", "demo-qwen2")}, max_batch_size=2)


def run(engine, model="demo-llama"):
    engine.activate(model)
    outputs = []
    while engine.has_work(model):
        outputs += engine.step()
    return outputs


def test_tokens_echo_the_prompt_cyclically_until_max_tokens(engine):
    engine.add_request(EngineRequest("r1", "demo-llama", (5, 6, 7), SamplingParams(max_tokens=5, ignore_eos=True)))
    outputs = run(engine)

    assert [o.token_id for o in outputs] == [5, 6, 7, 5, 6]
    assert [o.index for o in outputs] == [0, 1, 2, 3, 4]
    assert [o.finish_reason for o in outputs] == [None] * 4 + ["length"]
    assert not engine.has_work()


def test_only_max_batch_size_requests_run_per_step_and_only_the_active_model(engine):
    params = SamplingParams(max_tokens=2, ignore_eos=True)
    for i in range(3):
        engine.add_request(EngineRequest(f"l{i}", "demo-llama", (9,), params))
    engine.add_request(EngineRequest("q", "demo-qwen2", (9,), params))
    engine.activate("demo-llama")

    assert [o.request_id for o in engine.step()] == ["l0", "l1"]
    assert engine.stats().running == 2 and engine.stats().waiting == 2
    assert engine.models_with_work() == ["demo-llama", "demo-qwen2"]
    assert all(engine.tier(m) is Tier.DEVICE for m in ("demo-llama", "demo-qwen2"))


def test_a_step_can_be_limited_to_some_requests_and_new_ones_go_first_as_a_prefill(engine):
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    engine.add_request(EngineRequest("a", "demo-llama", (5, 6, 7), params))
    engine.add_request(EngineRequest("b", "demo-llama", (8, 9), params))
    engine.activate("demo-llama")

    assert [o.request_id for o in engine.step(["a"])] == ["a"]
    assert engine.last_step == StepInfo(is_prefill=True, num_seqs=1, num_tokens=3, context_tokens=3)
    assert [o.request_id for o in engine.step()] == ["b"]  # b's first token before a's second
    assert engine.last_step == StepInfo(is_prefill=True, num_seqs=1, num_tokens=2, context_tokens=2)
    assert [(o.request_id, o.index) for o in engine.step()] == [("a", 1), ("b", 1)]
    assert engine.last_step == StepInfo(is_prefill=False, num_seqs=2, num_tokens=2, context_tokens=4 + 3)
    assert engine.step(["nope"]) == [] and engine.last_step is None


def test_bad_requests_get_the_real_engines_errors(engine):
    with pytest.raises(InvalidRequestError, match=r"temperature=-1 is invalid: must be between 0 and 100"):
        engine.add_request(EngineRequest("bad", "demo-llama", (1,), SamplingParams(temperature=-1)))
    with pytest.raises(InvalidRequestError, match=r"outside the vocabulary \[0, 49152\)"):
        engine.add_request(EngineRequest("big", "demo-llama", (10**6,), SamplingParams()))
    with pytest.raises(InvalidRequestError, match="the prompt is empty"):
        engine.add_request(EngineRequest("empty", "demo-llama", (), SamplingParams()))
    with pytest.raises(UnknownModelError, match=r"unknown model 'nope' \(this engine serves: demo-llama, demo-qwen2\)"):
        engine.add_request(EngineRequest("x", "nope", (1,), SamplingParams()))


def test_the_echo_is_certain_and_its_top_logprobs_are_finite(engine):
    engine.activate("demo-llama")
    params = SamplingParams(max_tokens=1, logprobs=True, top_logprobs=3)
    engine.add_request(EngineRequest("t", "demo-llama", (5, 49151), params))
    (out,) = engine.step()
    assert (out.token_id, out.logprob, out.top_logprobs) == (5, 0.0, ((5, 0.0), (6, -100.0), (7, -200.0)))
    with pytest.raises(InvalidRequestError, match=r"logit_bias token ids \[60000\] are outside the vocabulary"):
        engine.add_request(EngineRequest("b", "demo-llama", (1,), SamplingParams(logit_bias=((60000, 1.0),))))


def test_the_config_names_the_engines_it_knows():
    with pytest.raises(ValueError, match="engine 'fast' is not one of torch, echo"):
        WorkerConfig(engine="fast")
    with pytest.raises(ValueError, match="echo_step_s only applies to the echo engine"):
        WorkerConfig(echo_step_s=0.01)


@pytest.mark.asyncio
async def test_a_worker_with_the_echo_engine_streams_the_prompt_back(nats_url, prompt_ids):
    client = await BusClient.connect(nats_url)
    try:
        async with running_worker(worker_config(nats_url, "w-echo", engine="echo")):
            await client.state("w-echo", lambda s: s.ready and s.active_model is not None)
            await client.assign("w-echo", "echo-1", "demo-llama", prompt_ids, Sampling(max_tokens=7, ignore_eos=True))
            report = await client.turn("w-echo", "demo-llama", ["echo-1"])
            chunks = await client.finished("echo-1")
    finally:
        await client.close()

    assert token_ids(chunks) == [prompt_ids[i % len(prompt_ids)] for i in range(7)]
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 7
    assert (report.reason, report.prefill_steps, report.decode_steps, report.decode_tokens) == ("done", 1, 6, 6)


@pytest.mark.asyncio
async def test_a_request_assigned_during_a_long_step_is_reported_running_before_the_step_ends(nats_url, prompt_ids):
    """The engine thread takes new requests only between steps, and a step can take seconds (a
    long prefill on a busy CPU). The worker's reports list the request meanwhile: a router that
    saw reports without it would count it lost and assign it again, maybe elsewhere."""
    client = await BusClient.connect(nats_url)
    try:
        config = worker_config(nats_url, "w-slow", engine="echo", echo_step_s=2.5)
        async with running_worker(config):
            await client.state("w-slow", lambda s: s.ready and s.active_model is not None)
            await client.assign("w-slow", "slow-1", "demo-llama", prompt_ids, Sampling(max_tokens=2, ignore_eos=True))
            await client.run_turn("w-slow", "demo-llama", ["slow-1"])
            await client.until(lambda: client.chunks("slow-1"), what="the first step's token")  # the second step runs
            await client.assign("w-slow", "slow-2", "demo-llama", prompt_ids, Sampling(max_tokens=1))
            state = await client.state("w-slow", lambda s: "slow-2" in s.running)
            tokens_then = len(client.chunks("slow-1"))
            await client.cancel("w-slow", "slow-2")  # (it never gets a turn)
            await client.finished("slow-1")
    finally:
        await client.close()

    assert tokens_then == 1, "the report came only after the step"
    assert state.running_models[state.running.index("slow-2")] == "demo-llama"
