"""KV hand-off between two engines on one machine: one prefills and exports the KV, another
imports the entry and decodes on; the output is what the request gives run alone."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from services.gpu_worker.engine.engine import Engine
from services.gpu_worker.engine.generate import run_to_completion
from services.gpu_worker.engine.handoff import (
    HandoffArea,
    KvEntryCorruptError,
    KvEntryMismatchError,
    KvEntryMissingError,
    KvHandoffError,
    KvNoRoomError,
    MAGIC,
)
from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams

from .conftest import ALL_MODELS, SMOLLM, small_config

PAGE = 16 << 10
"""Small pages, so that the demo models' prompts span several of them."""
GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
LLAMA, QWEN = "demo-llama", "demo-qwen2"


def make_engine(model_store, model: str = LLAMA, **overrides) -> Engine:
    page = 1 << 20 if model == SMOLLM else PAGE  # one SmolLM2 token's KV alone is 90 KiB
    config = small_config(**({"kv_page_bytes": page} | overrides))
    return Engine(config, {m: model_store.path(m) for m in {model, QWEN}})


@pytest.fixture
def engines(model_store, request):
    """Builds engines for a test and closes them after it."""
    made = []

    def make(model: str = LLAMA, **overrides) -> Engine:
        made.append(make_engine(model_store, model, **overrides))
        return made[-1]

    yield make
    for engine in made:
        engine.close()


@pytest.fixture(scope="module")
def long_prompt(prompt_ids):
    return prompt_ids[4]  # 34 tokens: several KV pages


def solo(engine: Engine, model: str, prompt) -> list[int]:
    done = run_to_completion(engine, [EngineRequest("solo", model, tuple(prompt), GREEDY)])
    return done["solo"].token_ids


def prefill_and_export(engine: Engine, model: str, prompt, path, swap_out: bool = False) -> int:
    """Prefills request "r", writes its KV entry and lets it go; returns its first token."""
    engine.add_request(EngineRequest("r", model, tuple(prompt), GREEDY))
    engine.activate(model)
    (first,) = engine.step()
    assert engine.last_step.is_prefill
    if swap_out:
        assert engine.swap_out(request_ids=["r"]) == 1
    engine.export_kv("r", path)
    assert engine.abort("r")
    return first.token_id


def continuation(model: str, prompt, first_token: int) -> EngineRequest:
    """Request "r" as a decode worker gets it: the prompt plus the token already produced."""
    params = replace(GREEDY, max_tokens=GREEDY.max_tokens - 1)
    return EngineRequest("r", model, tuple(prompt) + (first_token,), params)


def decode_rest(engine: Engine, model: str) -> tuple[list[int], list]:
    """Steps request "r" to its end; returns its tokens and what each step computed."""
    engine.activate(model)
    tokens, steps = [], []
    while engine.sequence("r") is not None:
        outputs = engine.step(["r"])
        steps.append(engine.last_step)
        tokens += [o.token_id for o in outputs if o.request_id == "r"]
    return tokens, steps


def assert_pages_balance(engine: Engine) -> None:
    stats = engine.stats()
    assert stats.free_pages == stats.total_pages and stats.free_host_pages == stats.total_host_pages
    assert stats.waiting == stats.running == stats.swapped == 0


@pytest.mark.parametrize("model", ALL_MODELS)
def test_a_second_engine_decodes_on_from_the_entry_like_the_request_alone(engines, long_prompt, tmp_path, model):
    prefill, decode = engines(model), engines(model)
    expected = solo(prefill, model, long_prompt)
    entry = tmp_path / "r.kv"
    first = prefill_and_export(prefill, model, long_prompt, entry)
    assert_pages_balance(prefill)

    decode.add_request(continuation(model, long_prompt, first), kv_entry=entry)
    assert decode.sequence("r").num_uncached == 1  # only the handed-over token is left to compute
    rest, steps = decode_rest(decode, model)

    assert [first] + rest == expected
    assert not any(s.is_prefill for s in steps)  # the prompt was not computed again
    assert_pages_balance(decode)


def test_kv_swapped_out_is_exported_and_an_import_without_free_device_pages_waits_in_host_memory(
    engines, long_prompt, tmp_path
):
    """Export reads the host copy of a swapped-out request; an import finding the device full
    lands in the host swap area, and the request's turn swaps it in like any parked request."""
    prefill = engines()
    expected = solo(prefill, LLAMA, long_prompt)
    first = prefill_and_export(prefill, LLAMA, long_prompt, tmp_path / "r.kv", swap_out=True)
    assert_pages_balance(prefill)

    decode = engines(kv_arena_bytes=6 * PAGE)  # 6 pages: the entry needs 5
    decode.add_request(EngineRequest("hog", LLAMA, tuple(long_prompt), GREEDY))
    decode.activate(LLAMA)
    decode.step(["hog"])
    assert decode.stats().free_pages == 1

    decode.add_request(continuation(LLAMA, long_prompt, first), kv_entry=tmp_path / "r.kv")
    assert decode.stats().swapped == 1
    rest, steps = decode_rest(decode, LLAMA)  # parks the hog to make room

    assert [first] + rest == expected and not any(s.is_prefill for s in steps)
    assert decode.abort("hog")
    assert_pages_balance(decode)


def rewrite_header(entry, path, **fields) -> None:
    """Writes a copy of `entry` at `path` with header fields changed (None removes one)."""
    raw = entry.read_bytes()
    start = len(MAGIC) + 4
    length = int.from_bytes(raw[len(MAGIC) : start], "little")
    header = json.loads(raw[start : start + length])
    header = {k: v for k, v in (header | fields).items() if v is not None}
    meta = json.dumps(header).encode()
    path.write_bytes(MAGIC + len(meta).to_bytes(4, "little") + meta + raw[start + length :])


def test_the_decode_side_reports_the_prompt_tokens_the_prefill_side_took_from_its_cache(engines, long_prompt, tmp_path):
    """The client's usage shows cached tokens where the prompt was computed, which in
    disaggregated mode is the other engine; an entry from a writer that did not record them
    reads as none, a nonsensical count is refused."""
    prefill, decode = engines(), engines()
    expected = solo(prefill, LLAMA, long_prompt)  # leaves the prompt's full pages cached
    entry = tmp_path / "r.kv"
    first = prefill_and_export(prefill, LLAMA, long_prompt, entry)
    hits = (len(long_prompt) - 1) // 16 * 16  # every full page but the one with the last token

    decode.add_request(continuation(LLAMA, long_prompt, first), kv_entry=entry)
    decode.activate(LLAMA)
    outputs = []
    while decode.sequence("r") is not None:
        outputs += decode.step(["r"])
    assert [first] + [o.token_id for o in outputs] == expected
    assert {o.cached_tokens for o in outputs} == {hits}

    older, negative = tmp_path / "older.kv", tmp_path / "negative.kv"
    rewrite_header(entry, older, prompt_cache_hits=None)
    rewrite_header(entry, negative, prompt_cache_hits=-1)
    with pytest.raises(KvEntryCorruptError, match="prompt_cache_hits is -1"):
        decode.add_request(continuation(LLAMA, long_prompt, first), kv_entry=negative)
    decode.add_request(continuation(LLAMA, long_prompt, first), kv_entry=older)
    assert decode.sequence("r").cached_prompt_tokens == 0
    assert decode.abort("r")
    assert_pages_balance(decode)


def test_an_entry_that_does_not_fit_the_engine_or_the_request_is_refused_by_name(engines, long_prompt, tmp_path):
    prefill = engines()
    entry = tmp_path / "r.kv"
    first = prefill_and_export(prefill, LLAMA, long_prompt, entry)
    request = continuation(LLAMA, long_prompt, first)
    truncated, garbage = tmp_path / "truncated.kv", tmp_path / "garbage.kv"
    truncated.write_bytes(entry.read_bytes()[:-100])
    garbage.write_bytes(b"not a KV entry at all")
    other_pages, decode = engines(kv_page_bytes=2 * PAGE), engines()

    cases = [
        (other_pages, request, entry, KvEntryMismatchError, "block_tokens=8; this engine needs block_tokens=16"),
        (decode, replace(request, model=QWEN), entry, KvEntryMismatchError, "model='demo-llama'; this engine needs model='demo-qwen2'"),
        (decode, replace(request, prompt_token_ids=(7,) + request.prompt_token_ids[1:]), entry, KvEntryMismatchError, "other tokens"),
        (decode, replace(request, prompt_token_ids=tuple(long_prompt)), entry, KvEntryMismatchError, "can use 1 to 33"),
        (decode, request, truncated, KvEntryCorruptError, "truncated"),
        (decode, request, garbage, KvEntryCorruptError, "not a KV entry"),
        (decode, request, tmp_path / "never-written.kv", KvEntryMissingError, "no KV entry"),
    ]
    for engine, req, path, error, message in cases:
        with pytest.raises(error, match=message):
            engine.add_request(req, kv_entry=path)
        assert engine.sequence("r") is None  # nothing was added
        assert_pages_balance(engine)

    decode.add_request(request)  # the fallback: recompute from the tokens
    rest, steps = decode_rest(decode, LLAMA)
    assert steps[0].is_prefill and steps[0].num_tokens == len(long_prompt) + 1
    assert_pages_balance(decode)


def test_an_entry_with_no_free_page_anywhere_is_refused(engines, long_prompt, tmp_path):
    prefill = engines()
    first = prefill_and_export(prefill, LLAMA, long_prompt, tmp_path / "r.kv")
    decode = engines(kv_arena_bytes=6 * PAGE, host_swap_bytes=2 * PAGE)
    decode.add_request(EngineRequest("hog", LLAMA, tuple(long_prompt), GREEDY))
    decode.activate(LLAMA)
    decode.step()

    with pytest.raises(KvNoRoomError, match="needs 5 pages; 1 device and 2 host pages are free"):
        decode.add_request(continuation(LLAMA, long_prompt, first), kv_entry=tmp_path / "r.kv")
    assert decode.sequence("r") is None
    decode.abort("hog")
    assert_pages_balance(decode)


def test_a_request_without_cached_kv_cannot_be_exported(engines, long_prompt, tmp_path):
    engine = engines()
    engine.add_request(EngineRequest("r", LLAMA, tuple(long_prompt), GREEDY))
    with pytest.raises(KvHandoffError, match="no KV cached yet"):
        engine.export_kv("r", tmp_path / "r.kv")
    with pytest.raises(KvHandoffError, match="not held"):
        engine.export_kv("nope", tmp_path / "nope.kv")
    assert not list(tmp_path.iterdir())


def test_the_area_maps_any_name_inside_itself_and_sweeps_what_nobody_imported(tmp_path):
    area = HandoffArea(tmp_path / "kv", max_age_s=60)
    assert area.path("chatcmpl-0a1b") == tmp_path / "kv" / "chatcmpl-0a1b.kv"
    sneaky = area.path("../../etc/passwd")
    assert sneaky.parent == tmp_path / "kv" and sneaky.name.startswith("h-")

    area.directory.mkdir()
    old, fresh, crashed, other = (area.directory / n for n in ("old.kv", "fresh.kv", ".x.kv.7.tmp", "notes.txt"))
    for f in (old, fresh, crashed, other):
        f.write_bytes(b"x")
    now = 1_000_000.0
    for f in (old, crashed, other):
        os.utime(f, (now - 61, now - 61))
    os.utime(fresh, (now - 59, now - 59))

    assert area.sweep(now) == 2
    assert sorted(p.name for p in area.directory.iterdir()) == ["fresh.kv", "notes.txt"]
    area.remove("fresh")
    area.remove("fresh")  # already gone: no error
    assert HandoffArea(tmp_path / "absent").sweep(now) == 0
