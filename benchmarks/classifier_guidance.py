"""Classifier guidance on the shipped UNCONDITIONAL digits model: does the noise-aware classifier's
gradient steer samples to the class asked for, and what does it cost in sample quality and time?

    PYTHONPATH=. .venv/bin/python -m benchmarks.classifier_guidance [--n 1000] [--steps 50] [--threads 1]

The shipped `digits` bundle is copied to a temporary directory and the shipped noisy digits
classifier (assets/noisy_digits_classifier) attached to it (`ddpm-rt attach-classifier`). For each
classifier scale s, n samples (labels 0..9 in turn, the same initial and per-step noise for every s)
run DDIM (eta 0) on ONNX Runtime fp32 with eps ← eps − s·sqrt(1 − abar_t)·∇x log p(y | x_t, t); the
denoiser is called with (x, t) only, the labels go to the classifier. s = 0 is the unguided model
(x̂0 clipped, as the model samples by default); guided runs do not clip x̂0 (`ddpm_rt.sampling`), and
are judged on their samples clipped to [-1, 1] (the share of raw pixels outside is reported).

Judge: the project's clean-digits classifier (quality/digits_classifier.py): the share of samples
classified as the class asked for (chance: 10%), and the feature FD to the held-out split beside the
real-vs-real reference of the same size (quality/report.py).

Writes benchmarks/results/STEM.{json,md,png} (rewritten after every scale; the PNG: one row per
scale, the first sample of each class 0..9).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_common import RESULTS, log


def _judge(samples: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    from ddpm_rt.quality.digits_classifier import features_and_probs
    from ddpm_rt.quality.report import quality_report

    _, probs = features_and_probs(samples)
    pred = probs.argmax(1)
    report = quality_report("digits16", samples)
    per_class = [float(np.mean(pred[labels == c] == c)) for c in range(10)]
    return {"requested_fraction": float(np.mean(pred == labels)), "per_class": [round(v, 3) for v in per_class],
            "judge_confidence": float(probs.max(1).mean()),
            "fd": report["fd"], "fd_real_vs_real": report["fd_real_vs_real"],
            "fd_real_vs_real_std": report["fd_real_vs_real_std"], "class_counts": report["class_counts"],
            "out_of_range_fraction": report["out_of_range_fraction"]}


def _markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    clf = result["classifier"]
    lines = [
        "# Classifier guidance on the unconditional digits model",
        "",
        f"`{result['command']}`",
        "",
        f"Model: shipped `digits` bundle (unconditional DDPM U-Net), DDIM {result['steps']} steps, eta 0, "
        f"ONNX Runtime fp32, {result['n']} samples per scale (labels 0..9 in turn, same noise for every scale), "
        f"batch {result['chunk']}. Classifier: assets/noisy_digits_classifier ({clf['params']} parameters), "
        f"its input gradient exported by hand (max rel err vs torch.autograd.grad "
        f"{clf['parity']['max_rel_err']:.1e}); held-out accuracy by t: "
        + ", ".join(f"t={t}: {a:.1%}" for t, a in clf["heldout_vs_t"].items()) + ".",
        "",
        "Judge: the project's clean-digits classifier (quality/digits_classifier.py). "
        "*Requested* = share of samples it classifies as the class asked for (chance 10%). "
        "FD = Fréchet distance of its penultimate features to the held-out split "
        f"(real-vs-real reference at n = {result['n']}: "
        f"{result['rows'][0]['fd_real_vs_real']:.2f} ± {result['rows'][0]['fd_real_vs_real_std']:.2f}).",
        "",
        "| scale s | requested | worst class | FD | FD / real-vs-real | judge confidence | raw out of [-1, 1] | "
        "x̂0 clip | seconds | × unguided time |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    base = result["rows"][0]["seconds"]
    for r in result["rows"]:
        worst = int(np.argmin(r["per_class"]))
        lines.append(f"| {r['scale']:g} | {r['requested_fraction']:.1%} | {worst}: {r['per_class'][worst]:.0%} | "
                     f"{r['fd']:.2f} | {r['fd'] / r['fd_real_vs_real']:.2f} | {r['judge_confidence']:.3f} | "
                     f"{r['out_of_range_fraction']:.2%} | {r['x0_clip']} | "
                     f"{r['seconds']:.1f} | {r['seconds'] / base:.2f} |")
    lines += [
        "",
        "Per-class requested share (classes 0..9):",
        "",
        *[f"- s = {r['scale']:g}: {', '.join(f'{v:.0%}' for v in r['per_class'])}" for r in result["rows"]],
        "",
        f"Machine: {env['cpu']}, {env['usable_cores']} usable cores shared with other jobs, "
        f"{result['threads']} thread(s); load average {env['loadavg_start']} at start, "
        f"{result.get('loadavg_end')} at the end. onnxruntime {env['onnxruntime']}, torch {env['torch']}, "
        f"{env['date']}. Times are wall seconds per scale for all {result['n']} samples (loaded machine: "
        "indicative only).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--scales", default="0,1,2,4,8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk", type=int, default=250)
    p.add_argument("--classifier", type=Path, default=None, help="classifier directory (default: the shipped one)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--stem", default="classifier_guidance", help="result file names: STEM.{json,md,png}")
    args = p.parse_args()

    import os

    from ddpm_rt.bench.machine import environment
    from ddpm_rt.exporter.classifier_export import attach_classifier, load_noisy_classifier
    from ddpm_rt.fsutil import atomic_write_text
    from ddpm_rt.models.noisy_classifier import ASSET_DIR
    from ddpm_rt.output import save_samples
    from ddpm_rt.plan import SamplerSpec
    from ddpm_rt.runtime.loop import initial_noise
    from ddpm_rt.sampling import open_run
    from ddpm_rt.sources import resolve_source

    classifier_dir = args.classifier or ASSET_DIR
    shipped = resolve_source("digits").bundle  # the shipped ready bundle (assets/digits/bundle)
    assert shipped is not None
    model, _ = load_noisy_classifier(classifier_dir)
    labels = (np.arange(args.n) % 10).astype(np.int64)
    env = environment(args.threads)
    cmd = ("PYTHONPATH=. python -m benchmarks.classifier_guidance "
           f"--n {args.n} --steps {args.steps} --scales {args.scales} --threads {args.threads} --chunk {args.chunk}"
           + (f" --stem {args.stem}" if args.stem != "classifier_guidance" else ""))
    grid: list[np.ndarray] = []  # the first 10 samples (classes 0..9) of every scale, one row each
    with tempfile.TemporaryDirectory(prefix="ddpm-rt-clf-") as tmp:
        bundle = Path(tmp) / "digits-with-classifier"
        shutil.copytree(shipped, bundle)
        section = attach_classifier(bundle, classifier_dir)
        result: dict[str, Any] = {
            "command": cmd, "model": "digits (shipped bundle, unconditional)", "n": args.n, "steps": args.steps,
            "sampler": "ddim", "eta": 0.0, "backend": "ort fp32", "threads": args.threads, "chunk": args.chunk,
            "classifier": {"dir": str(classifier_dir), "params": sum(p.numel() for p in model.parameters()),
                           "heldout_vs_t": section["accuracy"]["heldout_vs_t"], "parity": section["parity"],
                           "sha256": section["sha256"]},
            "environment": env, "rows": [],
        }
        src = resolve_source(str(bundle))
        sampler = SamplerSpec("ddim", args.steps)
        for s in (float(v) for v in args.scales.split(",")):
            with open_run(src, "ort", chunk=args.chunk, batch=args.n, threads=args.threads,
                          cond={"class_labels": labels} if s else None, classifier_scale=s) as run:
                plan = run.spec.plan(sampler)
                rng = np.random.default_rng(0)
                x_init = initial_noise((args.n, *run.spec.sample_shape), rng)
                t0 = time.perf_counter()
                raw = run.sample(plan, x_init, rng=rng)
                secs = time.perf_counter() - t0
                clip = run.notes.get("x0_clip", "on (the model's)")
            out = np.clip(raw, -1.0, 1.0)  # guided x̂0 is not clipped: judge what a picture shows
            row = {"scale": s, "seconds": round(secs, 2), "x0_clip": clip, **_judge(out, labels),
                   "out_of_range_fraction": float(np.mean(np.abs(raw) > 1.0 + 1e-6))}
            grid.append(out[:10])
            result["rows"].append(row)
            result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
            log(f"s={s:g}: requested {row['requested_fraction']:.1%}, FD {row['fd']:.2f} "
                f"(real-vs-real {row['fd_real_vs_real']:.2f}), {secs:.0f}s")
            args.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out / f"{args.stem}.json", json.dumps(result, indent=2) + "\n")
            atomic_write_text(args.out / f"{args.stem}.md", _markdown(result))
            save_samples(np.concatenate(grid), src.spec, args.out / f"{args.stem}.png",
                         f"rows: s = {args.scales}; columns: classes 0..9", cols=10)
    log(f"wrote {args.out / args.stem}.{{json,md,png}}")


if __name__ == "__main__":
    main()
