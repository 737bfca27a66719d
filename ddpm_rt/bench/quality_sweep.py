"""Time to quality: sampler × step count on a built-in model, each scored with the project's metric.

Every cell samples the same n initial noises x_T (one fixed seed) through one ONNX Runtime
backend opened once, times the sampling (wall clock, session creation excluded), and scores
the samples with `ddpm_rt.quality.report.quality_report` (digits: feature Fréchet distance;
swissroll: sliced Wasserstein / energy distance), next to its real-vs-real reference.

The reference cell is DDIM at min(50, T) steps (the project default). A sampler "reaches"
it at the fewest steps whose metric is at most the reference's plus one real-vs-real
standard deviation (equal or better quality, within the metric's own sampling noise).

Samples are clamped to the model's data range before scoring (a no-op for the clipping
samplers; ipndm steps on eps^ and cannot clip x0^, so its plan runs unclipped).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_rt.errors import ConfigError
from ddpm_rt.fsutil import atomic_write

SAMPLERS = ("ddim", "dpmpp-2m", "dpmpp-3m", "unipc", "ipndm")
STEPS = (5, 8, 10, 15, 20, 30, 50)
REFERENCE = ("ddim", 50)
# the metric each dataset is judged on: (report key, real-vs-real mean key, its std key)
METRIC = {
    "digits16": ("fd", "fd_real_vs_real", "fd_real_vs_real_std"),
    "swissroll": ("sliced_wasserstein", "sliced_wasserstein_real_vs_real", "sliced_wasserstein_real_vs_real_std"),
}


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep and how."""

    samplers: tuple[str, ...] = SAMPLERS
    steps: tuple[int, ...] = STEPS
    n: int = 1000
    batch: int = 250
    seed: int = 0
    threads: int | None = 1
    spacing: str | None = None  # None: the model's default spacing, for every sampler


def _plan(spec: Any, sampler: str, steps: int, spacing: str | None) -> Any:
    from ddpm_rt.plan import build_plan

    s = spec.sampler(steps, sampler=sampler, spacing=spacing)
    clip = None if sampler == "ipndm" else spec.clip  # ipndm cannot clip x0^ (module docstring)
    return build_plan(spec.schedule, spec.prediction_type, s, clip)


def quality_sweep(model: str, config: SweepConfig = SweepConfig(),
                  log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Sample, time and score every (sampler, steps) cell; a JSON-able table plus a summary."""
    from ddpm_rt.bench.machine import environment
    from ddpm_rt.machine import load_average
    from ddpm_rt.prepare import open_for
    from ddpm_rt.quality.report import quality_report, resolve_dataset
    from ddpm_rt.runtime.backend import BackendOptions
    from ddpm_rt.runtime.loop import initial_noise
    from ddpm_rt.sources import resolve_source

    src = resolve_source(model)
    spec = src.spec
    T = spec.schedule.num_train_timesteps
    dataset = resolve_dataset(model)
    key, ref_key, std_key = METRIC[dataset]
    steps = tuple(sorted({min(s, T) for s in config.steps}))
    ref_cell = (REFERENCE[0], min(REFERENCE[1], T))
    # the reference first (it also takes the warm-up's place in line), then sampler by sampler
    cells = [ref_cell, *((s, n) for s in config.samplers for n in steps if (s, n) != ref_cell)]
    x_T = initial_noise((config.n, *spec.sample_shape), np.random.default_rng(config.seed))
    lo, hi = spec.data_range
    load_before = load_average()
    rows = []
    with open_for("ort", src, config.batch, BackendOptions(threads=config.threads)) as backend:
        # warm-up: one batch through the first plan (session, allocator, kernels)
        backend.sample(_plan(spec, *cells[0], config.spacing), x_T[: config.batch])
        for sampler, n_steps in cells:
            try:
                plan = _plan(spec, sampler, n_steps, config.spacing)
            except ConfigError as e:  # e.g. leading spacing at N = T repeats a timestep (multistep)
                rows.append({"sampler": sampler, "steps": n_steps, "error": str(e)})
                log(f"{sampler:9s} {n_steps:3d} steps  skipped: {e}")
                continue
            t0 = time.perf_counter()
            out = [backend.sample(plan, x_T[i: i + config.batch]) for i in range(0, config.n, config.batch)]
            wall = time.perf_counter() - t0
            samples = np.clip(np.concatenate(out), lo, hi)
            report = quality_report(model, samples)
            rows.append({"sampler": sampler, "steps": n_steps, "spacing": plan.sampler.spacing,
                         "clip": plan.clip is not None, "model_calls": plan.steps, "wall_s": wall,
                         "ms_per_image": 1e3 * wall / config.n, "metric": report[key], "quality": report,
                         "error": None})
            log(f"{sampler:9s} {n_steps:3d} steps  {wall:7.2f} s  {key} {report[key]:.4f}")
    ran = [r for r in rows if r.get("error") is None]
    ref = next(r for r in ran if (r["sampler"], r["steps"]) == ref_cell)
    threshold = ref["metric"] + ref["quality"][std_key]
    summary = {}
    for sampler in config.samplers:
        ok = [r for r in ran if r["sampler"] == sampler and r["metric"] <= threshold]
        best = min(ok, key=lambda r: r["steps"]) if ok else None
        summary[sampler] = None if best is None else {
            "steps": best["steps"], "metric": best["metric"], "wall_s": best["wall_s"],
            "speedup_vs_reference": ref["wall_s"] / best["wall_s"]}
    return {
        "model": model, "dataset": dataset, "weights": "untrained" if src.untrained else "shipped",
        "config": asdict(config), "metric": key,
        "reference": {"sampler": ref_cell[0], "steps": ref_cell[1], "metric": ref["metric"],
                      "real_vs_real": ref["quality"][ref_key], "real_vs_real_std": ref["quality"][std_key],
                      "threshold": threshold},
        "fewest_steps_within_reference": summary,
        "results": rows,
        "environment": environment(config.threads),
        "load_average": {"before": load_before, "after": load_average()},
    }


def retime(result: dict[str, Any], rounds: int = 3, batch: int | None = None,
           log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Time every cell again, interleaved: `rounds` rounds over all cells, one batch each.

    The sweep's own wall times are one pass per cell, so a change of machine load during the
    sweep (other users on shared cores) skews their ratios; interleaving spreads it evenly.
    Adds ``interleaved_ms_per_image`` (median over rounds) to each row and
    ``speedup_interleaved`` to the summary; returns `result`, updated in place.
    """
    from ddpm_rt.machine import load_average
    from ddpm_rt.prepare import open_for
    from ddpm_rt.runtime.backend import BackendOptions
    from ddpm_rt.runtime.loop import initial_noise
    from ddpm_rt.sources import resolve_source

    config = result["config"]
    b = batch or config["batch"]
    src = resolve_source(result["model"])
    spec = src.spec
    x_T = initial_noise((b, *spec.sample_shape), np.random.default_rng(config["seed"]))
    rows = [r for r in result["results"] if r.get("error") is None]
    plans = [_plan(spec, r["sampler"], r["steps"], config["spacing"]) for r in rows]
    times: list[list[float]] = [[] for _ in rows]
    load_before = load_average()
    with open_for("ort", src, b, BackendOptions(threads=config["threads"])) as backend:
        backend.sample(plans[0], x_T)  # warm-up
        for k in range(rounds):
            for plan, t in zip(plans, times, strict=True):
                t0 = time.perf_counter()
                backend.sample(plan, x_T)
                t.append(1e3 * (time.perf_counter() - t0) / b)
            log(f"retime round {k + 1}/{rounds} done")
    for r, t in zip(rows, times, strict=True):
        r["interleaved_ms_per_image"] = float(np.median(t))
    ref = result["reference"]
    ref_ms = next(r["interleaved_ms_per_image"] for r in rows
                  if (r["sampler"], r["steps"]) == (ref["sampler"], ref["steps"]))
    for sampler, best in result["fewest_steps_within_reference"].items():
        if best is not None:
            ms = next(r["interleaved_ms_per_image"] for r in rows
                      if (r["sampler"], r["steps"]) == (sampler, best["steps"]))
            best["speedup_interleaved"] = ref_ms / ms
            best["calls_ratio"] = ref["steps"] / best["steps"]
    result["retime"] = {"rounds": rounds, "batch": b, "load_average": {"before": load_before, "after": load_average()}}
    return result


def _ms(r: dict[str, Any]) -> float:
    """ms per image: the interleaved figure when measured, else the sweep's own."""
    return r.get("interleaved_ms_per_image", r["ms_per_image"])


def to_markdown(result: dict[str, Any]) -> str:
    """The table and the summary as Markdown."""
    ref, key = result["reference"], result["metric"]
    env = result["environment"]
    lines = [
        f"# Time to quality — `{result['model']}` ({result['weights']} weights)", "",
        f"n = {result['config']['n']} samples per cell, seed {result['config']['seed']}, ORT, "
        f"batch {result['config']['batch']}, threads {result['config']['threads']}; "
        f"{env.get('cpu', '?')}; load average before {result['load_average']['before']}, "
        f"after {result['load_average']['after']}.", "",
        f"Metric: `{key}` (lower is better). Reference {ref['sampler']}-{ref['steps']}: {ref['metric']:.4f}; "
        f"real-vs-real {ref['real_vs_real']:.4f} ± {ref['real_vs_real_std']:.4f}; "
        f"threshold (reference + 1 std) {ref['threshold']:.4f}.", "",
        "| sampler | steps | spacing | clip | sweep wall s | ms / image (sweep) | ms / image (interleaved) | "
        + key + " |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    if "retime" in result:
        rt = result["retime"]
        lines[4:4] = [f"Interleaved timing: {rt['rounds']} rounds over every cell, batch {rt['batch']}, median; "
                      f"load average before {rt['load_average']['before']}, after {rt['load_average']['after']}.", ""]
    for r in result["results"]:
        if r.get("error") is not None:
            lines.append(f"| {r['sampler']} | {r['steps']} | — | — | — | — | — | not run: {r['error']} |")
            continue
        mark = " ✓" if r["metric"] <= ref["threshold"] else ""
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['spacing']} | {'yes' if r['clip'] else 'no'} | "
                     f"{r['wall_s']:.2f} | {r['ms_per_image']:.3f} | "
                     f"{r.get('interleaved_ms_per_image', float('nan')):.3f} | {r['metric']:.4f}{mark} |")
    lines += ["", "Fewest steps within the reference (✓ above):", ""]
    for sampler, best in result["fewest_steps_within_reference"].items():
        if best is None:
            lines.append(f"- {sampler}: not reached in the swept steps")
            continue
        faster = f"{best['speedup_vs_reference']:.2f}× faster in the sweep's own timing"
        if "speedup_interleaved" in best:
            faster = (f"{best['calls_ratio']:.1f}× fewer model calls, {best['speedup_interleaved']:.2f}× faster "
                      f"interleaved ({best['speedup_vs_reference']:.2f}× in the sweep's own timing)")
        lines.append(f"- {sampler}: {best['steps']} steps ({key} {best['metric']:.4f}; {faster})")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Quality against wall time, one line per sampler (points labelled with the step count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    for sampler in result["config"]["samplers"]:
        rows = sorted((r for r in result["results"] if r["sampler"] == sampler and r.get("error") is None),
                      key=lambda r: r["steps"])
        ax.plot([_ms(r) for r in rows], [r["metric"] for r in rows], marker="o", label=sampler)
        for r in rows:
            ax.annotate(str(r["steps"]), (_ms(r), r["metric"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ref = result["reference"]
    ax.axhline(ref["threshold"], color="k", ls="--", lw=0.8,
               label=f"{ref['sampler']}-{ref['steps']} + 1 real-vs-real std")
    ax.axhspan(ref["real_vs_real"] - ref["real_vs_real_std"], ref["real_vs_real"] + ref["real_vs_real_std"],
               color="0.85", label="real vs real (mean ± std)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    timing = "interleaved median" if "retime" in result else "one pass per cell"
    ax.set_xlabel(f"wall time per sample (ms, log; {timing})")
    ax.set_ylabel(f"{result['metric']} (log, lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{result['model']}: quality vs wall time (labels: steps)", fontsize=10)
    fig.tight_layout()
    atomic_write(Path(path), lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return Path(path)

