"""Every message on the bus: typed dataclasses, encoded as compact msgpack arrays.

On the wire a message is `[type name, version, field1, field2, ...]` in field order;
nested dataclasses are arrays of their fields.

Versions, so that services can be upgraded one at a time. Each message class carries a VERSION
and SINCE (default: VERSION), the oldest version whose fields the current ones only extend: a
version after SINCE appended fields, each with a default, at the end of the message or of a
part inside it, and changed nothing else. Such a change is one a receiver may skip, so it
keeps SINCE; any other change (a field removed, moved, retyped, or one whose meaning changed)
sets SINCE to the new VERSION. On the wire the version is `VERSION`, or `[VERSION, SINCE]`
when they differ. A receiver reads a message whose versions overlap its own range: an older one
(fields missing at the end take their defaults) or a newer one (fields it does not know, at
the end, are skipped); otherwise it refuses it with an error that names both. The fields of
every version are recorded in tests/protocol_shapes.json, and tests/test_protocol.py checks that
a change of fields came with a new VERSION and that SINCE tells the truth.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import ClassVar

import msgpack


class ProtocolError(ValueError):
    """Bytes that are not a message this side understands."""


_MESSAGES: dict[str, type] = {}


def message(cls):
    cls = dataclass(frozen=True)(cls)
    cls.SINCE = cls.__dict__.get("SINCE", cls.VERSION)
    if not 1 <= cls.SINCE <= cls.VERSION:
        raise TypeError(f"{cls.__name__}: SINCE must be within 1..VERSION")
    _MESSAGES[cls.__name__] = cls
    return cls


# ---- parts -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    """With logprobs: also the this-many most likely tokens at each position (0 to 20)."""
    presence_penalty: float = 0.0
    """OpenAI's: subtracted from the logit of every token the completion already holds (-2 to 2)."""
    frequency_penalty: float = 0.0
    """OpenAI's: subtracted once per time a token already occurs in the completion (-2 to 2)."""
    repetition_penalty: float = 1.0
    """CTRL's (vLLM's extension): logits of tokens in the prompt or completion divided by it when
    positive, multiplied when negative; 1 is off."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias added to its logit), -100 to 100 each."""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Of the prompt tokens, those whose KV came from the worker's prefix cache."""


@dataclass(frozen=True)
class ErrorInfo:
    code: int
    """HTTP status the gateway answers with: 400, 404, 429, 500, 503."""
    type: str
    message: str


@dataclass(frozen=True)
class ModelResidency:
    name: str
    tier: str
    """disk, host or device."""
    block_tokens: int = 0
    """Tokens one KV page holds for this model (pages are shared bytes, so this differs per model)."""
    weight_bytes: int = 0
    """Bytes of the model's weights: what a switch copies to the device."""
    host_bytes: int = 0
    """Host memory the model takes when loaded there: weight_bytes, plus a CPU engine's packed
    copies of its projections; 0 when not known (the worker has not loaded it yet)."""


@dataclass(frozen=True)
class ModelLoad:
    name: str
    queued: int
    running: int
    arrivals: int
    """Requests accepted since the router started."""
    tokens: int = 0
    """Output tokens those requests asked for (their max_tokens), since the router started."""


@dataclass(frozen=True)
class WorkerPlacement:
    worker_id: str
    models: tuple[str, ...]


@dataclass(frozen=True)
class RequestMove:
    request_id: str
    to_worker: str
    """Where the router moves it (it resumes from the tokens it has); "" lets it finish where it runs."""


@dataclass(frozen=True)
class DrainOrder:
    """A worker the router gives no new request: the autoscaler is emptying it to release it."""

    worker_id: str
    moves: tuple[RequestMove, ...] = ()


# ---- messages ----------------------------------------------------------------------


@message
class GenerateRequest:
    VERSION: ClassVar[int] = 3
    id: str
    model: str
    prompt_token_ids: tuple[int, ...]
    sampling: Sampling
    token_subject: str
    slo_class: str = "default"
    created_at: float = 0.0
    tenant: str = ""
    """Who asked (the OpenAI `user` field): the router shares a full pool fairly among tenants."""


@message
class CancelRequest:
    VERSION: ClassVar[int] = 1
    request_id: str
    reason: str = "client disconnected"


@message
class TokenChunk:
    """Tokens of one request from index on; the last chunk has a finish_reason or an error.
    `usage` comes with the last chunk, and (so far) with the first chunk a worker sends."""

    VERSION: ClassVar[int] = 3
    request_id: str
    index: int
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None
    worker_id: str = ""
    top_logprobs: tuple[tuple[tuple[int, float], ...], ...] | None = None
    """Per token of token_ids, the request's top_logprobs most likely (token id, logprob), most
    likely first; None when the request asked for none."""


@message
class TokenBatch:
    """Worker to gateway (and router): chunks of several requests whose tokens go to one token
    subject, in one message. A gateway reads every request's tokens on one subject of its own, so
    a worker's flush of a step's tokens is one message per gateway, not one per request."""

    VERSION: ClassVar[int] = 3
    chunks: tuple[TokenChunk, ...] = ()


@message
class AssignRequest:
    """Router to worker: serve this request; resume_token_ids were already produced elsewhere."""

    VERSION: ClassVar[int] = 3
    request: GenerateRequest
    resume_token_ids: tuple[int, ...] = ()
    kv_handoff: str = ""
    """Name of an entry in this machine's KV hand-off area holding the request's KV cache for
    its prompt and resume tokens but the last (written by a prefill worker); empty, or an
    entry that cannot be read: the worker prefills from the tokens (recompute)."""


@message
class CancelAssignment:
    VERSION: ClassVar[int] = 1
    request_id: str


@message
class PrefetchModel:
    VERSION: ClassVar[int] = 1
    model: str


@message
class WorkerState:
    VERSION: ClassVar[int] = 4
    worker_id: str
    ready: bool
    serving: tuple[str, ...]
    """Models this worker can load."""
    models: tuple[ModelResidency, ...]
    active_model: str | None
    running: tuple[str, ...]
    """Request ids the worker holds."""
    free_kv_pages: int
    total_kv_pages: int
    device: str
    seq: int
    """Report counter, so a receiver can drop reordered reports."""
    ts: float
    turn_id: int = 0
    """The turn the worker is running now; 0 when it is idle."""
    running_models: tuple[str, ...] = ()
    """The model of each request in `running`, in the same order."""
    max_running: int = 0
    """Requests this worker takes at once (its KV, not a slot count, is what binds on a GPU);
    0: the router's own default."""


@message
class RouterState:
    VERSION: ClassVar[int] = 2
    router_id: str
    ready: bool
    workers: tuple[str, ...]
    """Workers that reported recently."""
    models: tuple[ModelLoad, ...]
    pending: int
    ts: float
    attainment: float | None = None
    """SLO attainment of the requests that finished recently (the router's attainment window);
    None when none did."""


@message
class Placement:
    """The autoscaler's orders, kept in the PLACEMENT_BUCKET KV: workers read which models to
    keep in host memory (and which to keep resident), the router which workers to drain."""

    VERSION: ClassVar[int] = 2
    epoch: int
    workers: tuple[WorkerPlacement, ...]
    ts: float
    pins: tuple[WorkerPlacement, ...] = ()
    """Per worker, the hot models it keeps resident on its device."""
    drains: tuple[DrainOrder, ...] = ()


@message
class RunTurn:
    """Router to worker: compute `model` for `request_ids` until the turn ends.

    A turn ends when its quota of compute seconds is spent (checked between steps; inf: no
    limit), when none of its requests is left unfinished, when `until_prefilled` and every
    request has produced a token in this turn, or when a newer RunTurn arrives (it replaces
    this one at the next step boundary). The worker then sends a TurnReport and waits.
    """

    VERSION: ClassVar[int] = 3
    turn_id: int
    model: str
    request_ids: tuple[str, ...]
    quota_s: float
    until_prefilled: bool = False
    """A prefill turn: ends once each request has its first token (of this worker)."""
    park: tuple[str, ...] = ()
    """Requests (of any model) whose KV goes to host memory before this turn starts."""
    prefetch: str | None = None
    """The model to copy towards the device while this turn computes."""
    hand_off: bool = False
    """Disaggregated prefill: once a request has its first token, its KV cache goes to this
    machine's KV hand-off area and the worker lets the request go (TurnReport.handed_off)."""
    admit_new: bool = False
    """Requests of `model` assigned to the worker while this turn runs join it (a lone model's
    unbounded turn: no new RunTurn per arrival)."""


@message
class TurnReport:
    """Worker to router: how a turn went, for the scheduler and its time estimators."""

    VERSION: ClassVar[int] = 2
    worker_id: str
    turn_id: int
    model: str
    reason: str
    """quota, done, prefilled, replaced, idle (nothing of it was left to run) or error."""
    switch_s: float
    """Seconds spent making the model computable (weights and KV in) before the first step."""
    prefill_steps: int
    prefill_tokens: int
    prefill_s: float
    decode_steps: int
    decode_tokens: int
    """Tokens the decode steps produced (batch size summed over steps)."""
    decode_context_tokens: int
    """Context tokens the decode steps attended to, summed over steps (for the step-time fit)."""
    decode_s: float
    prefilled: tuple[str, ...] = ()
    """Requests that produced their first token on this worker in this turn."""
    finished: tuple[str, ...] = ()
    idle_s: float = 0.0
    """Seconds the worker waited with nothing to run before this turn arrived."""
    ts: float = 0.0
    handed_off: tuple[str, ...] = ()
    """Requests whose KV went to the hand-off area (entry named by request id); the worker no
    longer holds them."""


WorkerCommand = AssignRequest | CancelAssignment | PrefetchModel | RunTurn


# ---- codec -------------------------------------------------------------------------


def encode(msg) -> bytes:
    cls = type(msg)
    if _MESSAGES.get(cls.__name__) is not cls:
        raise ProtocolError(f"{cls.__name__} is not a bus message")
    version = cls.VERSION if cls.SINCE == cls.VERSION else [cls.VERSION, cls.SINCE]
    return msgpack.packb([cls.__name__, version, *_fields_to_wire(msg)], use_bin_type=True)


def decode(data: bytes, *expected: type):
    """Decodes one message; with `expected`, refuses any other message type."""
    try:
        wire = msgpack.unpackb(data, raw=False)
    except Exception as e:
        raise ProtocolError(f"not a msgpack message ({e})") from None
    if not isinstance(wire, list) or len(wire) < 2 or not isinstance(wire[0], str):
        raise ProtocolError("not a tokenpool message: expected [type, version, fields...]")
    name, header, values = wire[0], wire[1], wire[2:]
    cls = _MESSAGES.get(name)
    if cls is None:
        raise ProtocolError(f"unknown message type {name!r}")
    if expected and cls not in expected:
        wanted = " or ".join(c.__name__ for c in expected)
        raise ProtocolError(f"expected {wanted}, got {name}")
    version, since = _versions(name, header)
    if version < cls.SINCE or since > cls.VERSION:
        theirs = f"{version}" if since == version else f"{version} (readable from version {since} on)"
        ours = f"{cls.VERSION}" if cls.SINCE == cls.VERSION else f"{cls.SINCE} to {cls.VERSION}"
        raise ProtocolError(f"{name} version {theirs} is not supported (this side speaks {ours})")
    return _from_wire(cls, values, version != cls.VERSION)


def _versions(name: str, header) -> tuple[int, int]:
    """(version, since) from a message's version header: an int, or [version, since]."""
    if isinstance(header, int) and not isinstance(header, bool):
        return header, header
    if (isinstance(header, list) and len(header) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in header)
            and 1 <= header[1] <= header[0]):
        return header[0], header[1]
    raise ProtocolError(f"{name} has a malformed version {header!r}: expected an int or [version, since]")


_ENCODERS: dict[type, tuple[tuple[str, typing.Callable | None], ...]] = {}
_PLAIN = (int, float, str, bool, bytes, type(None))


def _fields_to_wire(obj) -> list:
    cls = type(obj)
    encoders = _ENCODERS.get(cls) or _ENCODERS.setdefault(cls, _build_encoders(cls))
    return [getattr(obj, name) if enc is None else enc(getattr(obj, name)) for name, enc in encoders]


def _build_encoders(cls) -> tuple[tuple[str, typing.Callable | None], ...]:
    """Per field, None where the value goes on the wire as it is (its type says it holds no
    dataclass), else the function that turns it into arrays."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, None if _is_plain(hints[f.name]) else _to_wire) for f in dataclasses.fields(cls))


def _is_plain(tp) -> bool:
    if tp in _PLAIN:
        return True
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return all(_is_plain(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return all(a is Ellipsis or _is_plain(a) for a in args)
    return False


def _to_wire(value):
    if dataclasses.is_dataclass(value):
        return _fields_to_wire(value)
    if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
        return [_fields_to_wire(v) for v in value]
    return value


_DECODERS: dict[tuple[type, bool], list] = {}


def _from_wire(cls, values, other_version: bool = False):
    """`other_version`: the sender speaks another version of the message, so this part may
    lack fields added since (they take their defaults) or have some added later (skipped)."""
    decoders = _DECODERS.get((cls, other_version)) or _DECODERS.setdefault(
        (cls, other_version), _build_decoders(cls, other_version)
    )
    if not isinstance(values, list):
        raise ProtocolError(f"{cls.__name__} needs {len(decoders)} fields, got {_count(values)}")
    if len(values) != len(decoders):
        if not other_version or len(values) < _required(cls):
            raise ProtocolError(f"{cls.__name__} needs {len(decoders)} fields, got {_count(values)}")
        values = values[: len(decoders)]
    try:
        return cls(*[v if d is None else d(v) for d, v in zip(decoders, values)])
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"malformed {cls.__name__}: {e}") from None


def _count(values) -> str:
    return str(len(values)) if isinstance(values, list) else type(values).__name__


def _required(cls) -> int:
    """How many leading fields have no default."""
    fields = dataclasses.fields(cls)
    return next(
        (i for i, f in enumerate(fields)
         if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING),
        len(fields),
    )


def _build_decoders(cls, other_version: bool) -> list:
    hints = typing.get_type_hints(cls)
    return [_decoder_for(hints[f.name], other_version) for f in dataclasses.fields(cls)]


def _decoder_for(tp, other_version: bool = False):
    """The function that turns a field's wire value into its type; None: the value as it is."""
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        decode_inner = _decoder_for(inner[0], other_version) if len(inner) == 1 else None
        if decode_inner is None:
            return None
        return lambda v: None if v is None else decode_inner(v)
    if dataclasses.is_dataclass(tp):
        return lambda v: _from_wire(tp, v, other_version)
    if typing.get_origin(tp) is tuple:
        item = _decoder_for(args[0], other_version) if args else None
        if item is None:
            return tuple
        return lambda v: tuple(item(x) for x in v)
    return None


def token_chunks(data: bytes) -> tuple[TokenChunk, ...]:
    """The chunks in a message on a token subject: a TokenBatch (from workers) or a lone
    TokenChunk (a router's error chunk, older workers)."""
    msg = decode(data, TokenChunk, TokenBatch)
    return msg.chunks if isinstance(msg, TokenBatch) else (msg,)
