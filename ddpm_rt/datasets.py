"""Built-in training data that ships with scikit-learn: 16×16 digits and the 2-D swiss roll.

Both are fixed: the same seeds give the same train / held-out split on every machine, so
quality figures measured against the held-out set are comparable across runs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ddpm_rt.errors import ConfigError

DATASETS = ("digits16", "swissroll")
SPLIT_SEED = 0


@dataclass(frozen=True, eq=False)
class Dataset:
    """float32 train and held-out arrays, [N, C, H, W] or [N, D], in [-1, 1]; labels where known."""

    name: str
    train: np.ndarray
    heldout: np.ndarray
    train_labels: np.ndarray | None = None
    heldout_labels: np.ndarray | None = None


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] 1-D bilinear resize, half-pixel centres (torch align_corners=False)."""
    m = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
        i0 = int(math.floor(src))
        i1 = min(i0 + 1, n_in - 1)
        w = src - i0
        m[i, i0] += 1.0 - w
        m[i, i1] += w
    return m


def upscale_digits(images: np.ndarray, size: int = 16) -> np.ndarray:
    """sklearn digits [N, 8, 8] in 0..16 → float32 [N, 1, size, size] in [-1, 1] (bilinear)."""
    m = _bilinear_matrix(images.shape[-1], size)
    up = np.einsum("ij,njk,lk->nil", m, images.astype(np.float64) / 16.0, m)  # (N, size, size)
    return (up * 2.0 - 1.0).astype(np.float32)[:, None]


@functools.cache
def _digits16() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = upscale_digits(d.images)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=SPLIT_SEED)
    return Dataset("digits16", xtr, xte, ytr, yte)


# Range of the noiseless roll (t in [1.5π, 4.5π]; x = t·cos t, z = t·sin t), used to map to [-1, 1].
_T = np.linspace(1.5 * np.pi, 4.5 * np.pi, 100_001)
_ROLL_LO = np.array([(_T * np.cos(_T)).min(), (_T * np.sin(_T)).min()])
_ROLL_HI = np.array([(_T * np.cos(_T)).max(), (_T * np.sin(_T)).max()])
SWISSROLL_NOISE = 0.3


def swiss_roll(n: int, seed: int, noise: float = SWISSROLL_NOISE) -> np.ndarray:
    """float32 [n, 2]: sklearn make_swiss_roll's (x, z) columns mapped to [-1, 1]."""
    from sklearn.datasets import make_swiss_roll

    x3, _ = make_swiss_roll(n_samples=n, noise=noise, random_state=seed)
    xz = x3[:, [0, 2]]
    return ((xz - _ROLL_LO) / (_ROLL_HI - _ROLL_LO) * 2.0 - 1.0).astype(np.float32)


@functools.cache
def _swissroll() -> Dataset:
    return Dataset("swissroll", swiss_roll(10_000, seed=SPLIT_SEED), swiss_roll(2_000, seed=SPLIT_SEED + 1))


def load_dataset(name: str) -> Dataset:
    """The built-in dataset `name` (cached; treat the arrays as read-only)."""
    if name == "digits16":
        return _digits16()
    if name == "swissroll":
        return _swissroll()
    raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
