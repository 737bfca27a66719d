"""Distribution distances for low-dimensional samples (2-D swiss roll), numpy only.

* energy distance (Székely & Rizzo), V-statistic form:
  E(X, Y) = 2·E|X - Y| - E|X - X'| - E|Y - Y'|  (>= 0, = 0 iff the empirical sets coincide in law)
* mean nearest-neighbour distance: E_x min_y |x - y|, the average distance of a sample to
  the closest real point — the off-manifold share that the two global distances blur;
* sliced 1-Wasserstein: the mean over random unit directions u of W1(u·X, u·Y),
  with W1 of two 1-D empirical laws = the mean |F_X^{-1}(q) - F_Y^{-1}(q)| over a quantile grid.
"""

from __future__ import annotations

import numpy as np

from ddpm_rt.errors import ConfigError


def _as_points(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] < 1:
        raise ConfigError(f"{name} must be points [N, D], got shape {np.shape(x)}")
    return a


def mean_pairwise_distance(a: np.ndarray, b: np.ndarray, chunk: int = 1024) -> float:
    """E|a_i - b_j| over all pairs, in row chunks so memory stays O(chunk·M)."""
    total = 0.0
    for i in range(0, a.shape[0], chunk):
        d = a[i : i + chunk, None, :] - b[None, :, :]  # (c, M, D)
        total += float(np.sqrt(np.sum(d * d, axis=-1)).sum())
    return total / (a.shape[0] * b.shape[0])


def mean_nearest_distance(x: np.ndarray, y: np.ndarray, chunk: int = 1024) -> float:
    """E_i min_j |x_i - y_j|: how far samples x [N, D] lie from the nearest point of y [M, D]."""
    a, b = _as_points(x, "x"), _as_points(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"point sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    total = 0.0
    for i in range(0, a.shape[0], chunk):
        d = a[i : i + chunk, None, :] - b[None, :, :]  # (c, M, D)
        total += float(np.sqrt(np.min(np.sum(d * d, axis=-1), axis=1)).sum())
    return total / a.shape[0]


def energy_distance(x: np.ndarray, y: np.ndarray, y_self: float | None = None) -> float:
    """Squared energy distance (V-statistic) between point sets x [N, D] and y [M, D].

    `y_self` may pass a precomputed E|Y - Y'| (``mean_pairwise_distance(y, y)``) when y is reused.
    """
    a, b = _as_points(x, "x"), _as_points(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"point sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    if y_self is None:
        y_self = mean_pairwise_distance(b, b)
    e = 2.0 * mean_pairwise_distance(a, b) - mean_pairwise_distance(a, a) - y_self
    return max(e, 0.0)


def sliced_wasserstein(
    x: np.ndarray, y: np.ndarray, n_projections: int = 256, n_quantiles: int = 1000, seed: int = 0
) -> float:
    """Sliced 1-Wasserstein distance between x [N, D] and y [M, D] (fixed seed → deterministic)."""
    a, b = _as_points(x, "x"), _as_points(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"point sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((a.shape[1], n_projections))
    u /= np.linalg.norm(u, axis=0, keepdims=True)  # (D, P) unit directions
    q = (np.arange(n_quantiles) + 0.5) / n_quantiles
    qa = np.quantile(a @ u, q, axis=0)  # (Q, P)
    qb = np.quantile(b @ u, q, axis=0)
    return float(np.mean(np.abs(qa - qb)))
