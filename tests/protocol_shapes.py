"""The fields of each bus message, as tests/protocol_shapes.json records them per version.

    .venv/bin/python -m tests.protocol_shapes   # prints the current shapes, to record a new VERSION

A shape is, for a message or a part inside one, {field: shape of its type} in field order; for
a type that holds a part, [its name, the part's shape] ("Usage | None", {...}); for any other
type, its name ("tuple[int, ...]").
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path

from shared import protocol

RECORD = Path(__file__).with_name("protocol_shapes.json")


def messages() -> dict[str, type]:
    return {name: cls for name, cls in protocol._MESSAGES.items() if cls.__module__ == protocol.__name__}


def shape(tp):
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return {f.name: shape(hints[f.name]) for f in dataclasses.fields(tp)}
    part = _part(tp)
    return [_name(tp), shape(part)] if part is not tp else _name(tp)


def _name(tp) -> str:
    if tp is type(None):
        return "None"
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " | ".join(_name(a) for a in args)
    if args:
        return f"{typing.get_origin(tp).__name__}[{', '.join('...' if a is Ellipsis else _name(a) for a in args)}]"
    return tp.__name__


def extension_problems(old, new, tp, where: str) -> list[str]:
    """Why `new` (the shape of `tp`) is not `old` with fields appended, each with a default."""
    if isinstance(old, list) and isinstance(new, list) and old[0] == new[0]:  # a part, optional or in a tuple
        return extension_problems(old[1], new[1], _part(tp), where)
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [f"{where} changed from {old} to {new}"]
    problems = []
    if list(new)[: len(old)] != list(old):
        return [f"{where}: the fields {list(old)} are no longer the first ones, in that order ({list(new)})"]
    hints = typing.get_type_hints(tp)
    for f in dataclasses.fields(tp):
        if f.name in old:
            problems += extension_problems(old[f.name], new[f.name], _part(hints[f.name]), f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{where}.{f.name} was added without a default")
    return problems


def _part(tp):
    """The dataclass a field's type holds (directly, optionally or as tuple items), else the type."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        part = _part(arg)
        if dataclasses.is_dataclass(part):
            return part
    return tp


if __name__ == "__main__":
    print(json.dumps({name: {str(cls.VERSION): shape(cls)} for name, cls in messages().items()}, indent=1))
