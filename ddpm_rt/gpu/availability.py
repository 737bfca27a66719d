"""Is there a GPU to run on, and what is missing if not: the one-line messages every GPU path uses.

Cheap first: on a machine with no NVIDIA device node (``/dev/nvidia*``, WSL's ``/dev/dxg``) and no
NVIDIA driver, the answer is known without importing torch (≈1.4 s), so `auto` on a CPU machine
never pays for it. torch is imported only where a device might exist, to ask CUDA itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ddpm_rt.errors import BackendUnavailable

TORCH_MISSING = "torch is not installed: pip install torch (a CUDA build for GPU backends)"
NO_NVIDIA = ("no NVIDIA GPU or driver on this machine (no /dev/nvidia* device, no "
             "/proc/driver/nvidia) — the GPU backends need one")
CUDA_MISSING = (
    "no CUDA device: torch.cuda.is_available() is False — install a CUDA build of torch "
    "on a machine with an NVIDIA GPU"
)
TRT_MISSING = "tensorrt is not installed: pip install 'ddpm-rt[trt]'"


def nvidia_device_present(dev: Path = Path("/dev"), proc: Path = Path("/proc/driver/nvidia")) -> bool:
    """Whether this machine shows an NVIDIA device node or driver (no import, a few stat calls)."""
    try:
        nodes = any(dev.glob("nvidia[0-9]*")) or (dev / "dxg").exists()
    except OSError:
        nodes = False
    return nodes or proc.exists()


def cuda_missing_reason() -> str | None:
    """None when torch sees a CUDA device, else one line saying what is missing."""
    if importlib.util.find_spec("torch") is None:
        return TORCH_MISSING
    if not nvidia_device_present():
        return NO_NVIDIA
    import torch

    if not torch.cuda.is_available():
        return CUDA_MISSING
    return None


def tensorrt_missing_reason() -> str | None:
    """None when a CUDA device and the tensorrt package are both present (tensorrt is not imported)."""
    reason = cuda_missing_reason()
    if reason is not None:
        return reason
    if importlib.util.find_spec("tensorrt") is None:
        return TRT_MISSING
    return None


def require_cuda() -> None:
    reason = cuda_missing_reason()
    if reason is not None:
        raise BackendUnavailable(reason)


def require_tensorrt() -> None:
    reason = tensorrt_missing_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
