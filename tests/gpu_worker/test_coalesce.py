"""Tokens waiting to be published leave as one chunk per request, same tokens, same order."""

from services.gpu_worker.coalesce import coalesce
from shared.protocol import ErrorInfo, TokenChunk, Usage

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


def test_logprobs_join_with_their_tokens():
    out = coalesce([(A, tok("a", 0, 10, logprob=-0.5)), (A, tok("a", 1, 11, logprob=-1.5))])

    assert [(c.token_ids, c.logprobs) for _, c in out] == [((10, 11), (-0.5, -1.5))]


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
