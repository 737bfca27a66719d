"""Does the cheap quality guard decide as the full one did? Verdicts side by side per model and candidate.

    .venv/bin/python -m benchmarks.guard_agreement [--cifar /work/fixtures/cifar10-brief-cache]

Full (the guard until 2026-12): the model's default sampler and steps, at least 8 samples and 8192
sample values. Cheap (now): the default sampler with at most 20 steps (`quality_guard.GUARD_MAX_STEPS`),
at least 2 samples and 4096 values. Candidates: OpenVINO fp32 / bf16 (this CPU's native precisions),
and for digits and swissroll an int8 bundle calibrated as `ddpm-rt export --precision int8` does and a
deliberately naive one (every conv/matmul quantized, min-max, one short trajectory; its FD is 22-29%
worse, the case the guard exists for). Each cell: rel-RMS of the final sample and the verdict; the
wall time of each guard. Writes benchmarks/results/guard_agreement.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_common import RESULTS, log


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="digits,swissroll,interp-digits,vit-digits")
    p.add_argument("--cifar", type=Path, default=None, help="a diffusers folder of the CIFAR-size U-Net (trained)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    from ddpm_rt.bench.machine import environment
    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.exporter.int8 import Int8Options, quantize_bundle
    from ddpm_rt.fsutil import atomic_write_text
    from ddpm_rt.machine import load_average
    from ddpm_rt.precision import Precision, cpu_capabilities
    from ddpm_rt.prepare import bundle_for
    from ddpm_rt.runtime import quality_guard as qg
    from ddpm_rt.sources import resolve_source

    work = Path(tempfile.mkdtemp(prefix="guard-agreement-"))
    cpu = cpu_capabilities()
    sources = [(m, resolve_source(m)) for m in args.models.split(",")]
    if args.cifar is not None:
        sources.append(("cifar10-brief", resolve_source(str(args.cifar))))
    rows: list[dict[str, Any]] = []
    for name, src in sources:
        bundle = bundle_for(src)
        candidates = [("openvino", p, None) for p in (Precision.FP32, Precision.BF16, Precision.FP16) if cpu.supports(p)]
        if name in ("digits", "swissroll"):
            for label, options in (("int8", Int8Options()), ("int8 naive", Int8Options(
                    method="minmax", keep_float=False, steps=5, trajectories=1, batch=1))):
                out = work / f"{name}-{label.replace(' ', '-')}"
                quantize_bundle(bundle.directory, out, options)
                candidates.append(("ort", label, load_bundle(out)))
        full_steps = bundle.spec.sampler().steps
        full_batch = qg.guard_batch(bundle.spec.sample_shape, values=8192, lo=8)
        for backend, precision, candidate in candidates:
            prec = Precision.INT8 if candidate is not None else precision
            label = f"{backend} {precision if isinstance(precision, str) else precision.value}"
            cell: dict[str, Any] = {"model": name, "candidate": label}
            for kind, steps, batch in (("full", full_steps, full_batch), ("cheap", None, None)):
                t0 = time.perf_counter()
                v = qg.guard(bundle, backend, prec, candidate_bundle=candidate, steps=steps, batch=batch,
                             threads=args.threads, cache_dir=work / "cache")
                cell[kind] = {"ok": v.ok, "rel_rms": v.rel_rms, "steps": v.steps, "batch": v.batch,
                              "judged_by": v.judged_by, "seconds": round(time.perf_counter() - t0, 2)}
            cell["agree"] = cell["full"]["ok"] == cell["cheap"]["ok"]
            rows.append(cell)
            log(json.dumps(cell))
    env = environment(args.threads)
    env["loadavg_end"] = load_average()
    result = {"rows": rows, "environment": env, "all_agree": all(r["agree"] for r in rows)}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "guard_agreement.json", json.dumps(result, indent=2) + "\n")
    lines = ["# Quality guard: the cheap trajectory against the full one", "",
             f"- machine: {env['cpu']}, {env['usable_cores']} usable cores, {args.threads} thread(s); load "
             f"{env['loadavg_start']} → {env['loadavg_end']} (shared)",
             f"- versions: onnxruntime {env['onnxruntime']}, numpy {env['numpy']}; date {env['date']}",
             "- command: `python -m benchmarks.guard_agreement --cifar /work/fixtures/cifar10-brief-cache` "
             "(the CIFAR-size U-Net after 300 brief training steps, as in benchmarks/)",
             "- full: the default sampler and steps, >= 8 samples and 8192 values; cheap: <= 20 steps, >= 2 samples "
             "and 4096 values. Tolerance rel-RMS 0.10 of the final sample.", "",
             f"**Verdicts agree in {sum(r['agree'] for r in rows)} of {len(rows)} cases.**", "",
             "| model | candidate | full: rel-RMS | verdict | s | cheap: rel-RMS | verdict | s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, c = r["full"], r["cheap"]
        lines.append(f"| {r['model']} | {r['candidate']} | {f['rel_rms']:.3g} ({f['steps']} steps, {f['batch']}) | "
                     f"{'pass' if f['ok'] else 'REFUSED'} | {f['seconds']} | {c['rel_rms']:.3g} ({c['steps']} steps, "
                     f"{c['batch']}) | {'pass' if c['ok'] else 'REFUSED'}{' (per call)' if c['judged_by'] == 'per-call' else ''}"
                     f" | {c['seconds']} |")
    atomic_write_text(args.out / "guard_agreement.md", "\n".join(lines) + "\n")
    log(f"wrote {args.out / 'guard_agreement'}.{{json,md}}")


if __name__ == "__main__":
    main()
