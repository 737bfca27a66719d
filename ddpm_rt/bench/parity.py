"""How far one result is from another: the parity figures every bench, probe and self-check reports."""

from __future__ import annotations

import numpy as np

from ddpm_rt.runtime.agreement import agreement


def parity_metrics(got: np.ndarray, ref: np.ndarray) -> dict[str, float | bool]:
    """Max-abs and relative RMS error of `got` against `ref`, and whether `got` is finite
    (`runtime.agreement`, the one definition every check shares)."""
    return agreement(got, ref).to_dict()
