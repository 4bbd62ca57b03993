"""A request a worker holds, as the turn scheduler sees it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Held:
    request_id: str
    model: str
    arrival: float
    """When the router accepted it: the anchor of its TTFT deadline and its FCFS position."""
    prompt_tokens: int
    """Tokens the worker prefills: the prompt plus tokens produced before it came here."""
    max_new: int
    """Tokens it may still produce."""
    ttft_s: float
    tbt_s: float
    produced: int = 0
    """Tokens produced on this worker."""
    prefilled: bool = False
    """It produced a token here, so its KV cache lives on this worker."""
    on_device: bool = False
    """Its KV cache is believed to be in device memory (not parked in host memory)."""
    cached_tokens: int = 0
    """Of prompt_tokens, those the worker's prefix cache probably holds (not computed again)."""

    @property
    def context(self) -> int:
        return self.prompt_tokens + self.produced

    @property
    def remaining(self) -> int:
        return max(self.max_new - self.produced, 0)

    @property
    def ttft_deadline(self) -> float:
        return self.arrival + self.ttft_s


def pages_for(tokens: int, block_tokens: int) -> int:
    """KV pages that hold `tokens` tokens; 0 when the page size is unknown."""
    return -(-tokens // block_tokens) if block_tokens > 0 else 0
