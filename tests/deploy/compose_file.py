"""Reads deploy/compose the way Compose does, for tests that check or run it without Docker.

`dotenv` and `interpolate` follow the Compose specification's rules for `.env` files and
`${VAR}` / `${VAR:-default}` / `${VAR-default}` / `${VAR:?error}` / `${VAR?error}` / `$$`
(no nested defaults: the files here use none). YAML merge keys (`<<: *anchor`) are resolved by
the YAML loader, as Compose's own loader does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?", re.S)


class InterpolationError(ValueError):
    pass


def dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped; one pair of surrounding quotes removed."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise InterpolationError(f"{path.name}:{number}: not a KEY=VALUE line: {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def interpolate(text: str, variables: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("plain"):
            return variables.get(match.group("plain"), "")
        braced = _BRACED.fullmatch(match.group("braced"))
        if braced is None:
            raise InterpolationError(f"cannot read {match.group(0)!r}")
        name, op, arg = braced.group("name"), braced.group("op"), braced.group("arg")
        value = variables.get(name)
        if "$" in (arg or ""):
            raise InterpolationError(f"nested interpolation in {match.group(0)!r} is not supported here")
        if op is None:
            return value or ""
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise InterpolationError(f"{name} is required: {arg}")
            return value
        if op == ":+":
            return arg if value else ""
        return arg if value is not None else ""

    return _VAR.sub(replace, text)


def variables_used(text: str) -> set[str]:
    names = set()
    for match in _VAR.finditer(text):
        if match.group("plain"):
            names.add(match.group("plain"))
        elif match.group("braced") is not None and (braced := _BRACED.fullmatch(match.group("braced"))):
            names.add(braced.group("name"))
    return names


def _interpolate_tree(node, variables: dict[str, str]):
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolate_tree(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, variables) for key, value in node.items()}
    return node


def load(path: Path, variables: dict[str, str] | None = None) -> dict:
    """The compose file as a dict: merge keys resolved, and interpolated when `variables` is given."""
    tree = yaml.safe_load(path.read_text())
    return tree if variables is None else _interpolate_tree(tree, variables)


@dataclass(frozen=True)
class Mount:
    source: str
    """A host path (bind mount) or a named volume."""
    target: str
    bind: bool


def mounts(service: dict) -> list[Mount]:
    """The service's volumes in short syntax (`source:target[:mode]`)."""
    result = []
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        result.append(Mount(source, target, bind=source.startswith((".", "/", "~"))))
    return result


def active_services(tree: dict, profiles: set[str]) -> list[str]:
    """Services `docker compose up` starts: those without profiles, and those of an enabled one."""
    return [name for name, s in tree["services"].items() if not s.get("profiles") or profiles & set(s["profiles"])]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


_REPLACED = {"command", "entrypoint"}
"""Service attributes an override replaces instead of appending to (the Compose specification's merge rules)."""


def merge(base: dict, override: dict) -> dict:
    """`docker compose -f base -f override`'s model: mappings merge key by key, sequences append,
    except a service's command and entrypoint (replaced), environment (merged by name) and volumes
    (merged by target: an override's mount replaces the base's at the same path)."""
    return _merge(base, override, ())


def _merge(base, override, path: tuple[str, ...]):
    in_service = len(path) == 3 and path[0] == "services"
    if in_service and path[2] in _REPLACED:
        return override
    if in_service and path[2] == "environment":
        return environment({"environment": base}) | environment({"environment": override})
    if in_service and path[2] == "volumes":
        targets = {m.target for m in mounts({"volumes": override})}
        return [v for v, m in zip(base, mounts({"volumes": base})) if m.target not in targets] + list(override)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value, (*path, key)) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + override
    return override
