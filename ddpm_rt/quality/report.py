"""Sample-quality report against the built-in data's held-out split, with a real-vs-real reference.

The reference answers "how far is real data from the held-out set at this sample size?": n real
training points (n = number of samples, capped at the training split size), disjoint from the
held-out set, are scored exactly like the samples. Both figures share the finite-sample bias of the
metric, so their ratio is meaningful. At a few hundred points the reference itself varies by tens of
percent between draws, so it is the mean over REFERENCE_DRAWS fixed-seed draws (its spread is reported).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ddpm_rt.datasets import DATASETS, load_dataset
from ddpm_rt.errors import ConfigError
from ddpm_rt.quality.distances import (
    energy_distance,
    mean_nearest_distance,
    mean_pairwise_distance,
    sliced_wasserstein,
)

REFERENCE_SEED = 1234
REFERENCE_DRAWS = 5


def resolve_dataset(model_name_or_dataset: str) -> str:
    """A dataset name, given a dataset or a built-in model name."""
    if model_name_or_dataset in DATASETS:
        return model_name_or_dataset
    from ddpm_rt.models.catalog import BUILTIN

    if model_name_or_dataset in BUILTIN:
        return BUILTIN[model_name_or_dataset].dataset
    raise ConfigError(
        f"unknown dataset or model {model_name_or_dataset!r}; choose a dataset "
        f"({', '.join(DATASETS)}) or a built-in model ({', '.join(BUILTIN)})"
    )


def reference_subsets(train: np.ndarray, n: int) -> list[np.ndarray]:
    """REFERENCE_DRAWS fixed-seed subsets of min(n, len(train)) training points."""
    rng = np.random.default_rng(REFERENCE_SEED)
    size = min(n, train.shape[0])
    return [train[rng.choice(train.shape[0], size=size, replace=False)] for _ in range(REFERENCE_DRAWS)]


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def _digits_report(samples: np.ndarray) -> dict[str, Any]:
    from ddpm_rt.quality.digits_classifier import features_and_probs
    from ddpm_rt.quality.frechet import gaussian_stats

    f_s, p_s = features_and_probs(samples)
    mu, cov = gaussian_stats(f_s)
    return digits_report(int(f_s.shape[0]), mu, cov, np.bincount(p_s.argmax(1), minlength=10),
                         float(p_s.max(1).mean()), float(np.mean(np.abs(samples) > 1.0 + 1e-6)))


def digits_report(num: int, mu: np.ndarray, cov: np.ndarray, counts: np.ndarray, mean_confidence: float,
                  out_of_range: float) -> dict[str, Any]:
    """The digits report from the samples' feature statistics (mean, covariance, class counts, ...),
    next to the real-vs-real reference of the same size. Shared by the in-memory and streaming reports."""
    from ddpm_rt.quality.digits_classifier import classifier_info, features_and_probs
    from ddpm_rt.quality.frechet import frechet_distance, gaussian_stats

    ds = load_dataset("digits16")
    f_h, p_h = features_and_probs(ds.heldout)
    f_t, _ = features_and_probs(ds.train)
    refs = reference_subsets(f_t, num)
    stats_h = gaussian_stats(f_h)
    fd = frechet_distance(mu, cov, *stats_h)
    fd_ref, fd_ref_std = mean_std([frechet_distance(*gaussian_stats(r), *stats_h) for r in refs])
    return {
        "dataset": "digits16",
        "n_samples": num,
        "n_heldout": int(f_h.shape[0]),
        "n_reference": int(refs[0].shape[0]),
        "reference_draws": REFERENCE_DRAWS,
        "fd": fd,
        "fd_real_vs_real": fd_ref,
        "fd_real_vs_real_std": fd_ref_std,
        "fd_ratio": fd / fd_ref if fd_ref > 0 else float("inf"),
        "mean_confidence": mean_confidence,
        "mean_confidence_heldout": float(p_h.max(1).mean()),
        "class_counts": np.asarray(counts).tolist(),
        "out_of_range_fraction": out_of_range,
        "feature": f"digits classifier penultimate layer (held-out accuracy "
                   f"{classifier_info().get('heldout_accuracy', 'n/a')})",
    }


def _points_report(samples: np.ndarray) -> dict[str, Any]:
    ds = load_dataset("swissroll")
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != ds.heldout.shape[1]:
        raise ConfigError(f"swissroll samples must be [N, 2], got shape {np.shape(samples)}")
    if not np.all(np.isfinite(x)):
        raise ConfigError("swissroll samples contain NaN or inf")
    h_self = mean_pairwise_distance(ds.heldout, ds.heldout)
    return points_report(ds, int(x.shape[0]), energy_distance(x, ds.heldout, h_self),
                         sliced_wasserstein(x, ds.heldout), int(x.shape[0]), mean_nearest_distance(x, ds.heldout))


def points_report(ds: Any, num: int, ed: float, sw: float, sw_points: int, nn: float) -> dict[str, Any]:
    """The 2-D report from the three distances of `num` samples (`sw` measured on `sw_points` of them),
    next to real-vs-real references of the same sizes. Shared by the in-memory and streaming reports."""
    h_self = mean_pairwise_distance(ds.heldout, ds.heldout)
    refs = reference_subsets(ds.train, num)
    sw_refs = refs if sw_points == num else reference_subsets(ds.train, sw_points)
    ed_ref, ed_ref_std = mean_std([energy_distance(r, ds.heldout, h_self) for r in refs])
    sw_ref, sw_ref_std = mean_std([sliced_wasserstein(r, ds.heldout) for r in sw_refs])
    nn_ref, nn_ref_std = mean_std([mean_nearest_distance(r, ds.heldout) for r in refs])
    return {
        "dataset": "swissroll",
        "n_samples": num,
        "n_heldout": int(ds.heldout.shape[0]),
        "n_reference": int(refs[0].shape[0]),
        "reference_draws": REFERENCE_DRAWS,
        "energy_distance": ed,
        "energy_distance_real_vs_real": ed_ref,
        "energy_distance_real_vs_real_std": ed_ref_std,
        "sliced_wasserstein": sw,
        "sliced_wasserstein_real_vs_real": sw_ref,
        "sliced_wasserstein_real_vs_real_std": sw_ref_std,
        "sw_ratio": sw / sw_ref if sw_ref > 0 else float("inf"),
        "sliced_wasserstein_points": sw_points,
        "nearest_distance": nn,
        "nearest_distance_real_vs_real": nn_ref,
        "nearest_distance_real_vs_real_std": nn_ref_std,
        "nn_ratio": nn / nn_ref if nn_ref > 0 else float("inf"),
    }


def quality_report(model_name_or_dataset: str, samples: np.ndarray) -> dict[str, Any]:
    """Distances of `samples` to the held-out split, next to the real-vs-real reference."""
    dataset = resolve_dataset(model_name_or_dataset)
    if np.shape(samples)[0] < 2:
        raise ConfigError(f"need at least 2 samples for a quality report, got {np.shape(samples)[0]}")
    if dataset == "digits16":
        return _digits_report(samples)
    return _points_report(samples)


def format_report(report: dict[str, Any]) -> str:
    """A few human-readable lines."""
    n = f"{report['n_samples']} samples vs {report['n_heldout']} held-out (reference: {report['n_reference']} real, mean ± std of {report['reference_draws']} draws)"
    if report["dataset"] == "digits16":
        return "\n".join([
            f"digits16: {n}",
            f"  feature Fréchet distance   {report['fd']:.3f}   real-vs-real {report['fd_real_vs_real']:.3f} ± {report['fd_real_vs_real_std']:.3f}"
            f"   ratio {report['fd_ratio']:.2f}",
            f"  mean classifier confidence {report['mean_confidence']:.3f}   held-out "
            f"{report['mean_confidence_heldout']:.3f}",
            f"  predicted classes          {report['class_counts']}",
        ])
    return "\n".join([
        f"swissroll: {n}",
        f"  energy distance     {report['energy_distance']:.5f}   real-vs-real {report['energy_distance_real_vs_real']:.5f} ± {report['energy_distance_real_vs_real_std']:.5f}",
        f"  sliced Wasserstein  {report['sliced_wasserstein']:.5f}   real-vs-real "
        f"{report['sliced_wasserstein_real_vs_real']:.5f} ± {report['sliced_wasserstein_real_vs_real_std']:.5f}   ratio {report['sw_ratio']:.2f}",
        f"  nearest-point dist  {report['nearest_distance']:.5f}   real-vs-real "
        f"{report['nearest_distance_real_vs_real']:.5f} ± {report['nearest_distance_real_vs_real_std']:.5f}   ratio {report['nn_ratio']:.2f}",
    ])
