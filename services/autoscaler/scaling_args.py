"""`--scaling NAME=VALUE` flags: any ScalingConfig field, checked by ScalingConfig itself."""

from __future__ import annotations

import dataclasses

from services.autoscaler.scaling_config import ScalingConfig


def scaling_config(pairs: list[str], **overrides) -> ScalingConfig:
    """ValueError naming the bad pair, the unknown field (with the known ones) or the bad value."""
    fields = {f.name: f for f in dataclasses.fields(ScalingConfig)}
    values = dict(overrides)
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise ValueError(f"--scaling {pair!r}: write NAME=VALUE, e.g. --scaling cooldown_s=30")
        if name not in fields:
            raise ValueError(f"--scaling {pair!r}: no setting {name!r}; settings: {', '.join(fields)}")
        kind = int if fields[name].type in (int, "int") else float
        try:
            values[name] = kind(text)
        except ValueError:
            raise ValueError(f"--scaling {pair!r}: {name} takes {'an integer' if kind is int else 'a number'}") from None
    return ScalingConfig(**values)
