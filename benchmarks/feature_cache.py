"""U-Net feature caching (DeepCache, issue #21): per-call cost, quality vs speed, end-to-end speed-up.

    PYTHONPATH=. .venv/bin/python -m benchmarks.feature_cache [--n 1000] [--threads 2] [--parts percall,digits,cifar]

* per call: the full graph (that also writes the feature) vs the shallow graph, ms per call at
  batch 1 and 16, ORT fp32 and OpenVINO bf16, interleaved (full, shallow, full, ...) after warm-up;
  MACs per sample of each graph (the exporter's count, as `ddpm-rt inspect` shows it).
* digits (the shipped, trained U-Net; branch 0): feature FD to the held-out split at n samples
  (ddpm_rt.quality.report; real-vs-real reference and its std beside it) for cache interval
  N = 1 (uncached), 2, 3, 5 (uniform) and N = 3 quadratic, with DDIM-50 and unipc-15 (the default);
  fixed initial noise (the same for every N), OpenVINO fp32; wall time of each run.
* cifar (the DDPM CIFAR-10-size diffusers UNet2DModel, 35.7M parameters, 300 brief training steps:
  benchmarks/cifar10_brief_training.py; branch 0): trajectory agreement of the cached run with the
  uncached one (final-sample max-abs, rel-RMS, PSNR over [-1, 1]) and end-to-end wall time at
  batch 1 on OpenVINO bf16 and ORT fp32, interleaved with the uncached run.

Bundles (exported with --feature-cache 0) are made once under $DDPM_RT_CACHE/bench-work.
Writes benchmarks/results/feature_cache.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_common import RESULTS, log

INTERVALS = ((1, "uniform"), (2, "uniform"), (3, "uniform"), (5, "uniform"), (3, "quadratic"))


def _work() -> Path:
    root = Path(os.environ.get("DDPM_RT_CACHE", Path.home() / ".cache" / "ddpm-rt"))
    return root / "bench-work"


def _bundle(source: str, name: str, branch: int = 0) -> Path:
    from ddpm_rt.exporter.export import ExportOptions, export_bundle
    from ddpm_rt.sources import resolve_export_source

    out = _work() / (f"feature-cache-{name}" + (f"-branch{branch}" if branch else ""))
    if (out / "ddpm_rt.json").is_file():
        return out
    export_bundle(resolve_export_source(source), out, ExportOptions(trajectory_steps=0, feature_cache=branch),
                  status=log)
    return out


def _machine(threads: int | None) -> dict[str, Any]:
    from ddpm_rt.bench.machine import environment
    from ddpm_rt.machine import cpu_model

    return {"cpu": cpu_model(), "environment": environment(threads),
            "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}


def _percall(bundle_path: Path, threads: int | None, reps: int) -> list[dict[str, Any]]:
    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.registry import open_backend
    from ddpm_rt.runtime.backend import BackendOptions

    bundle = load_bundle(bundle_path)
    rows = []
    for backend, precision in (("ort", "fp32"), ("openvino", "bf16")):
        for batch in (1, 16):
            opts = BackendOptions(threads=threads, precision=precision, feature_cache=True)
            with open_backend(backend, bundle, batch, opts) as be:
                x = np.random.default_rng(0).standard_normal((batch, *bundle.spec.sample_shape), dtype=np.float32)
                t = np.full((batch,), 500.0, np.float32)
                for _ in range(3):
                    be(x, t)
                    be.cached(x, t)
                full, shallow = [], []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    be(x, t)
                    t1 = time.perf_counter()
                    be.cached(x, t)
                    t2 = time.perf_counter()
                    full.append(t1 - t0)
                    shallow.append(t2 - t1)
            f, s = np.median(full) * 1e3, np.median(shallow) * 1e3
            rows.append({"backend": backend, "precision": precision, "batch": batch, "full_ms": f, "shallow_ms": s,
                         "full_iqr_ms": float(np.subtract(*np.percentile(full, [75, 25])) * 1e3),
                         "shallow_iqr_ms": float(np.subtract(*np.percentile(shallow, [75, 25])) * 1e3),
                         "ratio": s / f})
            log(f"  {backend} {precision} batch {batch}: full {f:.2f} ms, shallow {s:.2f} ms ({s / f:.2f})")
    return rows


def _macs(bundle_path: Path) -> dict[str, Any]:
    from ddpm_rt.bundle.load import load_bundle

    m = load_bundle(bundle_path).manifest["feature_cache"]
    return {**m["macs_per_sample"], "ratio": m["macs_per_sample"]["shallow"] / m["macs_per_sample"]["full"],
            "feature_shape": m["feature_shape"], "branch": m["branch"], "export_parity": {
                k: m["parity"][k] for k in ("full_out", "feature", "shallow_out")} if m["parity"] else None}


def _digits_quality(bundle_path: Path, n: int, threads: int | None, chunk: int,
                    samplers: tuple[tuple[str, int], ...] = (("ddim", 50), ("unipc", 15)),
                    intervals: tuple[tuple[int, str], ...] = INTERVALS) -> list[dict[str, Any]]:
    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.plan import with_feature_cache
    from ddpm_rt.quality.report import quality_report
    from ddpm_rt.registry import open_backend
    from ddpm_rt.runtime.backend import BackendOptions

    bundle = load_bundle(bundle_path)
    spec = bundle.spec
    x_all = np.random.default_rng(1234).standard_normal((n, *spec.sample_shape), dtype=np.float32)
    rows = []
    with open_backend("openvino", bundle, chunk, BackendOptions(threads=threads, feature_cache=True)) as be:
        for sampler, steps in samplers:
            base = spec.plan(spec.sampler(steps, sampler=sampler))
            for interval, schedule in intervals:
                plan = with_feature_cache(base, interval, schedule)
                t0 = time.perf_counter()
                out = np.concatenate([be.sample(plan, x_all[i:i + chunk]) for i in range(0, n, chunk)])
                wall = time.perf_counter() - t0
                rep = quality_report("digits", out)
                rows.append({"sampler": sampler, "steps": steps, "interval": interval, "schedule": schedule,
                             "full_calls": plan.model_calls - plan.cached_calls, "cached_calls": plan.cached_calls,
                             "fd": rep["fd"], "fd_real_vs_real": rep["fd_real_vs_real"],
                             "fd_real_vs_real_std": rep["fd_real_vs_real_std"], "wall_s": wall,
                             "mean_confidence": rep["mean_confidence"]})
                log(f"  digits {sampler}-{steps} N={interval} {schedule}: FD {rep['fd']:.3f} "
                    f"(real-vs-real {rep['fd_real_vs_real']:.3f} ± {rep['fd_real_vs_real_std']:.3f}), {wall:.1f} s")
    return rows


def _cifar(bundle_path: Path, threads: int | None, reps: int, batch: int = 1,
           intervals: tuple[tuple[int, str], ...] = INTERVALS,
           samplers: tuple[tuple[str, int], ...] | None = None,
           backends: tuple[tuple[str, str], ...] = (("openvino", "bf16"), ("ort", "fp32"))) -> list[dict[str, Any]]:
    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.plan import VP_DEFAULT, with_feature_cache
    from ddpm_rt.registry import open_backend
    from ddpm_rt.runtime.backend import BackendOptions

    bundle = load_bundle(bundle_path)
    spec = bundle.spec
    x = np.random.default_rng(7).standard_normal((batch, *spec.sample_shape), dtype=np.float32)
    rows = []
    for backend, precision in backends:
        opts = BackendOptions(threads=threads, precision=precision, feature_cache=True)
        with open_backend(backend, bundle, batch, opts) as be:
            # DDIM-50, and the project's default solver at its default steps (plan.VP_DEFAULT; this
            # diffusers folder names DDIM as its own scheduler, so spec.sampler() would give DDIM again)
            for sampler, steps in samplers or (("ddim", 50), VP_DEFAULT):
                base = spec.plan(spec.sampler(steps, sampler=sampler))
                plans = {(i, s): with_feature_cache(base, i, s) for i, s in intervals}
                for plan in plans.values():  # warm-up, and the samples compared below
                    be.sample(plan, x)
                finals = {k: be.sample(p, x) for k, p in plans.items()}
                times: dict[tuple[int, str], list[float]] = {k: [] for k in plans}
                for _ in range(reps):  # interleaved: load drifts hit every N alike
                    for k, p in plans.items():
                        t0 = time.perf_counter()
                        be.sample(p, x)
                        times[k].append(time.perf_counter() - t0)
                ref, t_ref = finals[(1, "uniform")], float(np.median(times[(1, "uniform")]))
                for (interval, schedule), final in finals.items():
                    diff = final.astype(np.float64) - ref
                    rms = float(np.sqrt(np.mean(diff ** 2)))
                    wall = float(np.median(times[(interval, schedule)]))
                    rows.append({"backend": backend, "precision": precision, "batch": batch, "sampler": sampler,
                                 "steps": steps, "interval": interval, "schedule": schedule,
                                 "max_abs": float(np.abs(diff).max()),
                                 "rel_rms": rms / float(np.sqrt(np.mean(ref.astype(np.float64) ** 2))),
                                 "psnr_db": float(20 * np.log10(2.0 / max(rms, 1e-12))),
                                 "wall_s": wall, "wall_spread_s": float(np.ptp(times[(interval, schedule)])),
                                 "speedup": t_ref / wall})
                    log(f"  cifar {backend} {precision} {sampler}-{steps} N={interval} {schedule}: {wall:.3f} s "
                        f"({t_ref / wall:.2f}x), rel-RMS {rows[-1]['rel_rms']:.4f}, PSNR {rows[-1]['psnr_db']:.1f} dB")
    return rows


def _mac_speedup(r: dict[str, Any], row: dict[str, Any]) -> float:
    """Uncached MACs over cached MACs for a digits row (the exporter's MAC counts)."""
    ratio = r["macs_digits"]["ratio"]
    calls = row["full_calls"] + row["cached_calls"]
    return calls / (row["full_calls"] + row["cached_calls"] * ratio)


def _markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = ["# U-Net feature caching (DeepCache) — measured", "",
             f"CPU: {m['cpu']}; threads {r['threads']}; load average at start {' '.join(m['loadavg_start'])}, "
             f"at end {' '.join(r['loadavg_end'])}; after each part {r.get('load_after', {})} (2 cores shared with other jobs: figures are noisy, compare "
             f"within a table). Branch {r.get('branch', 0)} (0 = the cut at full resolution: the shallow graph runs "
             "conv_in, the first down level, the last up level and the head).", ""]
    for name in ("digits", "cifar"):
        if f"percall_{name}" not in r:
            continue
        mac = r[f"macs_{name}"]
        lines += [f"## Per call: {name}", "",
                  f"MACs per sample: full {mac['full'] / 1e6:.1f} M, shallow {mac['shallow'] / 1e6:.1f} M "
                  f"(ratio {mac['ratio']:.2f}); cached feature {mac['feature_shape']} per sample; export parity "
                  f"(max-abs vs eager): {mac['export_parity']}", "",
                  "| backend | batch | full ms/call | shallow ms/call | shallow / full |", "|---|---|---|---|---|"]
        for row in r[f"percall_{name}"]:
            lines.append(f"| {row['backend']} {row['precision']} | {row['batch']} | {row['full_ms']:.2f} "
                         f"(IQR {row['full_iqr_ms']:.2f}) | {row['shallow_ms']:.2f} (IQR {row['shallow_iqr_ms']:.2f}) "
                         f"| {row['ratio']:.2f} |")
        lines.append("")
    if "digits_quality" in r:
        rows = r["digits_quality"]
        lines += [f"## Quality vs speed: shipped digits U-Net, n = {r['n']} (OpenVINO fp32, batch {r['chunk']})", "",
                  "| sampler | N | schedule | full / cached calls | feature FD | Δ FD vs uncached | "
                  "real-vs-real FD ± std | wall s (one run) | MAC speed-up |", "|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            base = next(b for b in rows if (b["sampler"], b["steps"]) == (row["sampler"], row["steps"])
                        and b["interval"] == 1)
            lines.append(f"| {row['sampler']}-{row['steps']} | {row['interval']} | {row['schedule']} | "
                         f"{row['full_calls']} / {row['cached_calls']} | {row['fd']:.3f} | {row['fd'] - base['fd']:+.3f} | "
                         f"{row['fd_real_vs_real']:.3f} ± {row['fd_real_vs_real_std']:.3f} | {row['wall_s']:.1f} | "
                         f"{_mac_speedup(r, row):.2f}x |")
        lines += [*(["", r["digits_note"]] if r.get("digits_note") else []),
                  "", "Wall times here are one sequential run each on a shared, loaded machine (not interleaved; "
                  "the ddim-100 uncached run met a load spike): the speed-up column is the MAC count, calls / "
                  "(full + cached × shallow/full MACs); measured speed is in the per-call and CIFAR tables.", ""]
    if "cifar" in r:
        lines += [f"## CIFAR-10-size diffusers U-Net (35.7M parameters), batch 1, end to end "
                  f"(median of {r.get('reps_cifar', r['reps'])} interleaved runs)", "",
                  "| backend | sampler | N | schedule | wall s | speed-up | final max-abs vs uncached | rel-RMS | PSNR dB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in r["cifar"]:
            lines.append(f"| {row['backend']} {row['precision']} | {row['sampler']}-{row['steps']} | {row['interval']} | "
                         f"{row['schedule']} | {row['wall_s']:.3f} | {row['speedup']:.2f}x | {row['max_abs']:.3g} | "
                         f"{row['rel_rms']:.4f} | {row['psnr_db']:.1f} |")
        lines.append("")
    lines += ["Reproduce (the runs that made this page):", ""]
    lines += [f"    {argv[0]}" if argv and argv[0].startswith("#") else
              f"    PYTHONPATH=. python -m benchmarks.feature_cache {' '.join(argv)}"
              for argv in r.get("commands", [r["argv"]])]
    lines.append("")
    return "\n".join(lines)


def _plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if "digits_quality" in r:
        ax = axes[0]
        for key in dict.fromkeys((row["sampler"], row["steps"]) for row in r["digits_quality"]):
            rows = [row for row in r["digits_quality"] if (row["sampler"], row["steps"]) == key]
            uni = [row for row in rows if row["schedule"] == "uniform"]
            line = ax.plot([_mac_speedup(r, row) for row in uni], [row["fd"] for row in uni], "o-",
                           label=f"{key[0]}-{key[1]}")[0]
            quad = [row for row in rows if row["schedule"] == "quadratic"]
            ax.plot([_mac_speedup(r, row) for row in quad], [row["fd"] for row in quad], "x",
                    color=line.get_color())
            for row in rows:
                ax.annotate(f"N={row['interval']}{'q' if row['schedule'] == 'quadratic' else ''}",
                            (_mac_speedup(r, row), row["fd"]), fontsize=7)
        ref = r["digits_quality"][0]
        ax.axhspan(ref["fd"] - ref["fd_real_vs_real_std"], ref["fd"] + ref["fd_real_vs_real_std"], alpha=0.15,
                   label="uncached DDIM FD ± real-vs-real std")
        ax.set_xlabel("speed-up in MACs vs uncached (digits)")
        ax.set_yscale("log")
        ax.set_ylabel("feature FD")
        ax.set_title(f"digits, n = {r['n']}")
        ax.legend(fontsize=7)
    if "cifar" in r:
        ax = axes[1]
        for key in dict.fromkeys((row["backend"], row["precision"], row["sampler"], row["steps"]) for row in r["cifar"]):
            rows = [row for row in r["cifar"] if (row["backend"], row["precision"], row["sampler"], row["steps"]) == key
                    and row["schedule"] == "uniform"]
            ax.plot([row["interval"] for row in rows], [row["speedup"] for row in rows], "o-",
                    label=f"{key[0]} {key[1]} {key[2]}-{key[3]}")
        ax.axhline(1.4, ls="--", c="gray", lw=0.8)
        ax.set_xlabel("cache interval N (uniform)")
        ax.set_ylabel("end-to-end speed-up, batch 1")
        ax.set_title("CIFAR-10-size U-Net")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    import sys

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=250)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--parts", default="percall,digits,cifar")
    p.add_argument("--cifar-source", default=str(_work() / "cifar10-ddpm-unet-hf-seed0-trained300"))
    p.add_argument("--cifar-bundle", default=None, help="a CIFAR-size bundle exported with --feature-cache")
    p.add_argument("--digits-samplers", default="ddim:50,unipc:15", help="SAMPLER:STEPS,... for the digits part")
    p.add_argument("--intervals", default="1,2,3,5,3q", help="cache intervals (q = quadratic schedule)")
    p.add_argument("--cifar-samplers", default=None, help="SAMPLER:STEPS,... (default: ddim:50 and unipc:15)")
    p.add_argument("--cifar-backends", default="openvino:bf16,ort:fp32", help="BACKEND:PRECISION,...")
    p.add_argument("--branch", type=int, default=0, help="the skip branch the bundles are cut at")
    p.add_argument("--out", type=Path, default=RESULTS / "feature_cache")
    a = p.parse_args()
    parts = set(a.parts.split(","))
    from ddpm_rt.fsutil import atomic_write_text

    r: dict[str, Any] = {"machine": _machine(a.threads), "threads": a.threads, "n": a.n, "chunk": a.chunk, "reps": a.reps,
                         "argv": sys.argv[1:], "commands": []}
    old = a.out.with_suffix(".json")
    if old.is_file():  # keep parts measured by an earlier run of other parts
        prev = json.loads(old.read_text())
        r.update({k: v for k, v in prev.items() if k not in ("machine", "argv", "loadavg_end", "n", "chunk",
                                                             "threads", "reps")
                  or k in ("n", "chunk") and "digits" not in parts})
    r["commands"] = [*r.get("commands", []), sys.argv[1:]]

    def save(part: str | None = None) -> None:
        r["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        if part is not None:
            r.setdefault("load_after", {})[part] = r["loadavg_end"]
        atomic_write_text(a.out.with_suffix(".json"), json.dumps(r, indent=2, default=str) + "\n")
        atomic_write_text(a.out.with_suffix(".md"), _markdown(r))
        _plot(r, a.out.with_suffix(".png"))

    r["branch"] = a.branch
    digits = _bundle("digits", "digits", a.branch)
    cifar = Path(a.cifar_bundle) if a.cifar_bundle else (_bundle(a.cifar_source, "cifar", a.branch) if "cifar" in parts or
                                                         "percall" in parts else None)
    if "percall" in parts:
        for name, path in (("digits", digits), ("cifar", cifar)):
            log(f"per call: {name}")
            r[f"macs_{name}"] = _macs(path)
            r[f"percall_{name}"] = _percall(path, a.threads, reps=max(a.reps * 4, 20))
            save(f"percall_{name}")
    if "digits" in parts:
        samplers = tuple((name, int(steps)) for name, steps in (x.split(":") for x in a.digits_samplers.split(",")))
        intervals = tuple((int(v.rstrip("q")), "quadratic" if v.endswith("q") else "uniform")
                          for v in a.intervals.split(","))
        r["digits_quality"] = _digits_quality(digits, a.n, a.threads, a.chunk, samplers, intervals)
        save("digits_quality")
    if "cifar" in parts:
        intervals = tuple((int(v.rstrip("q")), "quadratic" if v.endswith("q") else "uniform")
                          for v in a.intervals.split(","))
        cifar_samplers = None if a.cifar_samplers is None else tuple(
            (name, int(steps)) for name, steps in (x.split(":") for x in a.cifar_samplers.split(",")))
        backends = tuple(tuple(x.split(":")) for x in a.cifar_backends.split(","))
        r["cifar"] = _cifar(cifar, a.threads, a.reps, intervals=intervals, samplers=cifar_samplers,
                            backends=backends)  # type: ignore[arg-type]
        save("cifar")
    save()


if __name__ == "__main__":
    main()
