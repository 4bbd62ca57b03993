"""Typed reads of one JSON request body's fields; each mistake is a 400 naming the field."""

from __future__ import annotations

import math

from services.gateway.errors import invalid

MAX_STOP_STRINGS = 4
SEED_LIMIT = 2**63
MAX_LOGIT_BIAS_ENTRIES = 300
"""OpenAI's limit."""
LOGIT_BIAS_RANGE = 100.0


def json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class Fields:
    """The fields of a request body (a dict); absent and null both mean "use the default"."""

    def __init__(self, body: dict):
        self.body = body

    def present(self, name: str) -> bool:
        return self.body.get(name) is not None

    def required(self, name: str):
        if name not in self.body or self.body[name] is None:
            raise invalid(f"you must provide the '{name}' parameter", name)
        return self.body[name]

    def string(self, name: str, default: str | None = None) -> str | None:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise invalid(f"'{name}' must be a string, got {json_type(value)}", name)
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise invalid(f"'{name}' must be a boolean, got {json_type(value)}", name)
        return value

    def integer(self, name: str, default: int | None = None, lo: int | None = None, hi: int | None = None) -> int | None:
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(f"'{name}' must be an integer, got {json_type(value)}", name)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise invalid(f"'{name}' must be {_range_text(lo, hi)}, got {value}", name)
        return value

    def number(self, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid(f"'{name}' must be a number, got {json_type(value)}", name)
        value = _as_float(value)
        too_low = value <= lo if lo_open else value < lo
        if not math.isfinite(value) or too_low or value > hi:
            bounds = f"in ({lo:g}, {hi:g}]" if lo_open else f"between {lo:g} and {hi:g}"
            raise invalid(f"'{name}' must be {bounds}, got {value:g}", name)
        return value

    def seed(self) -> int | None:
        return self.integer("seed", None, 0, SEED_LIMIT - 1)

    def stop(self) -> tuple[str, ...]:
        value = self.body.get("stop")
        if value is None:
            return ()
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise invalid(f"'stop' must be a string or an array of strings, got {json_type(value)}", "stop")
        if len(stops) > MAX_STOP_STRINGS:
            raise invalid(f"'stop' takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}", "stop")
        if any(s == "" for s in stops):
            raise invalid("'stop' strings must not be empty", "stop")
        return tuple(dict.fromkeys(stops))

    def logit_bias(self) -> tuple[tuple[int, float], ...]:
        """{"token id": bias} as (id, bias) pairs by id; whether the ids are in the vocabulary is the model's check."""
        value = self.body.get("logit_bias")
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise invalid(f"'logit_bias' must be an object of token ids to numbers, got {json_type(value)}", "logit_bias")
        if len(value) > MAX_LOGIT_BIAS_ENTRIES:
            raise invalid(f"'logit_bias' takes at most {MAX_LOGIT_BIAS_ENTRIES} entries, got {len(value)}", "logit_bias")
        bias = {}
        for key, number in value.items():
            if not (key.isascii() and key.isdigit()):
                raise invalid(
                    f"'logit_bias' key {key!r} is not a token id: keys must be non-negative decimal integers",
                    "logit_bias",
                )
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise invalid(f"'logit_bias[{key!r}]' must be a number, got {json_type(number)}", "logit_bias")
            number = _as_float(number)
            if not abs(number) <= LOGIT_BIAS_RANGE:
                raise invalid(
                    f"'logit_bias[{key!r}]' must be between -{LOGIT_BIAS_RANGE:g} and {LOGIT_BIAS_RANGE:g}, "
                    f"got {number:g}",
                    "logit_bias",
                )
            bias[int(key)] = number
        return tuple(sorted(bias.items()))

    def stream_options(self, stream: bool) -> bool:
        """include_usage from stream_options, which only makes sense with stream=true."""
        value = self.body.get("stream_options")
        if value is None:
            return False
        if not isinstance(value, dict):
            raise invalid(f"'stream_options' must be an object, got {json_type(value)}", "stream_options")
        if not stream:
            raise invalid("'stream_options' is only allowed when 'stream' is true", "stream_options")
        include = value.get("include_usage", False)
        if not isinstance(include, bool):
            raise invalid("'stream_options.include_usage' must be a boolean", "stream_options.include_usage")
        return include

    def refuse_unless(self, name: str, is_no_op, why: str) -> None:
        """Refuses a parameter tokenpool does not implement unless it is absent or a no-op value."""
        value = self.body.get(name)
        if value is not None and not is_no_op(value):
            raise invalid(f"'{name}' is not supported: {why}", name)


def _as_float(value: int | float) -> float:
    """JSON integers have no size limit; one too large for a float is out of any range."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _range_text(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}"
    return f">= {lo}" if lo is not None else f"<= {hi}"
