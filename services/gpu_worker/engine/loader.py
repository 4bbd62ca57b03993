"""Reads a Hugging Face checkpoint (one or several *.safetensors) into one flat host buffer."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from .config import ModelConfig
from .errors import CheckpointError
from .layout import WeightLayout, hf_tensor_targets


def checkpoint_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        files = [path / n for n in names]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors file found")
    for f in files:
        if not f.exists():
            raise CheckpointError(f"{f}: safetensors file is missing")
    return files


def load_weights(
    cfg: ModelConfig, path: Path, layout: WeightLayout, dtype: torch.dtype, pin: bool = False
) -> torch.Tensor:
    """Returns the flat host buffer holding every weight of the model, in `dtype`."""
    flat = torch.empty(layout.numel, dtype=dtype, pin_memory=pin)
    views = layout.views(flat)
    targets = hf_tensor_targets(cfg)
    missing = set(targets)
    for file in checkpoint_files(path):
        try:
            handle = safe_open(str(file), framework="pt")
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"{file}: corrupted or truncated safetensors file ({e})") from None
        with handle:
            for name in handle.keys():
                if name not in targets:
                    continue
                slot, start, end = targets[name]
                dest = views[slot][start:end]
                try:
                    tensor = handle.get_tensor(name)
                except Exception as e:
                    raise CheckpointError(f"{file}: cannot read tensor {name} ({e})") from None
                if tensor.shape != dest.shape:
                    raise CheckpointError(
                        f"{file}: tensor {name} has shape {tuple(tensor.shape)}, "
                        f"config.json implies {tuple(dest.shape)}"
                    )
                dest.copy_(tensor)
                missing.discard(name)
    if missing:
        first = sorted(missing)[:3]
        raise CheckpointError(f"{path}: checkpoint lacks {len(missing)} tensors, e.g. {first}")
    return flat
