"""`ddpm-rt quality SAMPLES.npy|SHARD_DIR --dataset digits16`: score samples against held-out data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from ddpm_rt.errors import ConfigError, SourceError


def quality(
    samples: Path = typer.Argument(
        ..., help="samples as a .npy array ([N, 1, 16, 16] digits or [N, 2] points) or a shard "
                  "directory from `ddpm-rt sample --out DIR` (read shard by shard)",
    ),
    dataset: str = typer.Option(
        "digits16", "--dataset", "-d",
        help="dataset (digits16 | swissroll) or a built-in model name (digits, swissroll, ...)",
    ),
    json_out: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Measure sample quality: feature Fréchet distance (digits) or energy / sliced Wasserstein (2-D)."""
    from ddpm_rt.quality.report import format_report, quality_report

    if samples.is_dir():
        from ddpm_rt.quality.streaming import shard_quality_report

        report = shard_quality_report(dataset, samples)
    else:
        report = quality_report(dataset, _load_samples(samples))
    typer.echo(json.dumps(report) if json_out else format_report(report))


def _load_samples(samples: Path) -> np.ndarray:
    if samples.suffix != ".npy":
        raise ConfigError(f"samples must be a .npy file or a shard directory, got {samples}")
    if not samples.is_file():
        raise SourceError(f"samples file {samples} does not exist")
    try:
        return np.load(samples, allow_pickle=False)
    except ValueError as e:
        raise SourceError(f"cannot read {samples} as a numeric .npy array: {e}") from None


if __name__ == "__main__":
    typer.run(quality)
