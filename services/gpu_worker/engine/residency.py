"""Where each model's weights are: on disk, in host memory, or resident in the device arena."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import ModelConfig
from .layout import WeightLayout
from .model import DecoderModel


class Tier(enum.Enum):
    DISK = "disk"
    HOST = "host"
    DEVICE = "device"


@dataclass
class ModelSlot:
    cfg: ModelConfig
    path: Path
    layout: WeightLayout
    block_tokens: int
    kv: torch.Tensor
    """This model's view of the shared KV page pool."""
    host: torch.Tensor | None = None
    packed: dict[str, torch.Tensor] | None = None
    """CPU only: oneDNN-packed copies of the host copy's projection weights (cpu_matmul.py)."""
    device_offset: int | None = None
    model: DecoderModel | None = None
    pending_copy: object = None
    last_used: int = 0
    tokenizer: object = field(default=None, repr=False)

    @property
    def tier(self) -> Tier:
        if self.device_offset is not None:
            return Tier.DEVICE
        return Tier.HOST if self.host is not None else Tier.DISK

    @property
    def weight_bytes(self) -> int:
        return self.layout.numel * self.kv.dtype.itemsize

    @property
    def host_bytes(self) -> int:
        """Host memory the model takes while in host memory: its weights, and on a packing CPU
        engine the packed copies (as many elements again as the projections). 0 on disk."""
        if self.host is None:
            return 0
        packed = sum(t.numel() * t.element_size() for t in (self.packed or {}).values())
        return self.weight_bytes + packed
