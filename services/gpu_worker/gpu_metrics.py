"""GPU memory and utilisation from NVML, or a clear "no GPU" answer (CPU workers, no driver).

    m = read_gpu_metrics("cuda:0")
    if m.available: print(m.memory_free, m.utilization_pct)
    else: print(m.reason)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuMetrics:
    available: bool
    reason: str = ""
    """Why there are no numbers, when available is False."""
    name: str = ""
    memory_total: int = 0
    memory_used: int = 0
    memory_free: int = 0
    utilization_pct: int = 0
    """Percent of the last sample period in which a kernel ran."""


def read_gpu_metrics(device: str) -> GpuMetrics:
    if not device.startswith("cuda"):
        return GpuMetrics(False, f"device is {device}, not a GPU")
    try:
        import pynvml
    except ImportError:
        return GpuMetrics(False, "nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return GpuMetrics(False, f"NVML is not available (no NVIDIA driver?): {e}")
    try:
        handle = _handle(pynvml, device)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        utilization = pynvml.nvmlDeviceGetUtilizationRates(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        return GpuMetrics(
            True,
            name=name.decode() if isinstance(name, bytes) else name,
            memory_total=int(memory.total),
            memory_used=int(memory.used),
            memory_free=int(memory.free),
            utilization_pct=int(utilization.gpu),
        )
    except pynvml.NVMLError as e:
        return GpuMetrics(False, f"NVML could not read {device}: {e}")
    finally:
        pynvml.nvmlShutdown()


def _handle(pynvml, device: str):
    index = int(device.partition(":")[2] or 0)
    # torch numbers GPUs after CUDA_VISIBLE_DEVICES, NVML does not: match them by UUID.
    try:
        import torch

        if torch.cuda.is_available():
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except (AttributeError, RuntimeError, pynvml.NVMLError):
        pass  # older torch without .uuid, or a MIG slice: fall back to the index
    return pynvml.nvmlDeviceGetHandleByIndex(index)
