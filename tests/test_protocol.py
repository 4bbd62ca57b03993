"""Every bus message survives a round trip; bytes that are not a message get an error naming why;
a message from a service one version older or newer is read when its fields only grew."""

import json
from typing import ClassVar

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
    message,
    token_chunks,
)

from tests.protocol_shapes import RECORD, extension_problems, messages, shape

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
        (msgpack.packb(["CancelRequest", [1], "x"]), "CancelRequest has a malformed version \\[1\\]"),
        (msgpack.packb(["CancelRequest", [1, 2], "x"]), "malformed version \\[1, 2\\]: expected an int or \\[version, since\\]"),
        (msgpack.packb(["CancelRequest", True, "x"]), "malformed version True"),
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


def test_every_message_has_its_fields_recorded_under_its_version_and_since_tells_the_truth():
    """A change of a message's fields (or of a part inside it) needs a new VERSION, recorded in
    tests/protocol_shapes.json (`python -m tests.protocol_shapes` prints the current shapes);
    SINCE may stay below VERSION only while every version from SINCE on just appended fields
    with defaults, which a receiver of another version can skip or fill in."""
    record = json.loads(RECORD.read_text())
    for name, cls in messages().items():
        versions = record.get(name, {})
        assert versions.get(str(cls.VERSION)) == shape(cls), (
            f"{name} version {cls.VERSION} has other fields than recorded: bump VERSION and record them"
        )
        for version in range(cls.SINCE, cls.VERSION):
            assert str(version) in versions, f"{name} version {version} (from SINCE) is not recorded"
            assert extension_problems(versions[str(version)], shape(cls), cls, name) == []


@message
class Greeting:
    """A message at version 3 whose fields only grew since version 2 (`part.cached_tokens` and
    `loud` came in 3); version 1 had others."""

    VERSION: ClassVar[int] = 3
    SINCE: ClassVar[int] = 2
    name: str
    part: Usage | None = None
    loud: bool = False


def test_a_newer_sender_that_only_added_fields_is_read_without_them():
    wire = msgpack.packb(["Greeting", [4, 2], "hi", [1, 2, 3, "new in 4"], True, "new in 4"])
    assert decode(wire) == Greeting("hi", Usage(1, 2, 3), True)


def test_an_older_sender_is_read_with_defaults_for_what_it_did_not_have():
    assert decode(msgpack.packb(["Greeting", 2, "hi", [1, 2]])) == Greeting("hi", Usage(1, 2), False)
    assert msgpack.unpackb(encode(Greeting("hi")))[1] == [3, 2], "the header says from which version it reads"
    assert decode(encode(Greeting("hi", Usage(1, 2, 3), True))) == Greeting("hi", Usage(1, 2, 3), True)


@pytest.mark.parametrize(
    "wire, error",
    [
        (["Greeting", 1, "hi"], "Greeting version 1 is not supported \\(this side speaks 2 to 3\\)"),
        (["Greeting", [5, 4], "hi"], "Greeting version 5 \\(readable from version 4 on\\) is not supported \\(this side speaks 2 to 3\\)"),
        (["Greeting", 2], "Greeting needs 3 fields, got 0"),
        (["Greeting", 3, "hi"], "Greeting needs 3 fields, got 1"),
        (["Greeting", 3, "hi", None, False, "extra"], "Greeting needs 3 fields, got 4"),
        (["Greeting", 2, "hi", [1]], "Usage needs 3 fields, got 1"),
    ],
)
def test_versions_that_do_not_overlap_and_wrong_field_counts_are_refused_by_name(wire, error):
    """Within one version the fields must be exactly there; another version's message must
    still have every field without a default."""
    with pytest.raises(ProtocolError, match=error):
        decode(msgpack.packb(wire))


def test_the_shape_check_names_what_was_not_an_append_with_a_default():
    old = {"name": "str", "part": ["Usage | None", {"prompt_tokens": "int", "completion_tokens": "int"}]}
    assert extension_problems(old, shape(Greeting), Greeting, "Greeting") == []
    moved = {"loud": "bool", "name": "str"}
    assert "are no longer the first ones" in extension_problems(moved, shape(Greeting), Greeting, "Greeting")[0]
    retyped = {"name": "int"}
    assert extension_problems(retyped, shape(Greeting), Greeting, "Greeting") == ["Greeting.name changed from int to str"]
    no_default = {"request_id": "str"}
    assert extension_problems(no_default, shape(CancelAssignment), CancelAssignment, "C") == []
    assert extension_problems({}, shape(CancelAssignment), CancelAssignment, "C") == ["C.request_id was added without a default"]
