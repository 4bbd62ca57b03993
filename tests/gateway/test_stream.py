"""Token reassembly by index, incremental detokenization and stop-string trimming."""

import random

import pytest

from services.gateway.stream import Detokenizer, StopTrimmer, TextStream, TokenReassembler
from shared.protocol import ErrorInfo, TokenChunk, Usage
from tests.gateway.conftest import SMOL


def chunk(index, ids, finish=None, logprobs=None, error=None):
    return TokenChunk("r", index, tuple(ids), logprobs, finish, None, error)


REASSEMBLY = [
    ("in order", [chunk(0, [1, 2]), chunk(2, [3], "stop")], [1, 2, 3]),
    ("swapped", [chunk(2, [3], "stop"), chunk(0, [1, 2])], [1, 2, 3]),
    ("duplicate", [chunk(0, [1]), chunk(0, [1]), chunk(1, [2], "stop")], [1, 2]),
    ("overlap", [chunk(0, [1, 2]), chunk(1, [2, 3]), chunk(3, [4], "length")], [1, 2, 3, 4]),
    ("overlap ahead", [chunk(2, [3, 4], "stop"), chunk(0, [1, 2, 3])], [1, 2, 3, 4]),
    ("after finish", [chunk(0, [1], "stop"), chunk(1, [2])], [1]),
    ("finish-only chunk", [chunk(1, [], "stop"), chunk(0, [1])], [1]),
    ("reverse", [chunk(i, [10 + i], "stop" if i == 4 else None) for i in reversed(range(5))], [10, 11, 12, 13, 14]),
]


@pytest.mark.parametrize("name, chunks, expected", REASSEMBLY, ids=[r[0] for r in REASSEMBLY])
def test_reassembly_orders_and_deduplicates(name, chunks, expected):
    r = TokenReassembler()
    got = []
    for c in chunks:
        got += r.push(c).token_ids
    assert got == expected and r.done


def test_reassembly_keeps_logprobs_aligned_and_stops_at_an_error():
    r = TokenReassembler()
    assert r.push(chunk(1, [2], logprobs=(-2.0,))).token_ids == []
    d = r.push(chunk(0, [1], logprobs=(-1.0,)))
    assert (d.token_ids, d.logprobs) == ([1, 2], [-1.0, -2.0])
    d = r.push(chunk(5, [], error=ErrorInfo(503, "service_unavailable_error", "no worker")))
    assert d.error.code == 503 and r.done
    assert r.push(chunk(2, [3], "stop")).token_ids == []


def test_random_permutations_with_duplicates_give_the_same_tokens():
    ids = list(range(100, 140))
    chunks = [chunk(i, ids[i : i + 3], "length" if i + 3 >= len(ids) else None) for i in range(0, len(ids), 3)]
    rng = random.Random(0)
    for _ in range(50):
        shuffled = chunks + rng.sample(chunks, 5)
        rng.shuffle(shuffled)
        r, got = TokenReassembler(), []
        for c in shuffled:
            got += r.push(c).token_ids
        assert got == ids


@pytest.fixture(scope="module")
def tok(model_store):
    from shared.tokenizer import Tokenizer

    return Tokenizer(model_store.path(SMOL))


@pytest.mark.parametrize(
    "text", ["héllo 🌍 wörld 日本語", "plain ascii text", "emoji only 🎉🎉", "数学 and\nnewlines\n\n"]
)
def test_incremental_detokenization_equals_a_whole_decode(tok, text):
    ids = tok.encode(text)
    d = Detokenizer(tok)
    deltas = [d.add([i]) for i in ids] + [d.flush()]
    assert "".join(deltas) == text == tok.decode(ids)
    assert not any("\ufffd" in s for s in deltas)  # incomplete characters were held back, not shown


def test_detokenization_with_prompt_context(tok):
    prompt = tok.encode("Say:")
    ids = tok.encode(" hello there 🌍")
    d = Detokenizer(tok, prompt)
    assert "".join([d.add(ids[:3]), d.add(ids[3:]), d.flush()]) == " hello there 🌍"


STOPS = [
    # stops, pieces, expected text, hit
    (("\n",), ["ab", "c\nd"], "abc", True),
    (("END",), ["abcE", "N", "Dxyz"], "abc", True),
    (("END",), ["abcE", "N"], "abcEN", False),
    (("xyz", "b"), ["a", "bxyz"], "a", True),
    (("long stop", "s"), ["this is"], "thi", True),
    ((), ["any", "thing"], "anything", False),
    (("ab",), ["xa", "", "b"], "x", True),
]


@pytest.mark.parametrize("stops, pieces, expected, hit", STOPS)
def test_stop_strings_trim_across_pieces(stops, pieces, expected, hit):
    t = StopTrimmer(stops)
    out = "".join(t.feed(p) for p in pieces) + t.feed("", final=True)
    assert (out, t.hit) == (expected, hit)


def test_stop_trimmer_never_shows_a_prefix_that_might_become_a_stop():
    t = StopTrimmer(("STOP", "xx"))
    assert t.feed("abcST") == "abc"  # "ST" may become "STOP": held back
    assert t.feed("Ox") == "STO"  # "STOx" cannot, but "x" may become "xx"
    assert t.feed("y") == "xy"
    assert t.feed("zSTOP!") == "z" and t.hit
    assert t.feed("more") == ""


def test_text_stream_end_to_end(tok):
    ids = tok.encode("one two three four")
    s = TextStream(tok, stop=(" three",), prompt_ids=(5, 6))
    chunks = [chunk(i, [t]) for i, t in enumerate(ids)]
    chunks[-1] = chunk(len(ids) - 1, [ids[-1]], "stop")
    updates = [s.push(c) for c in reversed(chunks[:2])] + [s.push(c) for c in chunks[2:]]
    assert "".join(u.text for u in updates) == "one two"
    final = next(u for u in updates if u.finished)
    assert final.finish_reason == "stop" and final.stopped_early  # the worker had not finished yet
    assert final.usage == Usage(2, 3)


def test_a_stop_string_before_the_workers_last_chunk_keeps_the_cached_tokens_of_its_first(tok):
    ids = tok.encode("one two three four")
    s = TextStream(tok, stop=(" three",), prompt_ids=(5, 6, 7, 8))
    first = TokenChunk("r", 0, (ids[0],), None, None, Usage(4, 1, cached_tokens=3))
    updates = [s.push(first)] + [s.push(chunk(i, [t])) for i, t in enumerate(ids) if i]
    final = next(u for u in updates if u.finished)
    assert final.stopped_early and final.usage == Usage(4, 3, cached_tokens=3)


def test_text_stream_takes_the_workers_usage(tok):
    s = TextStream(tok, prompt_ids=(1, 2, 3))
    u = s.push(TokenChunk("r", 0, tuple(tok.encode("hi")), None, "length", Usage(3, 1)))
    assert (u.text, u.finish_reason, u.usage, u.stopped_early) == ("hi", "length", Usage(3, 1), False)


def test_top_logprobs_stay_aligned_through_overlaps_and_gaps():
    def top(t):
        return ((t, -0.1), (t + 1, -2.0))

    r = TokenReassembler()
    d = r.push(TokenChunk("r", 0, (1, 2), (-1.0, -2.0), top_logprobs=(top(1), top(2))))
    d2 = r.push(TokenChunk("r", 1, (2, 3), (-2.0, -3.0), top_logprobs=(top(2), top(3))))  # overlaps token 2
    d3 = r.push(TokenChunk("r", 3, (4,), (-4.0,), "stop"))  # a chunk without them
    assert d.top_logprobs + d2.top_logprobs + d3.top_logprobs == [top(1), top(2), top(3), None]
    assert d2.token_ids == [3] and d2.logprobs == [-3.0]
