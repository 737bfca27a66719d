"""The backend registry: every backend by name, its module imported only when it is used.

The registry sits above the runtime: it names CPU backends (`ddpm_rt.runtime`), the eager
baseline (`ddpm_rt.eager`) and the GPU corner (`ddpm_rt.gpu`), and imports each one by name.
Asking whether a backend can run here costs no heavy import: each entry names what it needs
(`needs`), checked first without importing the backend's module — a CPU machine never imports
torch or a GPU backend just to learn that there is no GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ddpm_rt.errors import BackendUnavailable, ConfigError
from ddpm_rt.runtime.backend import ArtifactKind, Backend, BackendOptions


def _package_missing(package: str, extra: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed: pip install 'ddpm-rt[{extra}]'"
        return None
    return check


def _cuda() -> str | None:
    from ddpm_rt.gpu.availability import cuda_missing_reason

    return cuda_missing_reason()


def _tensorrt() -> str | None:
    from ddpm_rt.gpu.availability import tensorrt_missing_reason

    return tensorrt_missing_reason()


def _ort_provider(provider: str) -> Callable[[], str | None]:
    def check() -> str | None:
        from ddpm_rt.runtime.ort_backend import _provider_missing

        return _provider_missing(provider, "install onnxruntime-gpu: pip install 'ddpm-rt[ort-gpu]'")
    return check


# What an entry needs, checked before its module is imported (no torch, no GPU library).
NEEDS: dict[str, Callable[[], str | None]] = {
    "torch": _package_missing("torch", "torch"),
    "openvino": _package_missing("openvino", "openvino"),
    "cuda": _cuda,
    "tensorrt": _tensorrt,
    "ort-cuda-ep": _ort_provider("CUDAExecutionProvider"),
    "ort-trt-ep": _ort_provider("TensorrtExecutionProvider"),
}


@dataclass(frozen=True)
class BackendEntry:
    module: str
    cls: str
    rank: int  # auto picks the highest available rank that has proven itself
    summary: str
    artifact: ArtifactKind = "bundle"
    gpu: bool = False  # fenced: auto picks it only after its first-use parity probe passed here
    needs: tuple[str, ...] = ()  # keys of NEEDS, checked (cheaply) before the module is imported


# Ranks order `auto`: device backends first, then the CPU runtimes, then eager torch.
REGISTRY: dict[str, BackendEntry] = {
    "trt": BackendEntry("ddpm_rt.gpu.trt_backend", "TrtBackend", 60,
                        "TensorRT engine, whole loop in one CUDA graph", gpu=True,
                        needs=("cuda", "tensorrt")),
    "ort-trt": BackendEntry("ddpm_rt.gpu.ort_gpu", "OrtTensorRTBackend", 50,
                            "ONNX Runtime, TensorRT execution provider", gpu=True,
                            needs=("ort-trt-ep", "cuda")),
    "torch-cuda": BackendEntry("ddpm_rt.gpu.torch_cuda_backend", "TorchCudaBackend", 45,
                               "PyTorch on CUDA, device loop (+ CUDA graph)", artifact="module", gpu=True,
                               needs=("cuda",)),
    "ort-cuda": BackendEntry("ddpm_rt.gpu.ort_gpu", "OrtCudaBackend", 40,
                             "ONNX Runtime, CUDA execution provider, device buffers", gpu=True,
                             needs=("ort-cuda-ep", "cuda")),
    "openvino": BackendEntry("ddpm_rt.runtime.openvino_backend", "OpenVinoBackend", 25,
                             "OpenVINO on CPU, shared numpy buffers (fp32/bf16/fp16/int8)",
                             needs=("openvino",)),
    "ort": BackendEntry("ddpm_rt.runtime.ort_backend", "OrtCpuBackend", 20, "ONNX Runtime on CPU, IO binding"),
    "torch": BackendEntry("ddpm_rt.eager", "TorchBackend", 10, "PyTorch eager on CPU (the baseline)",
                          artifact="module", needs=("torch",)),
}
BACKEND_NAMES = ("auto", *REGISTRY)


def backend_class(name: str) -> type[Backend]:
    if name not in REGISTRY:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    entry = REGISTRY[name]
    try:
        module = importlib.import_module(entry.module)
    except ImportError as e:  # the backend's own module is missing a dependency at import time
        raise BackendUnavailable(f"backend {name!r} cannot be imported: {e}") from None
    return getattr(module, entry.cls)


def unavailable_reason(name: str) -> str | None:
    """None when backend `name` can run here, else one line saying why not (cheap checks first)."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    for need in REGISTRY[name].needs:
        reason = NEEDS[need]()
        if reason is not None:
            return reason
    try:
        return backend_class(name).unavailable_reason()
    except BackendUnavailable as e:
        return str(e)


def available_backends() -> list[str]:
    """Usable backend names, fastest first (availability only: `prepare.choose_backend` decides `auto`)."""
    names = sorted(REGISTRY, key=lambda n: -REGISTRY[n].rank)
    return [n for n in names if unavailable_reason(n) is None]


def check_backend(name: str) -> str:
    """`name` if it is a known, usable backend, else a one-line error saying why not."""
    reason = unavailable_reason(name)
    if reason is not None:
        raise BackendUnavailable(f"backend {name!r} is unavailable: {reason}")
    return name


def open_backend(name: str, artifact: Any, batch: int, options: BackendOptions | None = None) -> Backend:
    """Open the concrete backend `name` on its artifact (a `Bundle` or an `nn.Module`) at a fixed batch."""
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    return backend_class(check_backend(name)).open(artifact, batch, options or BackendOptions())
