"""PyTorch on CUDA: the nn.Module in the DeviceLoop's denoiser slot, the whole loop in one CUDA graph.

Options read: ``precision`` (fp32, or fp16/bf16 through autocast with its weight
cache off, as CUDA-graph capture requires) and ``cuda_graph`` (off = the same
device loop, launched step by step).

Written against torch's CUDA / CUDAGraph API; not run in this project's CI (no GPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ddpm_rt.errors import BackendUnavailable
from ddpm_rt.gpu.device_backend import DeviceLoopBackend
from ddpm_rt.runtime.backend import BackendOptions

if TYPE_CHECKING:
    import torch

    from ddpm_rt.gpu.device_loop import DeviceLoop


def autocast_dtype(precision: str) -> torch.dtype | None:
    """None for fp32, else the autocast dtype (ConfigError for an unknown name)."""
    import torch

    from ddpm_rt.precision import Precision

    p = Precision.parse(precision)
    table = {Precision.FP32: None, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}
    if p not in table:
        from ddpm_rt.errors import ConfigError

        raise ConfigError(f"torch-cuda runs fp32, fp16 or bf16, got --precision {p}")
    return table[p]


class TorchCudaBackend(DeviceLoopBackend):
    """nn.Module on one CUDA device, driven by `DeviceLoop`."""

    name = "torch-cuda"
    device = "cuda"
    artifact = "module"

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        precision: str = "fp32",
        cuda_graph: bool = True,
        device: str = "cuda",
        feature_split: tuple[torch.nn.Module, torch.nn.Module] | None = None,
    ) -> None:
        import torch

        from ddpm_rt.gpu.device_loop import DeviceLoop

        self._torch = torch
        self.module = module.eval().to(device)
        self.precision = precision
        self._amp = autocast_dtype(precision)
        # feature caching: (full -> (out, feature), shallow(x, t, feature) -> out), made by the caller
        # (`exporter.feature_cache.split_modules`); the feature lives in one static device buffer
        self._split = None if feature_split is None else tuple(m.eval().to(device) for m in feature_split)
        self._feat: torch.Tensor | None = None
        if self._split is None:
            self.loop: DeviceLoop = DeviceLoop(self._denoise, device, cuda_graph=cuda_graph)
        else:
            self.loop = DeviceLoop(self._denoise_full, device, cuda_graph=cuda_graph, shallow=self._denoise_shallow)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        from ddpm_rt.gpu.availability import cuda_missing_reason

        return cuda_missing_reason()

    @classmethod
    def open(cls, module: torch.nn.Module, batch: int, options: BackendOptions) -> TorchCudaBackend:
        reason = cls.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(reason)
        split = options.extra.get("feature_split")
        if options.feature_cache and split is None:
            from ddpm_rt.errors import ConfigError

            raise ConfigError("torch-cuda runs feature caching on the split U-Net; open it through `ddpm-rt sample`")
        return cls(module, precision=options.precision, cuda_graph=options.cuda_graph,
                   feature_split=split if options.feature_cache else None)

    def _call(self, module: torch.nn.Module, *args: torch.Tensor):
        if self._amp is None:
            return module(*args)
        with self._torch.autocast("cuda", dtype=self._amp, cache_enabled=False):
            return module(*args)

    def _denoise_full(self, x: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> None:
        """A full row: the output, and the deep feature into the static buffer (allocated on the
        first call of a batch, which is a warm-up call, before any capture)."""
        assert self._split is not None
        y, feature = self._call(self._split[0], x, t)
        if self._feat is None or self._feat.shape != feature.shape:
            self._feat = self._torch.empty(feature.shape, dtype=self._torch.float32, device=feature.device)
        out.copy_(y)
        self._feat.copy_(feature)

    def _denoise_shallow(self, x: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> None:
        assert self._split is not None and self._feat is not None
        out.copy_(self._call(self._split[1], x, t, self._feat))

    def _denoise(self, x: torch.Tensor, t: torch.Tensor, out: torch.Tensor, *cond: torch.Tensor) -> None:
        torch = self._torch
        if self._amp is None:
            out.copy_(self.module(x, t, *cond))
        else:
            with torch.autocast("cuda", dtype=self._amp, cache_enabled=False):
                y = self.module(x, t, *cond)
            out.copy_(y)  # back to float32 in the static buffer
