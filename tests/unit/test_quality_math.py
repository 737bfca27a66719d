"""Quality metrics against closed forms (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from ddpm_rt.errors import ConfigError
from ddpm_rt.quality.distances import energy_distance, mean_pairwise_distance, sliced_wasserstein
from ddpm_rt.quality.frechet import feature_frechet, frechet_distance, gaussian_stats


def test_frechet_of_identical_sets_is_zero(rng: np.random.Generator) -> None:
    f = rng.standard_normal((300, 16)) @ rng.standard_normal((16, 16))
    assert feature_frechet(f, f) == pytest.approx(0.0, abs=1e-8)


def test_frechet_shifted_gaussians_same_covariance(rng: np.random.Generator) -> None:
    a = rng.standard_normal((8, 8))
    cov = a @ a.T + np.eye(8)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    # same covariance: only the mean term survives
    assert frechet_distance(mu1, cov, mu2, cov) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)


def test_frechet_commuting_covariances_closed_form(rng: np.random.Generator) -> None:
    # C1 = Q diag(s1) Q^T, C2 = Q diag(s2) Q^T commute: d² = |dmu|² + sum (sqrt(s1) - sqrt(s2))²
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    s1, s2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    mu1, mu2 = np.zeros(6), np.full(6, 0.5)
    d2 = frechet_distance(mu1, q @ np.diag(s1) @ q.T, mu2, q @ np.diag(s2) @ q.T)
    assert d2 == pytest.approx(6 * 0.25 + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2), rel=1e-9)


def test_frechet_general_covariances_match_eigen_form(rng: np.random.Generator) -> None:
    # tr sqrt(C1 C2) = sum sqrt(eig(C1 C2)) (real, non-negative: C1 C2 is similar to a PSD matrix)
    a, b = rng.standard_normal((5, 5)), rng.standard_normal((5, 5))
    c1, c2 = a @ a.T, b @ b.T
    tr_sqrt = np.sum(np.sqrt(np.linalg.eigvals(c1 @ c2).real.clip(0)))
    want = np.trace(c1) + np.trace(c2) - 2 * tr_sqrt
    assert frechet_distance(np.zeros(5), c1, np.zeros(5), c2) == pytest.approx(want, rel=1e-8)


def test_frechet_of_samples_approaches_closed_form(rng: np.random.Generator) -> None:
    x = rng.standard_normal((20000, 3))
    y = rng.standard_normal((20000, 3)) * 2.0 + 1.0
    # N(0, I) vs N(1, 4I): 3·1 + 3·(1 - 2)² = 6
    assert feature_frechet(x, y) == pytest.approx(6.0, rel=0.05)


def test_frechet_is_symmetric_and_rejects_bad_shapes(rng: np.random.Generator) -> None:
    x, y = rng.standard_normal((100, 4)), rng.standard_normal((80, 4)) + 0.3
    assert feature_frechet(x, y) == pytest.approx(feature_frechet(y, x), rel=1e-9)
    with pytest.raises(ConfigError):
        gaussian_stats(np.zeros((1, 4)))
    with pytest.raises(ConfigError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_energy_distance_properties(rng: np.random.Generator) -> None:
    x = rng.standard_normal((200, 2))
    y = rng.standard_normal((150, 2)) + np.array([1.0, 0.0])
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    e = energy_distance(x, y)
    assert e > 0.1
    assert energy_distance(y, x) == pytest.approx(e, rel=1e-12)  # symmetric
    assert energy_distance(x + 3.0, y + 3.0) == pytest.approx(e, rel=1e-9)  # translation invariant
    assert energy_distance(2.0 * x, 2.0 * y) == pytest.approx(2.0 * e, rel=1e-9)  # degree-1 homogeneous
    assert energy_distance(x, y, mean_pairwise_distance(y, y)) == pytest.approx(e, rel=1e-12)
    # two single points at distance d: 2d - 0 - 0
    assert energy_distance(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])) == pytest.approx(10.0)


def test_energy_distance_detects_a_shift_beyond_sampling_noise(rng: np.random.Generator) -> None:
    x, x2 = rng.standard_normal((500, 2)), rng.standard_normal((500, 2))
    y = rng.standard_normal((500, 2)) + 0.5
    assert energy_distance(x, y) > 5 * energy_distance(x, x2)


def test_sliced_wasserstein_properties(rng: np.random.Generator) -> None:
    x = rng.standard_normal((400, 2))
    assert sliced_wasserstein(x, x) == pytest.approx(0.0, abs=1e-12)
    # 1-D: a shift by c moves every quantile by c
    assert sliced_wasserstein(x[:, :1], x[:, :1] + 0.7) == pytest.approx(0.7, rel=1e-9)
    y = x + np.array([0.5, -0.2])
    assert sliced_wasserstein(x, y) == pytest.approx(sliced_wasserstein(y, x), rel=1e-12)
    assert sliced_wasserstein(x, y, seed=3) == pytest.approx(sliced_wasserstein(x, y, seed=3))  # deterministic
    with pytest.raises(ConfigError):
        sliced_wasserstein(x, np.zeros((10, 3)))
    with pytest.raises(ConfigError):
        energy_distance(x, np.zeros((10, 3)))


def test_mean_nearest_distance_sees_off_manifold_points():
    from ddpm_rt.quality.distances import mean_nearest_distance

    rng = np.random.default_rng(0)
    theta = rng.uniform(0, 2 * np.pi, 2000)
    circle = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    assert mean_nearest_distance(circle, circle) == 0.0
    on = circle[:500] + 0.001
    inside = on * 0.5  # every point 0.5 away from the circle
    assert mean_nearest_distance(on, circle) < 0.01
    assert abs(mean_nearest_distance(inside, circle) - 0.5) < 0.01
