"""How far one result is from another: the parity figures every bench, probe and self-check reports."""

from __future__ import annotations

import numpy as np


def parity_metrics(got: np.ndarray, ref: np.ndarray) -> dict[str, float | bool]:
    """Max-abs and relative RMS error of `got` against `ref` (float64), and whether `got` is finite."""
    diff = got.astype(np.float64) - ref.astype(np.float64)
    scale = float(np.sqrt(np.mean(ref.astype(np.float64) ** 2))) or 1.0
    return {
        "max_abs": float(np.max(np.abs(diff))) if diff.size else 0.0,
        "rel_rms": float(np.sqrt(np.mean(diff**2)) / scale) if diff.size else 0.0,
        "finite": bool(np.all(np.isfinite(got))),
    }
