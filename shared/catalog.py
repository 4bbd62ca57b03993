"""The model catalog: which models the pool serves, from where, and under which SLO class.

One TOML file (default deploy/catalog.toml, or TOKENPOOL_CATALOG):

    [slo_classes.default]
    ttft_s = 10.0
    tbt_s = 0.1

    [[models]]
    name = "smollm2-135m-instruct"
    path = "smollm2-135m-instruct"   # inside the model store, or an absolute path
    dtype = "auto"                    # auto: float32 on CPU, bfloat16 on CUDA
    context_length = 8192             # optional cap below the model's own window
    slo_class = "default"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEFAULT_SLO = {"ttft_s": 10.0, "tbt_s": 0.1}


class CatalogError(ValueError):
    pass


@dataclass(frozen=True)
class SloClass:
    name: str
    ttft_s: float
    tbt_s: float


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    dtype: str
    context_length: int | None
    slo_class: str


@dataclass(frozen=True)
class Catalog:
    models: tuple[ModelEntry, ...]
    slo_classes: dict[str, SloClass]
    source: Path | None = None

    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def get(self, name: str) -> ModelEntry | None:
        return next((m for m in self.models if m.name == name), None)

    def slo(self, model: str) -> SloClass:
        return self.slo_classes[self.get(model).slo_class]


def load_catalog(path: Path, model_store_root: Path) -> Catalog:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CatalogError(f"catalog {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise CatalogError(f"catalog {path} is not valid TOML: {e}") from None
    return parse_catalog(raw, model_store_root, source=Path(path))


def parse_catalog(raw: dict, model_store_root: Path, source: Path | None = None) -> Catalog:
    where = f"catalog {source}" if source else "catalog"
    slo_classes = {"default": SloClass("default", **DEFAULT_SLO)}
    for name, values in (raw.get("slo_classes") or {}).items():
        try:
            slo = SloClass(name, float(values["ttft_s"]), float(values["tbt_s"]))
        except (KeyError, TypeError, ValueError):
            raise CatalogError(f"{where}: slo_classes.{name} needs numbers ttft_s and tbt_s") from None
        if slo.ttft_s <= 0 or slo.tbt_s <= 0:
            raise CatalogError(f"{where}: slo_classes.{name}: ttft_s and tbt_s must be positive")
        slo_classes[name] = slo
    entries, seen = [], set()
    for i, m in enumerate(raw.get("models") or []):
        name = m.get("name")
        if not isinstance(name, str) or not name or any(c in name for c in " .*>\t"):
            raise CatalogError(f"{where}: models[{i}].name must be a non-empty name without spaces, dots, * or >")
        if name in seen:
            raise CatalogError(f"{where}: model {name!r} is listed twice")
        seen.add(name)
        path = Path(m.get("path", name)).expanduser()
        dtype = m.get("dtype", "auto")
        if dtype not in DTYPES:
            raise CatalogError(f"{where}: model {name!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        context = m.get("context_length")
        if context is not None and (not isinstance(context, int) or context < 2):
            raise CatalogError(f"{where}: model {name!r}: context_length must be an integer >= 2")
        slo = m.get("slo_class", "default")
        if slo not in slo_classes:
            raise CatalogError(f"{where}: model {name!r}: unknown slo_class {slo!r} (known: {', '.join(slo_classes)})")
        entries.append(ModelEntry(name, path if path.is_absolute() else model_store_root / path, dtype, context, slo))
    if not entries:
        raise CatalogError(f"{where}: lists no models")
    return Catalog(tuple(entries), slo_classes, source)
