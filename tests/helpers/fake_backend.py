"""A fake host backend for loop / CLI / selection tests: out = scale · x, on any machine."""

from __future__ import annotations

from typing import Any

import numpy as np

from ddpm_rt.runtime.backend import Backend, BackendOptions


class FakeBackend(Backend):
    name = "fake"
    device = "cpu"
    artifact = "bundle"
    scale = 0.5
    available = True

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.calls = 0
        self.info: dict[str, Any] = {}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None if cls.available else "fake is switched off"

    @classmethod
    def open(cls, artifact: Any, batch: int, options: BackendOptions) -> FakeBackend:
        return cls(batch)

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        self.calls += 1
        return x * self.scale


class FakeGpuBackend(FakeBackend):
    """Stands in for an unproven GPU backend; `scale` decides whether it agrees with the CPU."""

    name = "fake-gpu"
    device = "cuda"
