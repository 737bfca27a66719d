"""The backend protocol and the lazy registry (tinygrad-style: one file per backend, loaded by name).

A backend runs one denoiser for a fixed maximum batch. Host backends (torch, ort)
expose ``__call__(x, t) -> out`` on numpy buffers and inherit ``sample`` (the shared
host loop); device backends (torch-cuda, trt) override ``sample`` with a loop that
keeps every buffer on the GPU.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ddpm_rt.errors import BackendUnavailable, ConfigError
from ddpm_rt.plan import SamplingPlan
from ddpm_rt.runtime.loop import ProgressFn, sample_loop

if TYPE_CHECKING:
    from ddpm_rt.source import ModelSource


@dataclass(frozen=True)
class BackendOptions:
    """Knobs shared by backends; each backend reads the ones it understands."""

    threads: int | None = None  # intra-op threads (CPU backends); None = runtime default
    precision: str = "fp32"  # fp32 | fp16 | bf16 (GPU backends)
    cuda_graph: bool = True  # device backends: capture the whole loop in one CUDA graph
    cache_dir: str | None = None  # where optimized graphs / engines are cached
    extra: dict[str, Any] = field(default_factory=dict)


class Backend:
    """Base class. Subclasses set `name`, implement `open`, `__call__` (host) or `sample` (device)."""

    name: str = "base"
    device: str = "cpu"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when usable on this machine, else one line saying what is missing and how to fix it."""
        return None

    @classmethod
    def open(cls, source: ModelSource, batch: int, options: BackendOptions) -> Backend:
        raise NotImplementedError

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"backend {self.name} has no host denoiser call")

    def sample(
        self,
        plan: SamplingPlan,
        x_init: np.ndarray,
        *,
        noise: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> np.ndarray:
        """Run the whole reverse loop; same contract as `runtime.loop.sample_loop`."""
        return sample_loop(self, plan, x_init, noise=noise, rng=rng, progress=progress)

    def close(self) -> None:
        pass

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class BackendEntry:
    module: str
    cls: str
    rank: int  # auto picks the highest available rank
    summary: str


# Ranks order `auto`: device backends first, then ORT on CPU, then eager torch.
REGISTRY: dict[str, BackendEntry] = {
    "trt": BackendEntry("ddpm_rt.runtime.trt_backend", "TrtBackend", 60, "TensorRT engine, whole loop in one CUDA graph"),
    "ort-trt": BackendEntry("ddpm_rt.runtime.ort_backend", "OrtTensorRTBackend", 50, "ONNX Runtime, TensorRT execution provider"),
    "torch-cuda": BackendEntry("ddpm_rt.runtime.torch_cuda_backend", "TorchCudaBackend", 45, "PyTorch on CUDA, device loop (+ CUDA graph)"),
    "ort-cuda": BackendEntry("ddpm_rt.runtime.ort_backend", "OrtCudaBackend", 40, "ONNX Runtime, CUDA execution provider"),
    "ort": BackendEntry("ddpm_rt.runtime.ort_backend", "OrtCpuBackend", 20, "ONNX Runtime on CPU, IO binding"),
    "torch": BackendEntry("ddpm_rt.runtime.torch_backend", "TorchBackend", 10, "PyTorch eager on CPU (the baseline)"),
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
    try:
        return backend_class(name).unavailable_reason()
    except BackendUnavailable as e:
        return str(e)


def available_backends() -> list[str]:
    """Usable backend names, fastest first."""
    names = sorted(REGISTRY, key=lambda n: -REGISTRY[n].rank)
    return [n for n in names if unavailable_reason(n) is None]


def resolve_backend_name(name: str) -> str:
    """Map `auto` to the fastest usable backend; check an explicit one is usable."""
    if name == "auto":
        usable = available_backends()
        if not usable:
            raise BackendUnavailable("no backend is usable; install torch (pip install torch)")
        return usable[0]
    reason = unavailable_reason(name)
    if reason is not None:
        raise BackendUnavailable(f"backend {name!r} is unavailable: {reason}")
    return name


def open_backend(name: str, source: ModelSource, batch: int, options: BackendOptions | None = None) -> Backend:
    """Open backend `name` (or `auto`) for `source` at a fixed batch size."""
    resolved = resolve_backend_name(name)
    return backend_class(resolved).open(source, batch, options or BackendOptions())
