"""Draw samples from a torch denoiser through the core plan + reverse loop (for quality checks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ddpm_rt.runtime.loop import initial_noise, sample_loop
from ddpm_rt.spec import DiffusionSpec


def torch_model_fn(module: torch.nn.Module) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Wrap a module as the loop's ``(x, t) -> out`` numpy callable (call under inference_mode)."""

    def fn(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(x), torch.from_numpy(t)).numpy()

    return fn


def sample_module(
    module: torch.nn.Module,
    spec: DiffusionSpec,
    n: int,
    *,
    steps: int | None = None,
    seed: int = 0,
    batch: int = 500,
    **sampler_overrides: Any,
) -> np.ndarray:
    """n samples, float32 [n, *sample_shape], with the model's default sampler (or overrides)."""
    plan = spec.plan(spec.sampler(steps=steps, **sampler_overrides))
    rng = np.random.default_rng(seed)
    fn = torch_model_fn(module.eval())
    out = []
    with torch.inference_mode():
        for i in range(0, n, batch):
            b = min(batch, n - i)
            x_init = initial_noise((b, *spec.sample_shape), rng)
            out.append(sample_loop(fn, plan, x_init, rng=rng))
    return np.concatenate(out)
