"""PyTorch eager on CPU: the baseline every other backend is measured against."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ddpm_rt.runtime.backend import Backend, BackendOptions

if TYPE_CHECKING:
    import torch


class TorchBackend(Backend):
    """Calls the nn.Module eagerly under inference_mode; numpy buffers are shared, not copied."""

    name = "torch"
    device = "cpu"
    artifact = "module"

    def __init__(self, module: torch.nn.Module, threads: int | None = None) -> None:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        self._torch = torch
        self.module = module.eval()
        self.info = {"torch": torch.__version__, "threads": torch.get_num_threads()}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return "torch is not installed: pip install 'ddpm-rt[torch]'"
        return None

    @classmethod
    def open(cls, module: torch.nn.Module, batch: int, options: BackendOptions) -> TorchBackend:
        return cls(module, options.threads)

    def __call__(self, x: np.ndarray, t: np.ndarray, *cond: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            return self.module(torch.from_numpy(x), torch.from_numpy(t), *map(torch.from_numpy, cond)).numpy()
