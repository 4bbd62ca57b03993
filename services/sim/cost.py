"""What simulated GPUs spend time on: decode and prefill steps, weight copies, KV swaps.

A `CostModel` answers every timing question a simulated worker asks; it is a plain object
that a fitted or measured one can replace (anything with the same methods will do).

    cost = CostModel.for_models("H100", {"m0": "qwen2.5-7b", "m1": "llama-2-13b"})
    cost.decode_step_s("m0", batch=8, context_tokens=8 * 700)
    cost.copy_s(cost.weight_bytes("m1"))

Step times
    decode step  = a + b * batch + c * context_tokens
    prefill step = p0 + p1 * prompt_tokens
    a, b, p0, p1 per model: least-squares fits of the measured vLLM latencies in
    ../shared/data/aegaeon/profiles/<model>/H100/i<input>b<batch>.json (Aegaeon's artifact),
    over the points with input * batch <= 4096 (larger points are flat, i.e. truncated).
    c is the roofline: every cached token's K and V are read once per step, c = KV bytes per
    token / HBM bandwidth (the profiles, at <= 4096 context tokens, cannot separate it).
        model         a (ms)  b (us/seq)  c (ns/token)  p0 (ms)  p1 (us/token)
        Qwen2.5-7B    9.02    72          17.1          5.88     21.9
        Yi-1.5-9B     13.56   74          29.3          8.48     27.1
        Llama-2-13B   12.40   113         244.5         7.56     40.8
    Issue 5 replaces these with DistServe-style fits on every GPU of the profiles.

Model sizes (bf16, 2 bytes per parameter), counted from each model's config.json
(Hugging Face: Qwen/Qwen2.5-7B, 01-ai/Yi-1.5-9B, meta-llama/Llama-2-13b-hf):
    Qwen2.5-7B    7,615,616,512 params = 15.23 GB   KV 57,344 B/token (28 layers, 4 KV heads x 128)
    Yi-1.5-9B     8,829,407,232 params = 17.66 GB   KV 98,304 B/token (48 layers, 4 KV heads x 128)
    Llama-2-13B  13,015,864,320 params = 26.03 GB   KV 819,200 B/token (40 layers, 40 KV heads x 128)
    KV bytes per token = layers * 2 (K and V) * kv_heads * head_dim * 2 bytes.

H100 SXM 80 GB (NVIDIA H100 datasheet): 80e9 bytes of HBM3 at 3.35 TB/s.
    host_to_device 50 GB/s: pinned cudaMemcpy over PCIe Gen5 x16 (63 GB/s raw per direction)
    measures about 50-55 GB/s; we take the low end so switches are not flattered. No GPU was
    lent to measure it here; `tokenpool bench engine --device cuda` prints the real figure.
    device_to_host 50 GB/s likewise (KV swap out).
    switch_fixed 5 ms per weight copy beyond bytes / bandwidth: a placeholder, pessimistic next
    to our CPU measurement (a switch took 1.03x the memcpy limit, bench/README.md).
    reserved 4 GB: CUDA context, activations and workspace, never used for weights or KV.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.sim.errors import SimError

BF16_BYTES = 2


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

    def params(self) -> int:
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        attention = self.hidden * q + 2 * self.hidden * kv + q * self.hidden
        if self.qkv_bias:
            attention += q + 2 * kv
        mlp = 3 * self.hidden * self.intermediate
        norms = 2 * self.hidden
        embeddings = 2 * self.vocab * self.hidden  # input embedding and an untied LM head
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
    )
}


@dataclass(frozen=True)
class StepFit:
    """Step-time coefficients of one architecture on one GPU (the context term comes from the roofline)."""

    decode_fixed_s: float
    decode_per_seq_s: float
    prefill_fixed_s: float
    prefill_per_token_s: float


@dataclass(frozen=True)
class GpuProfile:
    name: str
    memory_bytes: int
    """Device memory: resident weights, KV pages and `reserved_bytes` share it."""
    reserved_bytes: int
    """Device memory kept for the CUDA context, activations and workspace."""
    memory_bandwidth_bytes_s: float
    host_to_device_bytes_s: float
    """Pinned host-to-device copy bandwidth: weight copies and KV swap-in."""
    device_to_host_bytes_s: float
    """KV swap-out bandwidth (the other direction of the link: it does not slow copies in)."""
    switch_fixed_s: float
    """Time a model switch costs beyond its weight copy."""
    fits: Mapping[str, StepFit]
    """Architecture name -> measured step-time coefficients on this GPU."""


GPU_PROFILES: dict[str, GpuProfile] = {
    "H100": GpuProfile(
        name="H100",
        memory_bytes=80 * 10**9,
        reserved_bytes=4 * 10**9,
        memory_bandwidth_bytes_s=3.35e12,
        host_to_device_bytes_s=50e9,
        device_to_host_bytes_s=50e9,
        switch_fixed_s=0.005,
        fits={
            "qwen2.5-7b": StepFit(0.00902, 0.000072, 0.00588, 21.9e-6),
            "yi-1.5-9b": StepFit(0.01356, 0.000074, 0.00848, 27.1e-6),
            "llama-2-13b": StepFit(0.01240, 0.000113, 0.00756, 40.8e-6),
        },
    ),
}


def gpu_profile(name: str) -> GpuProfile:
    profile = GPU_PROFILES.get(name) or GPU_PROFILES.get(name.upper())
    if profile is None:
        raise SimError(f"unknown GPU profile {name!r}; known profiles: {', '.join(GPU_PROFILES)}")
    return profile


@dataclass(frozen=True)
class ModelCosts:
    """Everything the simulator needs to know about one served model on one GPU."""

    architecture: str
    weight_bytes: int
    kv_bytes_per_token: int
    decode_fixed_s: float
    decode_per_seq_s: float
    decode_per_context_token_s: float
    prefill_fixed_s: float
    prefill_per_token_s: float


class CostModel:
    def __init__(self, gpu: GpuProfile, models: Mapping[str, ModelCosts]):
        self.gpu = gpu
        self.models = dict(models)

    @classmethod
    def for_models(cls, gpu: str | GpuProfile, architectures: Mapping[str, str]) -> CostModel:
        """`architectures` maps each served model name to an ARCHITECTURES key."""
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
                raise SimError(f"GPU profile {profile.name} has no step-time fit for {arch_name!r}")
            kv = arch.kv_bytes_per_token()
            models[model] = ModelCosts(
                architecture=arch_name,
                weight_bytes=arch.weight_bytes(),
                kv_bytes_per_token=kv,
                decode_fixed_s=fit.decode_fixed_s,
                decode_per_seq_s=fit.decode_per_seq_s,
                decode_per_context_token_s=kv / profile.memory_bandwidth_bytes_s,
                prefill_fixed_s=fit.prefill_fixed_s,
                prefill_per_token_s=fit.prefill_per_token_s,
            )
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
        m = self._model(model)
        return m.decode_fixed_s + m.decode_per_seq_s * batch + m.decode_per_context_token_s * context_tokens

    def prefill_step_s(self, model: str, tokens: int) -> float:
        m = self._model(model)
        return m.prefill_fixed_s + m.prefill_per_token_s * tokens

    def copy_in_s(self, nbytes: int) -> float:
        """Host-to-device copy time (weights, KV swap-in)."""
        return nbytes / self.gpu.host_to_device_bytes_s

    def copy_out_s(self, nbytes: int) -> float:
        """Device-to-host copy time (KV swap-out)."""
        return nbytes / self.gpu.device_to_host_bytes_s

    @property
    def switch_fixed_s(self) -> float:
        return self.gpu.switch_fixed_s
