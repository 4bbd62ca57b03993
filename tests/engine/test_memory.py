"""Arena pieces: range allocator, page pool, and page accounting under random traffic."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gpu_worker.engine.errors import OutOfMemoryError
from services.gpu_worker.engine.memory import PagePool, RangeAllocator
from services.gpu_worker.engine.prefix_cache import PrefixCache
from services.gpu_worker.engine.scheduler import Scheduler
from services.gpu_worker.engine.sequence import EngineRequest, Sequence


def test_range_allocator_first_fit_and_reuse():
    r = RangeAllocator(100)
    a, b, c = r.allocate(30), r.allocate(30), r.allocate(30)
    assert (a, b, c) == (0, 30, 60)
    assert r.allocate(20) is None
    r.free(b)
    assert r.allocate(25) == 30
    assert r.allocate(10) == 90
    with pytest.raises(KeyError):
        r.free(5)


def test_page_pool_refuses_more_than_it_has():
    p = PagePool(4)
    got = p.allocate(3)
    assert len(set(got)) == 3 and p.num_free == 1
    with pytest.raises(OutOfMemoryError, match="asked for 2 KV pages, 1 free"):
        p.allocate(2)
    p.free(got)
    assert p.num_free == 4


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "step", "finish", "preempt", "import"]), st.integers(0, 40), st.sampled_from(["a", "b"])
        ),
        max_size=80,
    ),
    st.integers(2, 12),
    st.booleans(),
)
def test_pages_balance_and_no_sequence_is_lost(ops, num_pages, caching):
    """Across arrivals, KV imports (hand-offs), steps, completions and preemptions every page is
    owned once or free; with a prefix cache (the prompts here are prefixes of one another), a
    page owned by several sequences is a cached one counting exactly them, and an idle cached
    page is owned by none and counts as free."""
    cache = PrefixCache() if caching else None
    pool = PagePool(num_pages, cache=cache)
    sched = Scheduler(pool, max_batch_tokens=16, max_batch_size=4)
    live: dict[str, Sequence] = {}
    block = 4
    for n, (op, x, model) in enumerate(ops):
        if op == "add":
            seq = Sequence(EngineRequest(f"r{n}", model, tuple(range(1, 2 + x % 9)), ), arrival=n)
            live[seq.request_id] = seq
            sched.add(seq)
        elif op == "import":
            # A hand-off: the sequence arrives with its first tokens' KV in freshly taken pages.
            seq = Sequence(EngineRequest(f"r{n}", model, tuple(range(1, 4 + x % 9))), arrival=n)
            seq.num_cached = len(seq.token_ids) - 1 - x % 2
            count = -(-seq.num_cached // block)
            if pool.can_allocate(count):
                seq.pages = pool.allocate(count)
                live[seq.request_id] = seq
                sched.add_cached(seq)
        elif op == "step":
            batch = sched.schedule(model, block)
            if batch:
                sched.commit(batch, block)
                for seq, samples in zip(batch.seqs, batch.sampling):
                    if samples:
                        seq.token_ids.append(7)
        elif op == "finish" and live:
            seq = live.pop(sorted(live)[x % len(live)])
            sched.finish(seq, "stop")
        elif op == "preempt":
            running = [s for s in sched.running if s.model == model]
            if running:
                sched.preempt(running[x % len(running)])
        owners = Counter(p for s in live.values() for p in s.pages)
        for page, count in owners.items():
            if cache is not None and cache.holds(page):
                assert cache.refs(page) == count
            else:
                assert count == 1
        assert len(owners) + pool.num_free == num_pages
        queued = sched.waiting + sched.running + sched.swapped
        assert sorted(s.request_id for s in queued) == sorted(live)
        for s in live.values():
            assert s.num_cached <= len(s.pages) * block


@pytest.mark.parametrize("garbage", [float("nan"), float("inf")])
def test_what_a_page_held_before_never_reaches_a_new_request(model_store, prompt_ids, garbage):
    """The arena is uninitialised memory: on CUDA it holds whatever the process freed before,
    here it is made to hold NaN or inf. Attention reads whole pages, the unwritten tail of a
    sequence's last page and the padding of a shorter sequence's block table included; those
    reads must see zeros, or a ragged batch's shorter sequences decode garbage."""
    from services.gpu_worker.engine.engine import Engine
    from services.gpu_worker.engine.generate import run_to_completion
    from services.gpu_worker.engine.sequence import SamplingParams

    from .conftest import small_config

    model = "demo-llama"
    greedy = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    requests = [EngineRequest(f"r{i}", model, ids, greedy) for i, ids in enumerate(prompt_ids[:4])]
    assert len({len(ids) for ids in prompt_ids[:4]}) > 1, "a ragged batch"
    outputs = []
    for poison in (False, True):
        engine = Engine(small_config(), {model: model_store.path(model)})
        try:
            if poison:
                engine.arena.kv[: engine.arena.num_pages].fill_(garbage)
            outputs.append({rid: out.token_ids for rid, out in run_to_completion(engine, requests).items()})
        finally:
            engine.close()
    clean, poisoned = outputs
    assert poisoned == clean


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), max_size=20, unique_by=(lambda p: p[0], lambda p: p[1])))
def test_page_runs_copy_every_page_once_and_join_consecutive_pages(pairs):
    from services.gpu_worker.engine.memory import page_runs

    dst, src = [d for d, _ in pairs], [s for _, s in pairs]
    runs = page_runs(dst, src)
    assert [(d + i, s + i) for d, s, n in runs for i in range(n)] == list(zip(dst, src))
    for (d1, s1, n1), (d2, s2, _) in zip(runs, runs[1:]):
        assert not (d2 == d1 + n1 and s2 == s1 + n1), "two runs that could be one"


def test_swapped_pages_come_back_bit_for_bit_in_runs_and_single_pages():
    import torch

    from services.gpu_worker.engine.memory import copy_pages

    device_kv = torch.randn(10, 16)
    host_kv = torch.zeros(10, 16)
    device_pages, host_pages = [2, 3, 4, 7, 0], [5, 6, 7, 0, 1]
    copy_pages(host_kv, host_pages, device_kv, device_pages)
    back = torch.zeros(10, 16)
    copy_pages(back, device_pages, host_kv, host_pages)
    assert torch.equal(back[device_pages], device_kv[device_pages])
    assert torch.equal(host_kv[host_pages], device_kv[device_pages])
