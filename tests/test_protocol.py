"""Every bus message survives a round trip; bytes that are not a message get an error naming why."""

import msgpack
import pytest

from shared.protocol import (
    AssignRequest,
    CancelAssignment,
    CancelRequest,
    ErrorInfo,
    GenerateRequest,
    ModelLoad,
    ModelResidency,
    Placement,
    PrefetchModel,
    ProtocolError,
    RouterState,
    Sampling,
    TokenBatch,
    TokenChunk,
    Usage,
    WorkerPlacement,
    WorkerState,
    decode,
    encode,
    token_chunks,
)

REQUEST = GenerateRequest(
    "cmpl-1", "m", (1, 2, 3), Sampling(max_tokens=5, temperature=0.0, stop=("\n",), seed=7), "tp.tokens.cmpl-1",
    "interactive", 1.5,
)
MESSAGES = [
    REQUEST,
    CancelRequest("cmpl-1"),
    TokenChunk("cmpl-1", 0, (5, 6), (-0.1, -0.2)),
    TokenChunk("cmpl-1", 0, (5, 6), (-0.1, -0.2), top_logprobs=(((5, -0.1), (8, -2.0)), ((6, -0.2), (1, -3.5)))),
    GenerateRequest(
        "cmpl-2", "m", (1,), Sampling(logprobs=True, top_logprobs=2, presence_penalty=0.5, frequency_penalty=-1.0,
                                      repetition_penalty=1.1, logit_bias=((5, -100.0), (7, 3.5))), "tp.tokens.cmpl-2",
    ),
    TokenChunk("cmpl-1", 2, (), None, "stop", Usage(3, 2, 1)),
    TokenChunk("cmpl-1", 1, error=ErrorInfo(503, "service_unavailable_error", "no worker")),
    TokenBatch((TokenChunk("cmpl-1", 0, (5,)), TokenChunk("cmpl-2", 3, (), None, "length", Usage(1, 3), None, "w"))),
    AssignRequest(REQUEST, (9, 10)),
    CancelAssignment("cmpl-1"),
    PrefetchModel("m"),
    WorkerState("w-1", True, ("m",), (ModelResidency("m", "device"),), "m", ("cmpl-1",), 10, 20, "cpu", 4, 2.5),
    WorkerState("w-2", False, (), (), None, (), 0, 0, "cuda:0", 1, 0.0),
    RouterState("r", True, ("w-1",), (ModelLoad("m", 1, 2, 3),), 1, 3.0),
    Placement(2, (WorkerPlacement("w-1", ("m", "n")),), 4.0),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message):
    assert decode(encode(message)) == message
    assert decode(encode(message), type(message)) == message


@pytest.mark.parametrize(
    "data, error",
    [
        (b"\xc1", "not a msgpack message"),
        (msgpack.packb({"id": "x"}), "expected \\[type, version, fields...\\]"),
        (msgpack.packb(["Nope", 1]), "unknown message type 'Nope'"),
        (msgpack.packb(["CancelRequest", 2, "x", "y"]), "CancelRequest version 2 is not supported \\(this side speaks 1\\)"),
        (msgpack.packb(["CancelRequest", 1, "x"]), "CancelRequest needs 2 fields, got 1"),
        (msgpack.packb(["TokenChunk", 3, "x", 0, 5, None, None, None, None, "", None]), "malformed TokenChunk"),
        (msgpack.packb(["TokenChunk", 2, "x", 0, [5]]), "TokenChunk version 2 is not supported \\(this side speaks 3\\)"),
    ],
)
def test_bad_bytes_are_refused_with_the_reason(data, error):
    with pytest.raises(ProtocolError, match=error):
        decode(data)


def test_an_unexpected_type_is_refused():
    with pytest.raises(ProtocolError, match="expected GenerateRequest, got CancelRequest"):
        decode(encode(CancelRequest("x")), GenerateRequest)


def test_only_bus_messages_encode():
    with pytest.raises(ProtocolError, match="Sampling is not a bus message"):
        encode(Sampling())


def test_messages_are_compact():
    assert len(encode(TokenChunk("cmpl-0123456789abcdef0123456789abcdef", 41, (1234,)))) < 64


def test_token_subjects_carry_a_batch_or_a_lone_chunk():
    one, two = TokenChunk("a", 0, (1,)), TokenChunk("b", 4, (2, 3), None, "stop", Usage(2, 6))
    assert token_chunks(encode(TokenBatch((one, two)))) == (one, two)
    assert token_chunks(encode(two)) == (two,)
    with pytest.raises(ProtocolError, match="expected TokenChunk or TokenBatch, got CancelRequest"):
        token_chunks(encode(CancelRequest("a")))
