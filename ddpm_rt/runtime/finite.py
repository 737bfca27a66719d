"""The non-finite check: NaN/inf in a sampling run is an error, found early and named by step.

`FiniteCheck` sits in front of a host denoiser call like any ``(x, t) -> out`` callable.
At a bounded number of evenly spaced steps (`CHECKS`, plus the first) it checks the sample
going in and the model output coming out; `check_finite` checks the final sample of every
backend, device loops and fused graphs included. A check is one float64 reduction
(``np.sum``: NaN and inf propagate, and a float64 sum of float32 values cannot overflow),
so a run pays for at most CHECKS + 1 reductions over x and out, and nothing per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ddpm_rt.errors import NonFiniteError

CHECKS = 16
HINT = "the model or its weights produce NaN/inf; pass --allow-nonfinite to write the samples anyway"


def is_finite(a: np.ndarray) -> bool:
    """True when every element of `a` is finite (one reduction, no array-sized temporary)."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf = NaN is the answer, not a warning
        return bool(np.isfinite(np.sum(a, dtype=np.float64)))


def check_finite(samples: np.ndarray, steps: int, backend: str) -> None:
    if not is_finite(samples):
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise NonFiniteError(
            f"{bad} of {samples.size} values of the final sample are NaN or inf after {steps} steps "
            f"on {backend}; {HINT}"
        )


class FiniteCheck:
    """Wraps ``model(x, t)``; raises `NonFiniteError` at the first checked step that is not finite."""

    def __init__(self, model: Callable[[np.ndarray, np.ndarray], np.ndarray], steps: int,
                 backend: str, checks: int = CHECKS) -> None:
        self.model = model
        self.steps = steps
        self.backend = backend
        self.every = max(1, math.ceil(steps / checks))
        self.i = 0  # calls so far: call i runs step i + 1
        self.x_ok = 0  # the last step after which the sample was checked finite (0 = x_T)

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        return self._checked(self.model, x, t)

    def also(self, model: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """Another callable of the same run (feature caching's shallow graph), checked on the same count of calls."""
        return lambda x, t: self._checked(model, x, t)

    def _checked(self, model: Callable[[np.ndarray, np.ndarray], np.ndarray], x: np.ndarray,
                 t: np.ndarray) -> np.ndarray:
        i, self.i = self.i, self.i + 1
        check = i % self.every == 0 or i == self.steps - 1
        if check:
            if not is_finite(x):
                where = "the initial noise x_T" if i == 0 else (
                    f"the sample after step {i} of {self.steps} (it was finite after step {self.x_ok})")
                raise NonFiniteError(f"NaN/inf first seen in {where} on {self.backend}; {HINT}")
            self.x_ok = i
        out = model(x, t)
        if check and not is_finite(out):
            raise NonFiniteError(
                f"the model output is NaN/inf at step {i + 1} of {self.steps} on {self.backend} "
                f"(t = {float(t[0]):g}); {HINT}"
            )
        return out
