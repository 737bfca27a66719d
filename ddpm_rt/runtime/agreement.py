"""How close one result is to a reference: the one definition every check shares.

The quality guard (`runtime.quality_guard`), the GPU first-use parity probe (`gpu.probe`), the GPU
self-check and the benchmarks all compare a candidate's samples with a reference's by the same two
figures, each with its own tolerance:

    max_abs  = max |got − want|
    rel_rms  = RMS(got − want) / RMS(want)          (float64; inf when `got` is not finite)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Agreement:
    max_abs: float
    rel_rms: float
    finite: bool

    def to_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def agreement(got: np.ndarray, want: np.ndarray) -> Agreement:
    """`got` against `want` (same shape), in float64."""
    g, w = np.asarray(got, np.float64), np.asarray(want, np.float64)
    finite = bool(np.all(np.isfinite(g)))
    if not finite:
        return Agreement(float("inf"), float("inf"), False)
    if g.size == 0:
        return Agreement(0.0, 0.0, True)
    diff = g - w
    scale = float(np.sqrt(np.mean(w**2))) or 1.0
    return Agreement(float(np.max(np.abs(diff))), float(np.sqrt(np.mean(diff**2)) / scale), True)
