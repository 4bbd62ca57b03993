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
