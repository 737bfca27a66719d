"""Fréchet distance between Gaussians fitted to two feature sets (numpy only).

    d² = |mu1 - mu2|² + tr(C1 + C2 - 2·(C1·C2)^{1/2})

tr((C1·C2)^{1/2}) is computed as tr((S·C2·S)^{1/2}) with S = C1^{1/2} (symmetric square roots
via eigh): S·C2·S is similar to C1·C2 and symmetric PSD, so its eigenvalues are real and
non-negative up to rounding, and no complex sqrtm (with its tiny imaginary parts) is needed.
"""

from __future__ import annotations

import numpy as np

from ddpm_rt.errors import ConfigError


def _sym_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((c + c.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D], ddof=1) of features [N, D], in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ConfigError(f"features must be [N, D] with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size, mu1.size):
        raise ConfigError(
            f"mismatched Gaussian statistics: means {mu1.shape} / {mu2.shape}, covariances {cov1.shape} / {cov2.shape}"
        )
    s1 = _sym_sqrt(cov1)
    m = s1 @ cov2 @ s1
    tr_sqrt = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2.0), 0.0, None))))
    diff = mu1 - mu2
    d2 = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)
    return max(d2, 0.0)


def feature_frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets f1 [N1, D] and f2 [N2, D]."""
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))
