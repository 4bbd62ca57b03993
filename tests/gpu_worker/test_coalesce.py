"""Tokens waiting to be published leave as one chunk per request, same tokens, same order."""

from services.gpu_worker.coalesce import BATCH_CHUNKS, coalesce, token_batches
from shared.protocol import ErrorInfo, TokenBatch, TokenChunk, Usage

A, B = "tp.tokens.a", "tp.tokens.b"


def tok(request, index, token, finish=None, logprob=None, usage=None):
    logprobs = None if logprob is None else (logprob,)
    return TokenChunk(request, index, (token,), logprobs, finish, usage, None, "w")


def test_consecutive_tokens_of_each_request_join_and_requests_stay_apart():
    chunks = [(A, tok("a", 0, 10)), (B, tok("b", 3, 20)), (A, tok("a", 1, 11)), (B, tok("b", 4, 21))]
    chunks.append((A, tok("a", 2, 12, "length", usage=Usage(5, 3))))

    out = coalesce(chunks)

    assert [(s, c.request_id, c.index, c.token_ids) for s, c in out] == [
        (A, "a", 0, (10, 11, 12)),
        (B, "b", 3, (20, 21)),
    ]
    assert out[0][1].finish_reason == "length" and out[0][1].usage == Usage(5, 3)
    assert out[1][1].finish_reason is None and out[1][1].usage is None


def test_a_joined_chunk_keeps_the_latest_usage_of_its_parts():
    first = tok("a", 0, 10, usage=Usage(5, 1, 4))
    out = coalesce([(A, first), (A, tok("a", 1, 11)), (A, tok("a", 2, 12))])
    assert [(c.token_ids, c.usage) for _, c in out] == [((10, 11, 12), Usage(5, 1, 4))]
    out = coalesce([(A, first), (A, tok("a", 1, 11, "length", usage=Usage(5, 2, 4)))])
    assert [(c.token_ids, c.usage) for _, c in out] == [((10, 11), Usage(5, 2, 4))]


def test_logprobs_join_with_their_tokens():
    out = coalesce([(A, tok("a", 0, 10, logprob=-0.5)), (A, tok("a", 1, 11, logprob=-1.5))])

    assert [(c.token_ids, c.logprobs) for _, c in out] == [((10, 11), (-0.5, -1.5))]


def test_top_logprobs_join_with_their_tokens_and_never_with_chunks_without():
    def top(request, index, token, alternatives):
        return TokenChunk(request, index, (token,), (-0.5,), None, None, None, "w", (alternatives,))

    first, second = top("a", 0, 10, ((10, -0.5), (3, -2.0))), top("a", 1, 11, ((11, -0.5), (4, -1.0)))
    out = coalesce([(A, first), (A, second), (A, tok("a", 2, 12, logprob=-0.5))])

    assert [(c.token_ids, c.top_logprobs) for _, c in out] == [
        ((10, 11), (((10, -0.5), (3, -2.0)), ((11, -0.5), (4, -1.0)))),
        ((12,), None),
    ]


def test_an_error_a_gap_or_anything_after_the_last_chunk_is_never_joined():
    error = TokenChunk("a", 2, error=ErrorInfo(500, "server_error", "boom"), worker_id="w")
    chunks = [(A, tok("a", 0, 10)), (A, tok("a", 1, 11)), (A, error)]
    chunks += [(B, tok("b", 0, 20)), (B, tok("b", 2, 22)), (B, tok("b", 3, 23, "stop")), (B, tok("b", 4, 24))]

    out = coalesce(chunks)

    assert [(c.request_id, c.index, c.token_ids, c.error is not None) for _, c in out] == [
        ("a", 0, (10, 11), False),
        ("a", 2, (), True),
        ("b", 0, (20,), False),
        ("b", 2, (22, 23), False),
        ("b", 4, (24,), False),
    ]


def test_a_single_chunk_goes_out_as_it_is():
    chunk = tok("a", 0, 10)

    assert coalesce([(A, chunk)]) == [(A, chunk)]
    assert coalesce([]) == []


def test_chunks_for_one_subject_leave_in_one_batch_in_their_order():
    a0, b0, a1, c0 = tok("a", 0, 10), tok("b", 0, 20), tok("a", 1, 11), tok("c", 0, 30)

    out = token_batches([(A, a0), (B, c0), (A, b0), (A, a1)])

    assert out == [(A, TokenBatch((a0, b0, a1))), (B, TokenBatch((c0,)))]


def test_a_big_flush_is_split_into_bounded_batches():
    chunks = [(A, tok(f"r{i}", 0, i)) for i in range(2 * BATCH_CHUNKS + 1)]

    out = token_batches(chunks)

    assert [len(batch.chunks) for _, batch in out] == [BATCH_CHUNKS, BATCH_CHUNKS, 1]
    assert [c for _, batch in out for c in batch.chunks] == [c for _, c in chunks]
