"""Editing quality on the shipped digits model: SDEdit strength sweep and inpainting (plain replacement
vs RePaint), judged by the project's digits classifier.

    .venv/bin/python -m benchmarks.editing_quality [--n 1000] [--threads 1]

* SDEdit: the first n training digits, noised to each strength's level (DDIM 50, eta 0, diffusers'
  img2img cut), denoised; reported: the share whose class (digits classifier) is the original's
  label, and the feature FD to the held-out split (real-vs-real reference beside it).
* Inpainting: the top half of each digit known (mask rows 0..7), the bottom half generated;
  plain replacement (DDIM 50, eta 1) against RePaint (the same DDIM 50, eta 1, jump 5, resample 5;
  its model calls are reported, it costs more). Reported: class agreement with the original's
  label (chance: 10%), FD, the known region's max-abs error (0 expected), wall time and calls.

Writes benchmarks/results/editing_quality.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_common import RESULTS, labelled_strips, log


def _judge(samples: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    from ddpm_rt.quality.digits_classifier import features_and_probs
    from ddpm_rt.quality.report import quality_report

    _, probs = features_and_probs(samples)
    report = quality_report("digits16", samples)
    return {"class_kept": float(np.mean(probs.argmax(1) == labels)), "fd": report["fd"],
            "fd_real_vs_real": report["fd_real_vs_real"], "fd_real_vs_real_std": report["fd_real_vs_real_std"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk", type=int, default=250)
    p.add_argument("--strengths", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    from ddpm_rt.bench.machine import environment
    from ddpm_rt.datasets import load_dataset
    from ddpm_rt.editing import make_edit, start_for_strength
    from ddpm_rt.fsutil import atomic_write_text
    from ddpm_rt.plan import SamplerSpec
    from ddpm_rt.runtime.loop import initial_noise
    from ddpm_rt.sampling import open_run
    from ddpm_rt.sources import resolve_source

    ds = load_dataset("digits16")
    images, labels = ds.train[: args.n], ds.train_labels[: args.n]
    src = resolve_source("digits")
    spec = src.spec
    env = environment(args.threads)
    result: dict[str, Any] = {"model": src.label, "n": args.n, "backend": "ort fp32", "environment": env,
                              "sdedit": [], "inpainting": []}
    with open_run(src, "ort", chunk=args.chunk, threads=args.threads) as run:
        def sample(sampler: SamplerSpec, edit: Any) -> tuple[np.ndarray, float, int]:
            plan = run.spec.plan(sampler)
            rng = np.random.default_rng(0)
            x_init = initial_noise(images.shape, rng)
            t0 = time.perf_counter()
            out = run.sample(plan, x_init, rng=rng, edit=edit)
            return out, time.perf_counter() - t0, plan.model_calls

        edit = make_edit(spec.sample_shape, spec.data_range, args.n, images)
        for s in (float(v) for v in args.strengths.split(",")):
            out, secs, calls = sample(SamplerSpec("ddim", 50, start=start_for_strength(50, s)), edit)
            row = {"strength": s, "steps_run": calls, "seconds": round(secs, 2), **_judge(out, labels),
                   "mean_abs_change": float(np.mean(np.abs(out - images)))}
            result["sdedit"].append(row)
            log(f"sdedit {s}: {row}")
            if s in (0.3, 0.6, 1.0):
                result.setdefault("_pictures", {})[f"sdedit {s:g}"] = out[:8]
        mask = np.zeros((1, 16, 16), np.uint8)
        mask[:, :8, :] = 1  # the top half is known
        inpaint = make_edit(spec.sample_shape, spec.data_range, args.n, images, mask)
        for name, sampler in (("plain replacement", SamplerSpec("ddim", 50, eta=1.0)),
                              ("RePaint j5 r5", SamplerSpec("ddim", 50, eta=1.0, repaint=(5, 5)))):
            out, secs, calls = sample(sampler, inpaint)
            known = inpaint.mask.astype(bool)
            row = {"method": name, "model_calls": calls, "seconds": round(secs, 2), **_judge(out, labels),
                   "known_region_max_abs": float(np.max(np.abs(out[known] - images[known])))}
            result["inpainting"].append(row)
            log(f"inpainting {name}: {row}")
            result.setdefault("_pictures", {})[name] = out[:8]
    result["environment"]["loadavg_end"] = __import__("ddpm_rt.machine", fromlist=["x"]).load_average()
    pictures = result.pop("_pictures")
    out_dir = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "editing_quality.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out_dir / "editing_quality.md", _markdown(result))
    strips = {"original": images[:8], "known half": np.where(inpaint.mask[:8].astype(bool), images[:8], -1.0),
              **pictures}
    labelled_strips(strips, out_dir / "editing_quality.png", spec.data_range, label_w=130)
    log(f"wrote {out_dir / 'editing_quality'}.{{json,md,png}}")


def _markdown(r: dict[str, Any]) -> str:
    env = r["environment"]
    lines = [
        "# Editing quality: SDEdit strength and inpainting on the shipped digits model", "",
        f"- model `{r['model']}`, backend {r['backend']}, {r['n']} digits of the training split as inputs, "
        "judged by the project's digits classifier (class = the original's label) and the feature FD to the "
        "held-out split",
        f"- machine: {env['cpu']}, {env['usable_cores']} usable cores; threads {env.get('threads')}; load average "
        f"{env['loadavg_start']} → {env.get('loadavg_end')} (shared machine)",
        f"- versions: onnxruntime {env['onnxruntime']}, numpy {env['numpy']}; date {env['date']}",
        "- command: `python -m benchmarks.editing_quality`", "",
        "## SDEdit (DDIM 50, eta 0; strength s runs the last int(50·s) steps from the noised digit)", "",
        "| strength | steps run | class kept | FD | real-vs-real FD | mean abs change | s |",
        "|---|---|---|---|---|---|---|",
        *[f"| {x['strength']:g} | {x['steps_run']} | {100 * x['class_kept']:.1f}% | {x['fd']:.2f} | "
          f"{x['fd_real_vs_real']:.2f} ± {x['fd_real_vs_real_std']:.2f} | {x['mean_abs_change']:.3f} | {x['seconds']} |"
          for x in r["sdedit"]], "",
        "## Inpainting (top half known; DDIM 50, eta 1)", "",
        "| method | model calls | class agreement (chance 10%) | FD | known region max-abs | s |",
        "|---|---|---|---|---|---|",
        *[f"| {x['method']} | {x['model_calls']} | {100 * x['class_kept']:.1f}% | {x['fd']:.2f} | "
          f"{x['known_region_max_abs']:.1e} | {x['seconds']} |" for x in r["inpainting"]], "",
        "Picture (`editing_quality.png`): rows = the originals, the known half, SDEdit at 0.3 / 0.6 / 1.0, "
        "plain replacement, RePaint.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
