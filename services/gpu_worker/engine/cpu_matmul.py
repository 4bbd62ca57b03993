"""Matrix products on CPU with weights packed once for oneDNN.

A plain `F.linear` on CPU repacks the whole weight matrix into the GEMM kernel's blocked
layout on every call. For a decode step that is a second pass over every weight: at batch 32
on SmolLM2 the projections took 91 ms of a 130 ms step, 52 ms with weights packed once
(bench/README.md, "Where the decode time goes"). oneDNN packs a weight once
(`torch.ops.mkldnn._reorder_linear_weight`) and multiplies with the packed copy
(`torch.ops.mkldnn._linear_pointwise`): the private ops torch.compile's CPU weight-prepacking
pass emits. `supported` tries them once, so a torch build without them falls back to F.linear.

A packed weight is an opaque oneDNN tensor, not a view of a flat buffer, so it cannot live in
the weight arena. The engine packs a model's projection weights when it loads the model into
host memory (on a CPU host memory is where compute reads from) and keeps them as long as the
host copy: the switch into the arena stays one bulk copy, and every step of a model computes
with the same packed weights, so its results do not depend on when it was switched in.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F

BATCH_HINT = 32
"""Rows oneDNN picks the packed layout for; any number of rows works with it."""


@cache
def supported(dtype: torch.dtype) -> bool:
    """Whether this torch build packs and multiplies `dtype` weights on this CPU, and agrees with F.linear."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        w = torch.randn(64, 32, generator=generator).to(dtype)
        x = torch.randn(3, 32, generator=generator).to(dtype)
        b = torch.randn(64, generator=generator).to(dtype)
        got = linear(x, pack(w), b)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return bool(torch.allclose(got.float(), F.linear(x, w, b).float(), rtol=1e-2, atol=1e-2))


def pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, BATCH_HINT)


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias for 2-D x, `packed` from `pack(weight)`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
