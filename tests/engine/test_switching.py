"""Several models on one engine: interleaved step by step, with KV swapped out and in between."""

from services.gpu_worker.engine.generate import run_to_completion
from services.gpu_worker.engine.residency import Tier
from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams

from .conftest import ALL_MODELS, DEMOS, NEW_TOKENS, small_config

GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0)


def test_interleaved_models_with_kv_swap_match_their_solo_outputs(engine, prompt_ids, hf_greedy):
    requests = [
        EngineRequest(f"{model}/{i}", model, ids, GREEDY)
        for model in ALL_MODELS
        for i, ids in enumerate(prompt_ids[:4])
    ]
    swaps = {"out": 0, "in": 0}
    swap_out, swap_in = engine.swap_out, engine.swap_in
    engine.swap_out = lambda **kw: _count(swaps, "out", swap_out(**kw))
    engine.swap_in = lambda **kw: _count(swaps, "in", swap_in(**kw))

    done = run_to_completion(engine, requests, swap_between_models=True)

    for model in ALL_MODELS:
        for i in range(4):
            assert done[f"{model}/{i}"].token_ids == hf_greedy(model)[i], f"{model} prompt {i}"
    assert swaps["out"] >= len(ALL_MODELS) * 4 and swaps["in"] >= len(ALL_MODELS) * 4
    stats = engine.stats()
    assert stats.free_pages == stats.total_pages and stats.free_host_pages == stats.total_host_pages


def _count(swaps, key, n):
    swaps[key] += n
    return n


def test_paused_batch_survives_while_another_model_runs(engine, prompt_ids, hf_greedy):
    """A, then B to completion with A's KV parked in host memory, then A resumes."""
    a, b = "smollm2-135m-instruct", "demo-qwen2"
    engine.activate(a)
    engine.add_request(EngineRequest("a", a, prompt_ids[0], GREEDY))
    tokens = {"a": [], "b": []}
    for _ in range(10):
        tokens["a"] += [o.token_id for o in engine.step()]
    assert engine.swap_out(model=a) == 1
    assert engine.stats().swapped == 1

    engine.activate(b)
    engine.add_request(EngineRequest("b", b, prompt_ids[1], GREEDY))
    while engine.has_work(b):
        tokens["b"] += [o.token_id for o in engine.step()]

    engine.activate(a)
    while engine.has_work(a):
        tokens["a"] += [o.token_id for o in engine.step()]
    assert tokens["a"] == hf_greedy(a)[0]
    assert tokens["b"] == hf_greedy(b)[1]


def test_prefetch_then_activate_switches_weights(model_store, prompt_ids, hf_greedy):
    from services.gpu_worker.engine.engine import Engine

    # Room for one SmolLM2 plus one demo model: activating a third evicts the least recently used.
    config = small_config(weight_arena_bytes=620 << 20)
    engine = Engine(config, {n: model_store.path(n) for n in ALL_MODELS})
    try:
        engine.activate("demo-llama")
        engine.add_request(EngineRequest("l", "demo-llama", prompt_ids[2], GREEDY))
        engine.step()
        engine.prefetch("demo-mistral")  # copy overlaps demo-llama's decode steps
        assert engine.tier("demo-mistral") is Tier.DEVICE
        llama_tokens = []
        while engine.has_work("demo-llama"):
            llama_tokens += [o.token_id for o in engine.step()]
        engine.activate("demo-mistral")
        done = run_to_completion(engine, [EngineRequest("m", "demo-mistral", prompt_ids[2], GREEDY)])
        assert done["m"].token_ids == hf_greedy("demo-mistral")[2]

        engine.activate("smollm2-135m-instruct")  # needs the room of both demo models
        assert engine.tier("demo-llama") is Tier.HOST
        assert engine.tier("smollm2-135m-instruct") is Tier.DEVICE
        engine.evict("smollm2-135m-instruct")
        assert engine.tier("smollm2-135m-instruct") is Tier.HOST and engine.active is None
    finally:
        engine.close()


def test_kv_pressure_preempts_and_resumes_without_changing_outputs(model_store, prompt_ids, hf_greedy):
    from services.gpu_worker.engine.engine import Engine

    # 6 pages of 1 MiB: SmolLM2 holds 22 tokens a page, far less than 8 prompts plus 32 tokens each.
    engine = Engine(small_config(kv_arena_bytes=6 << 20), {"smollm2-135m-instruct": model_store.path("smollm2-135m-instruct")})
    try:
        requests = [EngineRequest(f"r{i}", "smollm2-135m-instruct", ids, GREEDY) for i, ids in enumerate(prompt_ids)]
        done = run_to_completion(engine, requests)
        expected = hf_greedy("smollm2-135m-instruct")
        assert [done[f"r{i}"].token_ids for i in range(len(prompt_ids))] == expected
        assert engine.stats().free_pages == engine.stats().total_pages == 6
    finally:
        engine.close()


def test_a_pinned_model_stays_in_the_arena_while_others_take_turns(model_store):
    from services.gpu_worker.engine.engine import Engine

    sizes = {}
    probe = Engine(small_config(), {n: model_store.path(n) for n in DEMOS})
    try:
        sizes = {n: probe.slot(n).weight_bytes for n in DEMOS}
    finally:
        probe.close()
    # room for two demo models, not three: each activation of a third evicts one
    arena = sum(sorted(sizes.values())[1:]) + (1 << 20)
    engine = Engine(small_config(weight_arena_bytes=arena), {n: model_store.path(n) for n in DEMOS})
    try:
        llama, qwen, mistral = DEMOS
        engine.pin(frozenset({llama}))
        for name in (llama, qwen, mistral, qwen, mistral):  # llama is the least recently used each time
            engine.activate(name)
            assert engine.tier(llama) is Tier.DEVICE
        engine.pin(frozenset())  # unpinned, it is evicted like any other model
        engine.activate(qwen)
        assert engine.tier(llama) is Tier.HOST
    finally:
        engine.close()
