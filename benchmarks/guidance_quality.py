"""Quality against the guidance scale on the shipped conditional model (#18): classifier-free
guidance swept over w, classifier guidance (the bundle's noisy-digits classifier) swept over s
beside it, judged by the project's digits classifier.

    python -m benchmarks.guidance_quality [--n 1000] [--scales 0,0.5,1,1.5,2,3,4,6] [--classifier-scales 0,1,2,4,8]

Labels: sample i asks for class i mod 10 (n/10 per class). Reported per setting: the share of
samples the digits classifier puts in the class asked for, the feature FD to the held-out split
(real-vs-real reference beside it), mean confidence, wall time. w = 0 is the model sampled
unconditionally (its null label), the FD reference for "as good as the unconditional model".
Classifier guidance runs at w = 1 (the plain conditional model) plus the classifier's gradient
(and at w = 0: the unconditional model steered by the classifier alone).

Writes benchmarks/results/guidance_quality.{json,md,png}.
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
    return {"class_match": float(np.mean(probs.argmax(1) == labels)), "fd": report["fd"],
            "fd_real_vs_real": report["fd_real_vs_real"], "fd_real_vs_real_std": report["fd_real_vs_real_std"],
            "mean_confidence": float(np.mean(probs.max(1)))}


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cond-digits")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=25, help="steps of the model's default sampler")
    p.add_argument("--scales", default="0,0.5,1,1.5,2,3,4,6")
    p.add_argument("--classifier-scales", default="0,1,2,4,8",
                   help="classifier guidance scales at w = 1 (skipped when the bundle has no classifier)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk", type=int, default=250)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    from ddpm_rt.bench.machine import environment
    from ddpm_rt.fsutil import atomic_write_text
    from ddpm_rt.machine import load_average
    from ddpm_rt.prepare import bundle_for
    from ddpm_rt.runtime.loop import initial_noise
    from ddpm_rt.sampling import open_run
    from ddpm_rt.sources import resolve_source

    src = resolve_source(args.model)
    spec = src.spec
    if not spec.conditioning:
        raise SystemExit(f"{args.model} is unconditional")
    labels = np.arange(args.n, dtype=np.int64) % 10
    cond = {spec.conditioning[0].name: labels}
    sampler = spec.sampler(args.steps)
    has_classifier = bool(bundle_for(src).manifest.get("classifier"))
    result: dict[str, Any] = {
        "model": src.label, "n": args.n, "sampler": f"{sampler.sampler} {args.steps} steps",
        "default_guidance": spec.default_guidance, "backend": "ort fp32",
        "environment": environment(args.threads), "cfg": [], "classifier": []}
    pictures: dict[str, np.ndarray] = {}

    def run(w: float, s: float = 0.0) -> tuple[np.ndarray, float]:
        with open_run(src, "ort", chunk=args.chunk, batch=args.n, threads=args.threads, cond=cond,
                      guidance_scale=w, classifier_scale=s, guidance_mode="batched") as r:
            plan = r.spec.plan(sampler)  # the run's spec, as `sample` does (classifier guidance turns the x0 clip off)
            rng = np.random.default_rng(0)
            x_init = initial_noise((args.n, *spec.sample_shape), rng)
            t0 = time.perf_counter()
            out = r.sample(plan, x_init, rng=rng)
            return out, time.perf_counter() - t0

    for w in _floats(args.scales):
        out, secs = run(w)
        row = {"guidance_scale": w, "seconds": round(secs, 2), **_judge(out, labels)}
        result["cfg"].append(row)
        log(f"cfg w={w:g}: {row}")
        pictures[f"CFG w={w:g}"] = out[:20]
    if has_classifier:
        for base_w in (1.0, 0.0):
            for s in _floats(args.classifier_scales):
                if s == 0:
                    continue  # the CFG rows at w = 1 and w = 0 are the s = 0 points
                out, secs = run(base_w, s)
                row = {"guidance_scale": base_w, "classifier_scale": s, "seconds": round(secs, 2),
                       **_judge(out, labels)}
                result["classifier"].append(row)
                log(f"classifier w={base_w:g} s={s:g}: {row}")
                if base_w == 1.0 and s in (2.0, 8.0):
                    pictures[f"w=1 + classifier s={s:g}"] = out[:20]
    else:
        log("the bundle carries no classifier graph: classifier guidance skipped")
    result["environment"]["loadavg_end"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "guidance_quality.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out / "guidance_quality.md", _markdown(result))
    _plot(result, args.out / "guidance_quality.png")
    labelled_strips(pictures, args.out / "guidance_quality_samples.png", spec.data_range)
    log(f"wrote {args.out / 'guidance_quality'}.{{json,md,png}}")


def _markdown(r: dict[str, Any]) -> str:
    env = r["environment"]
    ref = r["cfg"][0]
    lines = [
        f"# Guidance quality on `{r['model']}`", "",
        f"- {r['n']} samples per setting, sample i asks for class i mod 10; {r['sampler']}, backend {r['backend']}; "
        f"the model's default CFG scale: {r['default_guidance']}",
        "- judge: the project's digits classifier (share classified as the class asked for) and the feature "
        "FD to the held-out split; real-vs-real FD: the same number of real digits scored the same way",
        f"- machine: {env['cpu']}, {env['usable_cores']} usable cores, threads {env.get('threads')}; load average "
        f"{env['loadavg_start']} → {env.get('loadavg_end')} (shared machine); date {env['date']}",
        "- command: `python -m benchmarks.guidance_quality`", "",
        "## Classifier-free guidance", "",
        "| w | class asked for | FD | real-vs-real FD | mean confidence | s |", "|---|---|---|---|---|---|",
        *[f"| {x['guidance_scale']:g} | {100 * x['class_match']:.1f}% | {x['fd']:.2f} | "
          f"{x['fd_real_vs_real']:.2f} ± {x['fd_real_vs_real_std']:.2f} | {x['mean_confidence']:.3f} | {x['seconds']} |"
          for x in r["cfg"]], "",
        f"w = 0 is the unconditional model (FD {ref['fd']:.2f}); chance for the class column is 10%.", ""]
    if r["classifier"]:
        lines += ["## Classifier guidance (the bundle's noise-aware classifier)", "",
                  "Run as `sample` runs it: the guided x̂0 is not clipped (see classifier_guidance_x0clip.md).", "",
                  "| w (CFG) | s (classifier) | class asked for | FD | mean confidence | s |", "|---|---|---|---|---|---|",
                  *[f"| {x['guidance_scale']:g} | {x['classifier_scale']:g} | {100 * x['class_match']:.1f}% | "
                    f"{x['fd']:.2f} | {x['mean_confidence']:.3f} | {x['seconds']} |" for x in r["classifier"]], ""]
    else:
        lines += ["Classifier guidance: the bundle carries no classifier graph; not measured.", ""]
    return "\n".join(lines)


def _plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    w = [x["guidance_scale"] for x in r["cfg"]]
    a1.plot(w, [100 * x["class_match"] for x in r["cfg"]], "o-", label="CFG (scale w)")
    a2.plot(w, [x["fd"] for x in r["cfg"]], "o-", label="CFG (scale w)")
    for base in (1.0, 0.0):
        rows = [x for x in r["classifier"] if x["guidance_scale"] == base]
        if rows:
            s = [x["classifier_scale"] for x in rows]
            a1.plot(s, [100 * x["class_match"] for x in rows], "s--", label=f"classifier (scale s), w={base:g}")
            a2.plot(s, [x["fd"] for x in rows], "s--", label=f"classifier (scale s), w={base:g}")
    rr, sd = r["cfg"][0]["fd_real_vs_real"], r["cfg"][0]["fd_real_vs_real_std"]
    a2.axhspan(rr - sd, rr + sd, color="grey", alpha=0.3, label="real vs real ± std")
    a1.axhline(95, color="grey", ls=":", label="95% target")
    a1.set(xlabel="guidance scale", ylabel="% classified as asked", title="class match")
    a2.set(xlabel="guidance scale", ylabel="feature FD to held-out", title="FD (lower is better)")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    fig.suptitle(f"{r['model']}: {r['n']} samples per point, {r['sampler']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
