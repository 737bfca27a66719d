"""Draw samples from a torch denoiser through the core plan + reverse loop (for quality checks)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ddpm_rt.runtime.loop import initial_noise, sample_loop
from ddpm_rt.spec import DiffusionSpec


def torch_model_fn(module: torch.nn.Module) -> Callable[..., np.ndarray]:
    """Wrap a module as the loop's ``(x, t, *cond) -> out`` numpy callable (call under inference_mode)."""

    def fn(x: np.ndarray, t: np.ndarray, *cond: np.ndarray) -> np.ndarray:
        return module(*(torch.from_numpy(a) for a in (x, t, *cond))).numpy()

    return fn


def sample_module(
    module: torch.nn.Module,
    spec: DiffusionSpec,
    n: int,
    *,
    steps: int | None = None,
    seed: int = 0,
    batch: int = 500,
    cond: Mapping[str, Any] | None = None,
    guidance_scale: float | None = None,
    **sampler_overrides: Any,
) -> np.ndarray:
    """n samples, float32 [n, *sample_shape], with the model's default sampler (or overrides).

    A conditional model needs `cond` (one array per input, [n, ...]) and samples with classifier-free
    guidance at `guidance_scale` (default: the model's own), as `runtime.guidance` does it.
    """
    plan = spec.plan(spec.sampler(steps=steps, **sampler_overrides))
    rng = np.random.default_rng(seed)
    fn = torch_model_fn(module.eval())
    guidance = None
    if spec.conditioning or cond is not None:
        from ddpm_rt.runtime.guidance import GuidedModel, make_guidance

        scale = spec.default_guidance if guidance_scale is None else guidance_scale
        guidance = make_guidance(spec.conditioning, cond, n, scale=scale)
    out = []
    with torch.inference_mode():
        for i in range(0, n, batch):
            b = min(batch, n - i)
            x_init = initial_noise((b, *spec.sample_shape), rng)
            model = fn if guidance is None else GuidedModel(fn, guidance.take(i, i + b), b, spec.sample_shape)
            out.append(sample_loop(model, plan, x_init, rng=rng))
    return np.concatenate(out)
