"""The model store: a directory with one Hugging Face style folder per model.

A model folder holds ``config.json``, safetensors weights (one
``model.safetensors`` or shards listed in ``model.safetensors.index.json``)
and tokenizer files. Listing the store reads only the safetensors headers,
never the weights.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from dataclasses import dataclass
from math import prod
from pathlib import Path

from shared import env

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"

_DTYPE_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


class ModelStoreError(Exception):
    """An error a user can fix by preparing, repairing or naming a model."""


class ModelNotFoundError(ModelStoreError):
    def __init__(self, name: str, available: list[str]):
        self.name = name
        self.available = available
        listed = ", ".join(available) if available else "none; run `tokenpool models prepare`"
        super().__init__(f"model {name!r} not found; available: {listed}")


class CorruptCheckpointError(ModelStoreError):
    def __init__(self, path: Path, reason: str):
        self.path = path
        super().__init__(f"corrupt checkpoint {path}: {reason}")


@dataclass(frozen=True)
class TensorHeader:
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def numel(self) -> int:
        return prod(self.shape)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    architecture: str
    parameters: int
    bytes: int
    dtype: str
    context_length: int | None


def read_safetensors_header(path: Path) -> dict[str, TensorHeader]:
    """Tensor names to headers, checked against the file's size."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CorruptCheckpointError(path, f"file is {size} bytes, shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if 8 + header_len > size:
            raise CorruptCheckpointError(path, f"header claims {header_len} bytes but the file is {size} bytes")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpointError(path, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(path, "header is not a JSON object")
    data_size = size - 8 - header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = entry["data_offsets"]
            tensor = TensorHeader(dtype=entry["dtype"], shape=tuple(int(d) for d in entry["shape"]), nbytes=end - begin)
        except (KeyError, TypeError, ValueError):
            raise CorruptCheckpointError(path, f"malformed header entry for tensor {name!r}") from None
        if not 0 <= begin <= end <= data_size:
            raise CorruptCheckpointError(
                path, f"tensor {name!r} spans bytes {begin}..{end} but the data section is {data_size} bytes (truncated?)"
            )
        tensors[name] = tensor
    return tensors


def weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / SAFETENSORS_INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CorruptCheckpointError(index, "not a safetensors index with a weight_map") from None
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    if (model_dir / SAFETENSORS_SINGLE).exists():
        return [model_dir / SAFETENSORS_SINGLE]
    raise CorruptCheckpointError(model_dir, f"no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX}")


def read_checkpoint_headers(model_dir: Path) -> dict[str, TensorHeader]:
    tensors = {}
    for file in weight_files(model_dir):
        if not file.exists():
            raise CorruptCheckpointError(file, "listed in the safetensors index but missing")
        tensors.update(read_safetensors_header(file))
    return tensors


class ModelStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    @classmethod
    def from_env(cls) -> ModelStore:
        return cls(env.model_store())

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            d.name for d in self.root.iterdir() if not d.name.startswith(".") and (d / "config.json").is_file()
        )

    def path(self, name: str) -> Path:
        model_dir = self.root / name
        if name.startswith(".") or "/" in name or not (model_dir / "config.json").is_file():
            raise ModelNotFoundError(name, self.names())
        return model_dir

    def info(self, name: str) -> ModelInfo:
        model_dir = self.path(name)
        config_path = model_dir / "config.json"
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise CorruptCheckpointError(config_path, f"not valid JSON ({e})") from None
        tensors = read_checkpoint_headers(model_dir).values()
        bytes_by_dtype = Counter()
        for t in tensors:
            bytes_by_dtype[t.dtype] += t.nbytes
        dtype = bytes_by_dtype.most_common(1)[0][0] if bytes_by_dtype else "unknown"
        return ModelInfo(
            name=name,
            path=model_dir,
            architecture=(config.get("architectures") or [config.get("model_type", "unknown")])[0],
            parameters=sum(t.numel for t in tensors),
            bytes=sum(t.nbytes for t in tensors),
            dtype=_DTYPE_NAMES.get(dtype, dtype),
            context_length=config.get("max_position_embeddings"),
        )

    def list(self) -> list[ModelInfo]:
        return [self.info(name) for name in self.names()]
