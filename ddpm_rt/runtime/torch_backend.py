"""PyTorch eager on CPU: the baseline every other backend is measured against."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ddpm_rt.errors import BackendUnavailable
from ddpm_rt.runtime.backend import Backend, BackendOptions

if TYPE_CHECKING:
    import torch

    from ddpm_rt.source import ModelSource


class TorchBackend(Backend):
    """Calls the nn.Module eagerly under inference_mode; numpy buffers are shared, not copied."""

    name = "torch"
    device = "cpu"

    def __init__(self, module: torch.nn.Module, threads: int | None = None) -> None:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        self._torch = torch
        self.module = module.eval()

    @classmethod
    def open(cls, source: ModelSource, batch: int, options: BackendOptions) -> TorchBackend:
        if source.load_module is None:
            raise BackendUnavailable(
                f"source {source.name!r} has no PyTorch module (an ONNX-only bundle); "
                "use --backend ort, or export from a built-in name or checkpoint"
            )
        return cls(source.load_module(), options.threads)

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            return self.module(torch.from_numpy(x), torch.from_numpy(t)).numpy()
