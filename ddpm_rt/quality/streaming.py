"""The quality report of a shard directory, read one shard at a time.

Memory holds one shard plus fixed-size state, never the whole sample set. Same keys as
`quality.report.quality_report`, and the same figures up to float summation order, except:

digits16 (all exact): feature mean and covariance are merged shard by shard (Chan et al.'s
  pairwise update of mean and co-moment, in float64); class counts, mean confidence and the
  out-of-range fraction are sums.
swissroll:
  * nearest-point distance — exact (a sum over samples of the distance to the held-out set);
  * energy distance — exact: E|X-Y| is a sum over shards, E|X-X'| a sum over pairs of shards
    (two shards in memory at a time; O(N²) time, a few seconds at 50,000 2-D points);
  * sliced Wasserstein — needs quantiles of all samples, so it is computed on a uniform
    reservoir of SW_RESERVOIR samples (Algorithm R, fixed seed): exact when N <= SW_RESERVOIR,
    and its real-vs-real reference then uses the same number of points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ddpm_rt.datasets import load_dataset
from ddpm_rt.errors import ConfigError
from ddpm_rt.quality.distances import (
    mean_nearest_distance,
    mean_pairwise_distance,
    sliced_wasserstein,
)
from ddpm_rt.quality.report import digits_report, points_report, resolve_dataset
from ddpm_rt.shards.store import open_complete

SW_RESERVOIR = 10_000
RESERVOIR_SEED = 4321


class OnlineGaussian:
    """Mean and covariance (ddof=1) of rows seen in batches, merged pairwise in float64."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.mean = np.zeros(dim)
        self.comoment = np.zeros((dim, dim))  # sum of (x - mean)(x - mean)^T

    def update(self, rows: np.ndarray) -> None:
        x = np.asarray(rows, dtype=np.float64)
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(axis=0)
        centred = x - mb
        cb = centred.T @ centred
        n = self.n + nb
        delta = mb - self.mean
        self.comoment += cb + np.outer(delta, delta) * (self.n * nb / n)
        self.mean += delta * (nb / n)
        self.n = n

    def covariance(self) -> np.ndarray:
        if self.n < 2:
            raise ConfigError(f"need at least 2 samples for a covariance, got {self.n}")
        return self.comoment / (self.n - 1)


class Reservoir:
    """A uniform random subset of at most `size` rows of a stream (Algorithm R, seeded)."""

    def __init__(self, size: int, seed: int = RESERVOIR_SEED) -> None:
        self.size = size
        self.rows: np.ndarray | None = None
        self.seen = 0
        self.rng = np.random.default_rng(seed)

    def update(self, batch: np.ndarray) -> None:
        for row in batch:  # per row: the reservoir's law does not depend on the batch split
            if self.rows is None:
                self.rows = np.empty((self.size, *batch.shape[1:]), dtype=batch.dtype)
            if self.seen < self.size:
                self.rows[self.seen] = row
            else:
                j = int(self.rng.integers(0, self.seen + 1))
                if j < self.size:
                    self.rows[j] = row
            self.seen += 1

    def sample(self) -> np.ndarray:
        assert self.rows is not None, "reservoir is empty"
        return self.rows[: min(self.seen, self.size)]


def _shards(directory: Path) -> tuple[int, list[Path]]:
    manifest, records = open_complete(directory)
    return manifest.num, [Path(directory) / r.file for r in records]


def _load(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _digits_report(num: int, paths: list[Path]) -> dict[str, Any]:
    from ddpm_rt.quality.digits_classifier import FEATURE_DIM, features_and_probs

    gauss = OnlineGaussian(FEATURE_DIM)
    counts = np.zeros(10, dtype=np.int64)
    confidence, out_of_range, values = 0.0, 0, 0
    for path in paths:
        shard = _load(path)
        f, p = features_and_probs(shard)
        gauss.update(f)
        counts += np.bincount(p.argmax(1), minlength=10)
        confidence += float(p.max(1).sum())
        out_of_range += int(np.count_nonzero(np.abs(shard) > 1.0 + 1e-6))
        values += shard.size
    return digits_report(num, gauss.mean, gauss.covariance(), counts, confidence / num, out_of_range / values)


def _points(path: Path, dim: int) -> np.ndarray:
    x = np.asarray(_load(path), dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ConfigError(f"swissroll samples must be [N, {dim}], got shape {x.shape} in {path}")
    if not np.all(np.isfinite(x)):
        raise ConfigError(f"swissroll samples contain NaN or inf ({path})")
    return x


def _self_distance_sum(paths: list[Path], dim: int) -> float:
    """Sum of |x_i - x_j| over all ordered pairs, two shards in memory at a time."""
    total = 0.0
    for i, pi in enumerate(paths):
        a = _points(pi, dim)
        for pj in paths[i:]:
            b = a if pj == pi else _points(pj, dim)
            block = mean_pairwise_distance(a, b) * a.shape[0] * b.shape[0]
            total += block if b is a else 2.0 * block
    return total


def _points_report(num: int, paths: list[Path]) -> dict[str, Any]:
    ds = load_dataset("swissroll")
    dim = ds.heldout.shape[1]
    cross, nearest = 0.0, 0.0
    reservoir = Reservoir(SW_RESERVOIR)
    for path in paths:
        x = _points(path, dim)
        cross += mean_pairwise_distance(x, ds.heldout) * x.shape[0]
        nearest += mean_nearest_distance(x, ds.heldout) * x.shape[0]
        reservoir.update(x)
    h_self = mean_pairwise_distance(ds.heldout, ds.heldout)
    ed = max(2.0 * cross / num - _self_distance_sum(paths, dim) / num**2 - h_self, 0.0)
    nn = nearest / num
    sw_points = reservoir.sample()
    sw = sliced_wasserstein(sw_points, ds.heldout)
    return points_report(ds, num, ed, sw, int(sw_points.shape[0]), nn)


def shard_quality_report(model_name_or_dataset: str, directory: Path) -> dict[str, Any]:
    """`quality_report` of the samples in a complete shard directory, streamed shard by shard."""
    dataset = resolve_dataset(model_name_or_dataset)
    num, paths = _shards(Path(directory))
    if num < 2:
        raise ConfigError(f"need at least 2 samples for a quality report, got {num}")
    report = _digits_report(num, paths) if dataset == "digits16" else _points_report(num, paths)
    return {**report, "shards": len(paths)}

