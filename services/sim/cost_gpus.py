"""The GPUs the simulator knows: memory, bandwidths and switch cost, with where each figure comes from.

    GPU    memory        HBM bandwidth   host link        host->device  device->host
    H100   80 GB HBM3    3.35 TB/s       PCIe Gen5 x16    50 GB/s       50 GB/s
    H800   80 GB HBM3    3.35 TB/s       PCIe Gen5 x16    50 GB/s       50 GB/s
    H20    96 GB HBM3    4.0 TB/s        PCIe Gen5 x16    50 GB/s       50 GB/s
    A100   80 GB HBM2e   2.039 TB/s      PCIe Gen4 x16    25 GB/s       25 GB/s

Sources
- H100 SXM5 80 GB: NVIDIA H100 Tensor Core GPU datasheet ("GPU memory 80GB, GPU memory
  bandwidth 3.35TB/s ... PCIe Gen5: 128GB/s", the two directions together).
- H800 SXM5 80 GB: NVIDIA H800 datasheet: the H100's memory (80 GB, 3.35 TB/s) and PCIe Gen5,
  NVLink cut to 400 GB/s (NVLink plays no part here: one GPU per worker).
- H20: NVIDIA's H20 specification as published by its resellers and press (no public NVIDIA
  datasheet): 96 GB HBM3 at 4.0 TB/s, PCIe Gen5 x16, FP16 compute cut to 148 TFLOPS (why its
  prefills in the profiles are 3-5x slower than an H100's).
- A100 SXM4 80 GB: NVIDIA A100 Tensor Core GPU datasheet ("80GB HBM2e, 2,039GB/s ... PCIe Gen4:
  64GB/s"). The Aegaeon artifact does not say which A100 form factor it profiled; the SXM4 80 GB
  is assumed (the PCIe card has 1,935 GB/s, 5% less).
- Host-to-device copies: PCIe Gen5 x16 carries 63 GB/s per direction (32 GT/s x 16 lanes,
  128b/130b encoding); pinned cudaMemcpy reaches about 50-55 GB/s of it (the figure issue 5
  gives, ~80% after packet overhead). We take 50 GB/s, the low end, so that switches are not
  flattered. Gen4 x16 carries 31.5 GB/s; 25 GB/s is the same ~80%. No GPU was lent to measure
  them here: `tokenpool bench engine --device cuda` prints the real figure of a machine, and an
  engine cost profile (cost_engine.py) carries measured ones.
- Device-to-host (KV swap out): the other direction of the same link, the same figure.
- switch_fixed 5 ms per weight copy beyond bytes / bandwidth: a placeholder, pessimistic next
  to our CPU measurement (a switch took 1.03x the memcpy limit, bench/README.md: ~1 ms over).
- reserved 4 GB: CUDA context, activations and workspace, never used for weights or KV.
Memory is counted in decimal bytes as the datasheets do (80 GB = 80e9 B; the device reports a
little more, so the profiles err on the small side).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.sim.cost_steps import StepFit

GB = 10**9


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
    fits: Mapping[str, StepFit] = field(default_factory=dict)
    """Architecture name -> measured step-time coefficients on this GPU."""


def _spec(name: str, memory_gb: int, hbm_tb_s: float, link_gb_s: float) -> GpuProfile:
    return GpuProfile(
        name=name,
        memory_bytes=memory_gb * GB,
        reserved_bytes=4 * GB,
        memory_bandwidth_bytes_s=hbm_tb_s * 1e12,
        host_to_device_bytes_s=link_gb_s * 1e9,
        device_to_host_bytes_s=link_gb_s * 1e9,
        switch_fixed_s=0.005,
    )


GPU_SPECS: dict[str, GpuProfile] = {
    "H100": _spec("H100", 80, 3.35, 50),
    "H800": _spec("H800", 80, 3.35, 50),
    "H20": _spec("H20", 96, 4.0, 50),
    "A100": _spec("A100", 80, 2.039, 25),
}
"""The figures above, without step-time fits (cost.GPU_PROFILES adds them)."""
