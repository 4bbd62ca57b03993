"""What simulated GPUs spend time on: decode and prefill steps, weight copies, KV swaps.

A `CostModel` answers every timing question a simulated worker asks; it is a plain object
that a fitted or measured one can replace (anything with the same methods will do).

    cost = CostModel.for_models("H100", {"m0": "qwen2.5-7b", "m1": "llama-2-13b"})
    cost.decode_step_s("m0", batch=8, context_tokens=8 * 700)
    cost.copy_in_s(cost.weight_bytes("m1"))
    cost = CostModel.for_models("engine:bench/results/engine-cost-cpu-DATE.json", {"demo-llama": "demo-llama"})

Devices
    H100, H800, H20, A100 (cost_gpus.py: memory, HBM and PCIe bandwidths, switch cost, each
    with its source), or "engine:PATH": a profile measured on our own engine (cost_engine.py).

Step times (cost_steps.py)
    decode step  = a + b * batch + c * context_tokens + s * ((batch - 1) // 64)
    prefill step = max(floor, p0 + p1 * tokens + p2 * squared_tokens)
    On the four GPUs: DistServe-style fits of the paper's vLLM profiles of each model on each
    GPU (../shared/data/aegaeon/profiles), shipped as coefficients in cost_fitted.py, re-fitted
    by `python -m services.sim.cost_fit` (cost_fit.py says how: truncated prefills, contaminated
    and empty decodes, the prefill floor, the batch steps of H20/A100, c >= the roofline KV read).
    Fit quality over all 12 model x GPU fits (relative error |predicted / measured - 1|; the
    table per fit is in cost_fitted.py's docstring): decode median 1.4-6.6 %, 90th percentile
    <= 11.2 %, worst point 25.0 %; prefill median 1.8-4.2 %, 90th percentile <= 12.0 %, worst
    25.5 %; R^2 >= 0.957 (decode) and >= 0.992 (prefill).

Model sizes (bf16, 2 bytes per parameter), counted from each model's config.json
(Hugging Face: Qwen/Qwen2.5-7B, 01-ai/Yi-1.5-9B, meta-llama/Llama-2-13b-hf):
    Qwen2.5-7B    7,615,616,512 params = 15.23 GB   KV 57,344 B/token (28 layers, 4 KV heads x 128)
    Yi-1.5-9B     8,829,407,232 params = 17.66 GB   KV 98,304 B/token (48 layers, 4 KV heads x 128)
    Llama-2-13B  13,015,864,320 params = 26.03 GB   KV 819,200 B/token (40 layers, 40 KV heads x 128)
    KV bytes per token = layers * 2 (K and V) * kv_heads * head_dim * 2 bytes.
Our own models (~/.cache/tokenpool/models/<name>/config.json) are here too, so that a workload
of them can name its architectures; an engine profile carries their measured sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from services.sim.cost_fitted import FITS
from services.sim.cost_gpus import GPU_SPECS, GpuProfile
from services.sim.cost_steps import StepFit
from services.sim.errors import SimError

__all__ = ["ARCHITECTURES", "GPU_PROFILES", "Architecture", "CostModel", "GpuProfile", "ModelCosts", "StepFit"]

BF16_BYTES = 2
ENGINE_PREFIX = "engine:"


@dataclass(frozen=True)
class Architecture:
    """The shape of a decoder-only transformer, enough to count its bytes."""

    name: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    qkv_bias: bool = False
    tied_embeddings: bool = False

    def params(self) -> int:
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        attention = self.hidden * q + 2 * self.hidden * kv + q * self.hidden
        if self.qkv_bias:
            attention += q + 2 * kv
        mlp = 3 * self.hidden * self.intermediate
        norms = 2 * self.hidden
        embeddings = (1 if self.tied_embeddings else 2) * self.vocab * self.hidden
        return self.layers * (attention + mlp + norms) + embeddings + self.hidden

    def weight_bytes(self, dtype_bytes: int = BF16_BYTES) -> int:
        return self.params() * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int = BF16_BYTES) -> int:
        return self.layers * 2 * self.kv_heads * self.head_dim * dtype_bytes


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("qwen2.5-7b", 152064, 3584, 18944, 28, 28, 4, 128, qkv_bias=True),
        Architecture("yi-1.5-9b", 64000, 4096, 11008, 48, 32, 4, 128),
        Architecture("llama-2-13b", 32000, 5120, 13824, 40, 40, 40, 128),
        Architecture("smollm2-135m-instruct", 49152, 576, 1536, 30, 9, 3, 64, tied_embeddings=True),
        Architecture("demo-llama", 49152, 256, 768, 4, 8, 2, 32, tied_embeddings=True),
        Architecture("demo-qwen2", 49152, 320, 864, 3, 5, 1, 64, qkv_bias=True),
        Architecture("demo-mistral", 49152, 256, 512, 2, 4, 4, 64),
    )
}

GPU_PROFILES: dict[str, GpuProfile] = {name: replace(spec, fits=FITS[name]) for name, spec in GPU_SPECS.items()}


def gpu_profile(name: str) -> GpuProfile:
    """A GPU by name (H100, H800, H20, A100; any case) or "engine:PATH" (a measured engine profile)."""
    if name.startswith(ENGINE_PREFIX):
        from services.sim.cost_engine import load_engine_profile

        return load_engine_profile(name[len(ENGINE_PREFIX) :]).gpu_profile()
    profile = GPU_PROFILES.get(name) or GPU_PROFILES.get(name.upper())
    if profile is None:
        raise SimError(
            f"unknown GPU profile {name!r}; known profiles: {', '.join(GPU_PROFILES)}, "
            f"or {ENGINE_PREFIX}PATH for an engine cost profile"
        )
    return profile


@dataclass(frozen=True)
class ModelCosts:
    """Everything the simulator needs to know about one served model on one GPU."""

    architecture: str
    weight_bytes: int
    kv_bytes_per_token: int
    steps: StepFit

    @property
    def decode_fixed_s(self) -> float:
        return self.steps.decode_fixed_s

    @property
    def decode_per_seq_s(self) -> float:
        return self.steps.decode_per_seq_s

    @property
    def decode_per_context_token_s(self) -> float:
        return self.steps.decode_per_context_token_s

    @property
    def prefill_fixed_s(self) -> float:
        return self.steps.prefill_fixed_s

    @property
    def prefill_per_token_s(self) -> float:
        return self.steps.prefill_per_token_s


class CostModel:
    def __init__(self, gpu: GpuProfile, models: Mapping[str, ModelCosts]):
        self.gpu = gpu
        self.models = dict(models)

    @classmethod
    def for_models(cls, gpu: str | GpuProfile, architectures: Mapping[str, str]) -> CostModel:
        """`architectures` maps each served model name to an ARCHITECTURES key (for an engine
        profile: a model the profile measured, named as `tokenpool models list` names it)."""
        if isinstance(gpu, str) and gpu.startswith(ENGINE_PREFIX):
            from services.sim.cost_engine import load_engine_profile

            return load_engine_profile(gpu[len(ENGINE_PREFIX) :]).cost_model(architectures)
        profile = gpu if isinstance(gpu, GpuProfile) else gpu_profile(gpu)
        models = {}
        for model, arch_name in architectures.items():
            arch = ARCHITECTURES.get(arch_name)
            if arch is None:
                raise SimError(
                    f"model {model!r}: unknown architecture {arch_name!r}; known: {', '.join(ARCHITECTURES)}"
                )
            fit = profile.fits.get(arch_name)
            if fit is None:
                raise SimError(
                    f"GPU profile {profile.name} has no step-time fit for {arch_name!r} "
                    f"(it has: {', '.join(profile.fits) or 'none'})"
                )
            models[model] = ModelCosts(arch_name, arch.weight_bytes(), arch.kv_bytes_per_token(), fit)
        return cls(profile, models)

    def _model(self, model: str) -> ModelCosts:
        try:
            return self.models[model]
        except KeyError:
            raise SimError(f"the cost model knows nothing of model {model!r}") from None

    def weight_bytes(self, model: str) -> int:
        return self._model(model).weight_bytes

    def kv_bytes_per_token(self, model: str) -> int:
        return self._model(model).kv_bytes_per_token

    def decode_step_s(self, model: str, batch: int, context_tokens: int) -> float:
        """One decode step of `batch` sequences attending to `context_tokens` cached tokens in all."""
        return self._model(model).steps.decode_s(batch, context_tokens)

    def prefill_step_s(self, model: str, tokens: int, squared_tokens: int | None = None) -> float:
        """One prefill step computing `tokens` prompt tokens. squared_tokens: the sum over its
        sequences of (cached + chunk)^2 - cached^2; None: one sequence of `tokens`, nothing cached."""
        return self._model(model).steps.prefill_s(tokens, squared_tokens)

    def copy_in_s(self, nbytes: int) -> float:
        """Host-to-device copy time (weights, KV swap-in)."""
        return nbytes / self.gpu.host_to_device_bytes_s

    def copy_out_s(self, nbytes: int) -> float:
        """Device-to-host copy time (KV swap-out)."""
        return nbytes / self.gpu.device_to_host_bytes_s

    @property
    def switch_fixed_s(self) -> float:
        return self.gpu.switch_fixed_s
