"""The time-to-quality sweep (ddpm_rt.bench.quality_sweep) on the swiss-roll model, tiny.

The project's swissroll report costs ~15 s per call on 2 shared cores (pairwise distances over
the 2000-point held-out set, five reference draws); here it is replaced by a small sliced
Wasserstein distance with the same keys, so the test checks the sweep's wiring quickly.
"""

from __future__ import annotations

import json

import numpy as np

from ddpm_rt.bench.quality_sweep import SweepConfig, plot, quality_sweep, retime, to_markdown
from ddpm_rt.datasets import load_dataset
from ddpm_rt.quality import report as quality
from ddpm_rt.quality.distances import sliced_wasserstein


def _small_report(model: str, samples: np.ndarray) -> dict:
    heldout = load_dataset("swissroll").heldout[:300]
    sw = sliced_wasserstein(samples, heldout, n_projections=16, n_quantiles=64)
    return {"sliced_wasserstein": sw, "sliced_wasserstein_real_vs_real": 0.05,
            "sliced_wasserstein_real_vs_real_std": 0.01}


def test_sweep_table_summary_and_plot(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(quality, "quality_report", _small_report)
    config = SweepConfig(samplers=("ddim", "dpmpp-2m"), steps=(5, 39, 60), n=64, batch=32, threads=1,
                         spacing="trailing")
    result = quality_sweep("swissroll", config)
    json.dumps(result)  # JSON-able as returned
    cells = [(r["sampler"], r["steps"]) for r in result["results"]]
    # steps beyond the model's T = 40 are capped; the DDIM reference cell (40) comes first
    assert cells == [("ddim", 40), ("ddim", 5), ("ddim", 39), ("dpmpp-2m", 5), ("dpmpp-2m", 39),
                     ("dpmpp-2m", 40)]
    ref = result["reference"]
    assert (ref["sampler"], ref["steps"]) == ("ddim", 40)
    assert ref["threshold"] == ref["metric"] + ref["real_vs_real_std"]
    for r in result["results"]:
        assert r["model_calls"] == r["steps"] and r["wall_s"] > 0 and np.isfinite(r["metric"])
        assert r["metric"] == r["quality"]["sliced_wasserstein"]
    best = result["fewest_steps_within_reference"]
    assert best["ddim"] is not None and best["ddim"]["steps"] <= 40  # the reference reaches itself
    # a cell a sampler cannot run is recorded, not fatal: none here with trailing spacing
    assert all(r["error"] is None for r in result["results"])
    # more DDIM steps are better on a trained model
    by = {(r["sampler"], r["steps"]): r["metric"] for r in result["results"]}
    assert by["ddim", 40] < by["ddim", 5]
    retime(result, rounds=1, batch=16)
    assert all(r["interleaved_ms_per_image"] > 0 for r in result["results"])
    assert best["ddim"]["calls_ratio"] == 40 / best["ddim"]["steps"] and best["ddim"]["speedup_interleaved"] > 0
    md = to_markdown(result)
    assert "Interleaved timing: 1 rounds" in md
    assert "| dpmpp-2m | 5 |" in md and "Fewest steps" in md
    png = plot(result, tmp_path / "q.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
