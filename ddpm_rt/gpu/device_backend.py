"""Shared shell of the device backends (torch-cuda, trt): a denoiser slot driven by `DeviceLoop`.

Subclasses provide `_denoise(x, t, out)` on device tensors and set `self.loop`;
this class supplies the host call (for parity checks) and the whole-loop `_run`.
Written against torch's CUDA API; not run in this project's CI (no GPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ddpm_rt.runtime.backend import Backend
from ddpm_rt.runtime.loop import ProgressFn

if TYPE_CHECKING:
    import torch

    from ddpm_rt.editing import Edit
    from ddpm_rt.gpu.device_loop import DeviceLoop
    from ddpm_rt.plan import SamplingPlan
    from ddpm_rt.runtime.guidance import Guidance


class DeviceLoopBackend(Backend):
    device = "cuda"
    loop: DeviceLoop

    def _denoise(self, x: torch.Tensor, t: torch.Tensor, out: torch.Tensor, *cond: torch.Tensor) -> None:
        raise NotImplementedError

    def __call__(self, x: np.ndarray, t: np.ndarray, *cond: np.ndarray) -> np.ndarray:
        """Host call (numpy in, numpy out): one denoiser call, for parity checks."""
        import torch

        with torch.no_grad():
            dev = self.loop.device
            xd = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
            td = torch.from_numpy(np.ascontiguousarray(t, dtype=np.float32)).to(dev)
            cd = [torch.from_numpy(np.ascontiguousarray(c)).to(dev) for c in cond]
            out = torch.empty_like(xd)
            self._denoise(xd, td, out, *cd)
            if dev.type == "cuda":
                torch.cuda.current_stream(dev).synchronize()
            return out.cpu().numpy()

    def _run(self, plan: SamplingPlan, x_init: np.ndarray, noise: np.ndarray | None,
             rng: np.random.Generator | None, progress: ProgressFn | None,
             allow_nonfinite: bool, guidance: Guidance | None = None, edit: Edit | None = None) -> np.ndarray:
        # the whole loop on the device (one CUDA graph): only the final sample is checked for NaN/inf
        return self.loop.sample(plan, x_init, noise=noise, rng=rng, progress=progress, guidance=guidance,
                                edit=edit)

    def close(self) -> None:
        self.loop.close()
