"""The prefix cache: a later prompt that starts like an earlier one reuses the earlier one's full
KV pages instead of computing them, and gets exactly the tokens it would have got without."""

import pytest

from services.gpu_worker.engine.engine import Engine
from services.gpu_worker.engine.generate import run_to_completion
from services.gpu_worker.engine.memory import PagePool
from services.gpu_worker.engine.prefix_cache import PrefixCache
from services.gpu_worker.engine.scheduler import Scheduler
from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams, Sequence

from .conftest import NEW_TOKENS, SMOLLM, small_config

BLOCK = 4


def scheduler(num_pages: int = 8) -> tuple[Scheduler, PrefixCache]:
    cache = PrefixCache()
    return Scheduler(PagePool(num_pages, cache=cache), max_batch_tokens=64, max_batch_size=8), cache


def prefill(sched: Scheduler, rid: str, prompt: tuple[int, ...], model: str = "a", arrival: int = 0) -> Sequence:
    """Adds the request and runs its prefill step; returns it with its prompt's KV cached."""
    seq = Sequence(EngineRequest(rid, model, prompt), arrival=arrival)
    sched.add(seq)
    batch = sched.schedule(model, BLOCK)
    assert batch is not None and batch.is_prefill and seq in batch.seqs
    sched.commit(batch, BLOCK)
    return seq


def test_a_later_prompt_takes_the_full_pages_of_its_cached_prefix_and_computes_the_rest():
    sched, cache = scheduler()
    first = prefill(sched, "r1", tuple(range(1, 11)))  # 10 tokens: pages 1-4 and 5-8 are full
    first_pages = list(first.pages)
    sched.finish(first, "stop")
    assert sched.pages.num_free == 8, "idle cached pages count as free"

    second = Sequence(EngineRequest("r2", "a", (*range(1, 9), 42, 43, 44)), arrival=1)
    sched.add(second)
    batch = sched.schedule("a", BLOCK)
    assert second.pages[:2] == first_pages[:2] and batch.num_tokens == [3], "only the 3 new tokens are computed"
    assert cache.hit_tokens == 8 and cache.refs(first_pages[0]) == 1


def test_the_last_token_is_always_computed_and_a_difference_stops_the_match():
    sched, cache = scheduler()
    sched.finish(prefill(sched, "r1", tuple(range(1, 9))), "stop")  # exactly two full pages

    same = prefill(sched, "r2", tuple(range(1, 9)), arrival=1)
    assert same.num_cached == 8 and cache.hit_tokens == 4, "the second page is computed again for its logits"
    sched.finish(same, "stop")
    differs = prefill(sched, "r3", (1, 2, 3, 4, 5, 99, 7, 8, 9), arrival=2)
    assert cache.hit_tokens == 4 + 4, "only the page before the difference"
    sched.finish(differs, "stop")
    other_model = prefill(sched, "r4", tuple(range(1, 10)), model="b", arrival=3)
    assert cache.hit_tokens == 8, "the same tokens of another model are another model's KV"
    assert other_model.num_cached == 9


def test_pages_in_use_are_shared_and_idle_ones_are_reclaimed_oldest_first():
    sched, cache = scheduler(num_pages=4)
    a = prefill(sched, "a", (1, 2, 3, 4, 5))
    b = prefill(sched, "b", (1, 2, 3, 4, 6), arrival=1)
    assert b.pages[0] == a.pages[0] and cache.refs(a.pages[0]) == 2, "one page, two readers"
    assert sched.pages.num_free == 1
    shared = a.pages[0]
    sched.finish(a, "stop")
    assert cache.refs(shared) == 1 and sched.pages.num_free == 2, "b still reads it"
    sched.finish(b, "stop")
    assert sched.pages.num_free == 4

    # A prompt of other tokens needs every page: the idle cached one is reclaimed and forgotten.
    c = prefill(sched, "c", tuple(range(20, 33)), arrival=2)
    assert len(c.pages) == 4 and shared in c.pages
    sched.finish(c, "stop")
    d = prefill(sched, "d", (1, 2, 3, 4, 5), arrival=3)
    assert d.num_cached == 5 and cache.hit_tokens == 4, "1-4 were cached once, then reclaimed: computed again"


def test_a_reclaimed_page_reused_for_other_tokens_never_continues_an_old_chain():
    """Page 0 held tokens 1-4 and page 1 the 5-8 after them. Page 0 is reclaimed first and
    refilled with 9-12: a prompt 9-12, 5-8 must not continue into page 1, whose K/V were
    computed after 1-4. Entries chain on ids that are never reused, not on page numbers."""
    cache = PrefixCache()
    first = cache.register("a", (1, 2, 3, 4), page=0)
    cache.register(first, (5, 6, 7, 8), page=1)
    cache.release(0)
    cache.release(1)
    assert cache.reclaim() == 0, "least recently used first"
    cache.register("a", (9, 10, 11, 12), page=0)
    assert [page for _, page in cache.match("a", (9, 10, 11, 12, 5, 6, 7, 8, 0), 4, 8)] == [0]
    assert cache.match("a", (1, 2, 3, 4, 5, 6, 7, 8, 0), 4, 8) == []


def test_a_waiting_prompt_that_cannot_start_holds_no_cached_page_and_counts_no_hit():
    sched, cache = scheduler(num_pages=3)
    sched.finish(prefill(sched, "r1", (1, 2, 3, 4, 5)), "stop")
    hog = prefill(sched, "hog", (50, 51, 52, 53, 54, 55, 56, 57), arrival=1)  # 2 pages + the idle one
    assert sched.pages.num_free == 1
    waiting = Sequence(EngineRequest("w", "a", (1, 2, 3, 4, *range(60, 65))), arrival=2)  # 3 pages
    sched.add(waiting)
    assert sched.schedule("a", BLOCK) is None
    assert waiting.pages == [] and waiting.num_cached == 0 and sched.pages.num_free == 1
    assert cache.hit_tokens == 0 and waiting.cached_prompt_tokens == 0, "a match it could not use counts for nothing"
    sched.finish(hog, "stop")
    batch = sched.schedule("a", BLOCK)
    assert batch.seqs == [waiting] and waiting.cached_prompt_tokens == 4 and cache.hit_tokens == 4


def test_copies_of_one_prompt_arriving_together_compute_its_pages_once():
    """n choices of one prompt reach the engine at once: the first computes the prompt, the
    others wait one step and take its full pages from the cache. A different prompt in the same
    step is not held back."""
    sched, cache = scheduler(num_pages=16)
    prompt = tuple(range(1, 11))
    choices = [Sequence(EngineRequest(f"c{i}", "a", prompt), arrival=i) for i in range(3)]
    other = Sequence(EngineRequest("other", "a", (70, 71, 72, 73, 74)), arrival=3)
    for seq in (*choices, other):
        sched.add(seq)
    first = sched.schedule("a", BLOCK)
    assert [s.request_id for s in first.seqs] == ["c0", "other"]
    sched.commit(first, BLOCK)
    second = sched.schedule("a", BLOCK)
    assert [s.request_id for s in second.seqs] == ["c1", "c2"] and second.num_tokens == [2, 2]
    assert cache.hit_tokens == 16 and choices[1].pages[:2] == choices[0].pages[:2] == choices[2].pages[:2]


@pytest.fixture
def smollm(model_store):
    def make(caching: bool) -> Engine:
        engine = Engine(small_config(prefix_caching=caching), {SMOLLM: model_store.path(SMOLLM)})
        engine.activate(SMOLLM)
        return engine

    return make


SYSTEM = (
    "You are a careful assistant for a library. Answer in one short sentence, name the shelf, "
    "and never invent a book that the catalogue does not list. The catalogue lists novels, "
    "poetry, history, cookery, travel guides and children's books, each on its own floor."
)
QUESTIONS = ("Where are the cookery books?", "Do you have poetry?", "Which floor has travel guides?")


def test_prompts_sharing_a_system_prompt_decode_exactly_as_without_the_cache(smollm, tokenizer):
    """Three questions after one system prompt, one after another: with the cache the second
    and third compute only their question, and every token and logprob matches the engine
    without a cache."""
    prompts = [tuple(tokenizer.encode(f"{SYSTEM}\n\nQ: {q}\nA:")) for q in QUESTIONS]
    params = SamplingParams(temperature=0.0, max_tokens=12, logprobs=True)
    results, block = {}, 0
    for caching in (False, True):
        engine = smollm(caching)
        block = engine.slot(SMOLLM).block_tokens
        outs, prefilled = [], []
        for i, ids in enumerate(prompts):
            outs.append(run_to_completion(engine, [EngineRequest(f"q{i}", SMOLLM, ids, params)])[f"q{i}"])
            prefilled.append(engine.stats().prefix_hit_tokens)
        assert engine.stats().free_pages == engine.stats().total_pages
        results[caching] = outs, prefilled
        engine.close()
    (plain, _), (cached, hits) = results[False], results[True]
    reusable = (len(tokenizer.encode(SYSTEM)) // block - 1) * block  # a page short, for a merged token
    assert hits[0] == 0 and hits[1] >= reusable and hits[2] - hits[1] >= reusable
    for a, b in zip(plain, cached):
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_requests_in_one_batch_with_a_cached_prefix_match_hugging_face(smollm, prompt_ids, hf_greedy):
    """The parity prompts after a first pass has cached them: the second pass, all in one batch,
    takes every full page from the cache and still decodes Hugging Face's greedy tokens."""
    engine = smollm(True)
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS)
    warm = SamplingParams(temperature=0.0, max_tokens=1)  # a prefill caches the prompt's full pages
    run_to_completion(engine, [EngineRequest(f"warm{i}", SMOLLM, ids, warm) for i, ids in enumerate(prompt_ids)])
    before = engine.prefix_cache.hit_tokens
    done = run_to_completion(engine, [EngineRequest(f"p{i}", SMOLLM, ids, params) for i, ids in enumerate(prompt_ids)])
    assert engine.prefix_cache.hit_tokens > before
    assert [done[f"p{i}"].token_ids for i in range(len(prompt_ids))] == hf_greedy(SMOLLM)
    assert engine.stats().free_pages == engine.stats().total_pages
    engine.close()


def test_n_copies_of_a_prompt_in_one_batch_share_its_pages_and_decode_alike(smollm, prompt_ids, hf_greedy):
    """Four greedy copies of each of two long prompts, added together (what `n` does): each
    prompt's full pages are computed once, and every copy decodes Hugging Face's tokens."""
    engine = smollm(True)
    block = engine.slot(SMOLLM).block_tokens
    picks = [4, 7]  # the two longest parity prompts, each over one page
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS)
    requests = [EngineRequest(f"p{p}-{k}", SMOLLM, prompt_ids[p], params) for p in picks for k in range(4)]
    done = run_to_completion(engine, requests)
    for p in picks:
        assert all(done[f"p{p}-{k}"].token_ids == hf_greedy(SMOLLM)[p] for k in range(4))
    expected = sum(3 * ((len(prompt_ids[p]) - 1) // block) * block for p in picks)
    assert expected > 0
    assert engine.stats().prefix_hit_tokens == expected
    assert engine.stats().free_pages == engine.stats().total_pages
    engine.close()


def test_shared_pages_survive_model_switches_and_kv_swaps(model_store, tokenizer):
    """Two models step by step, each model's KV swapped out while the other runs, each with
    three questions after one system prompt: the later two take the first one's full pages
    (64 KiB pages: a page holds 1 token of SmolLM2, 42 of demo-qwen2), swapping out releases
    them and swapping in brings private copies back. Every request decodes what it decodes
    alone on an engine without a cache, and every page and host page comes back."""
    models = (SMOLLM, "demo-qwen2")
    prompts = [tuple(tokenizer.encode(f"{SYSTEM}\n\nQ: {q}\nA:")) for q in QUESTIONS]
    params = SamplingParams(temperature=0.0, max_tokens=16)
    requests = [EngineRequest(f"{m}/{i}", m, ids, params) for m in models for i, ids in enumerate(prompts)]
    paths = {m: model_store.path(m) for m in models}

    engine = Engine(small_config(kv_page_bytes=64 << 10), paths)
    alone = Engine(small_config(prefix_caching=False), paths)
    try:
        done = run_to_completion(engine, requests, swap_between_models=True)
        for m in models:
            expected = run_to_completion(alone, [r for r in requests if r.model == m])
            assert [done[f"{m}/{i}"].token_ids for i in range(3)] == [expected[f"{m}/{i}"].token_ids for i in range(3)]
        # At least the full pages each later prompt shares with the first, per model.
        least = 0
        for m in models:
            block = engine.slot(m).block_tokens
            for ids in prompts[1:]:
                common = next(k for k in range(len(ids)) if k == len(prompts[0]) or ids[k] != prompts[0][k])
                least += min(common, len(ids) - 1) // block * block
        stats = engine.stats()
        assert least > 0 and stats.prefix_hit_tokens >= least
        assert stats.free_pages == stats.total_pages and stats.free_host_pages == stats.total_host_pages
    finally:
        engine.close()
        alone.close()


@pytest.mark.parametrize("reclaimed", [False, True])
def test_parked_sequences_leave_shared_pages_cached_and_recompute_when_they_are_reclaimed(model_store, reclaimed):
    """Four requests share a 6-page system prompt (demo-llama, 8 KiB pages of 4 tokens). Swapped
    out, only their own pages go to host memory: the shared ones stay cached on the device, so
    parking them takes no more host pages than their private tails, and they come back shared.
    If another request needs every page meanwhile, the cached ones are reclaimed: those requests
    then compute their KV again. Either way each decodes what it decodes alone."""
    model = "demo-llama"
    paths = {model: model_store.path(model)}
    page = 8 << 10
    engine = Engine(small_config(kv_page_bytes=page, kv_arena_bytes=40 * page, host_swap_bytes=80 * page), paths)
    alone = Engine(small_config(prefix_caching=False), paths)
    try:
        engine.activate(model)
        block = engine.slot(model).block_tokens
        system = list(range(100, 100 + 6 * block))
        params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
        requests = [EngineRequest(f"c{i}", model, (*system, 7 + i), params) for i in range(4)]
        tokens = {r.request_id: [] for r in requests}
        for r in requests:
            engine.add_request(r)
        while min(len(t) for t in tokens.values()) < 2:
            for out in engine.step():
                tokens[out.request_id].append(out.token_id)
        own = {r.request_id: len(engine.sequence(r.request_id).pages) - 6 for r in requests}

        assert engine.swap_out(model=model) == 4
        stats = engine.stats()
        assert stats.total_host_pages - stats.free_host_pages == sum(own.values()), "only the private tails"
        assert stats.free_pages == stats.total_pages, "the shared pages wait idle, counted as free"
        if reclaimed:
            big = EngineRequest("big", model, tuple(range(1000, 1000 + 39 * block)), SamplingParams(temperature=0.0, max_tokens=2))
            engine.add_request(big)
            while not any(out.finish_reason for out in engine.step(["big"])):
                pass
            parked = engine.sequence("c0").parked_prefix
            assert len(parked) >= 6 and not all(engine.prefix_cache.still_holds(e, p) for e, p in parked)
        while engine.has_work(model):
            for out in engine.step():
                tokens[out.request_id].append(out.token_id)

        for r in requests:
            expected = run_to_completion(alone, [r])[r.request_id].token_ids
            assert tokens[r.request_id] == expected, r.request_id
        stats = engine.stats()
        assert stats.free_pages == stats.total_pages and stats.free_host_pages == stats.total_host_pages
    finally:
        engine.close()
        alone.close()
