"""Classifier-free guidance cost (#18): one call of 2B against two calls of B, and the guided step
against the unguided one, per backend and batch.

    python -m benchmarks.cfg_speed --model cond-digits --batches 1 16 64

For each backend (ORT fp32, OpenVINO at each precision this CPU runs natively) and batch B:
`unguided` is one call of B (conditional sampling at w = 1 runs exactly that), `batched` one call
of 2B, `split` two calls of B — the two ways `sample` can run a guided step; the runtime measures
the same pair (`runtime.cfg_mode`) and keeps the faster. Writes
benchmarks/results/cfg_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_common import RESULTS, log


def _backends(threads: int | None) -> list[tuple[str, Any]]:
    from ddpm_rt.precision import Precision, cpu_capabilities
    from ddpm_rt.registry import available_backends
    from ddpm_rt.runtime.backend import BackendOptions

    out = [("ort", BackendOptions(threads=threads))]
    if "openvino" in available_backends():
        caps = cpu_capabilities()
        for prec in (Precision.FP32, Precision.BF16, Precision.FP16):
            if prec is Precision.FP32 or caps.supports(prec):
                out.append(("openvino", BackendOptions(threads=threads, precision=prec.value)))
    return out


def measure(model: str, batches: list[int], threads: int | None, budget_s: float) -> dict[str, Any]:
    from ddpm_rt.machine import cpu_model
    from ddpm_rt.prepare import bundle_for
    from ddpm_rt.registry import open_backend
    from ddpm_rt.runtime import cfg_mode
    from ddpm_rt.sources.resolve import resolve_source

    source = resolve_source(model)
    if not source.spec.conditioning:
        raise SystemExit(f"{model} is unconditional: CFG needs a conditional model (e.g. cond-digits)")
    bundle = bundle_for(source, None, log)
    rows = []
    for name, options in _backends(threads):
        for batch in batches:
            def opener(b: int, name: str = name, options: Any = options) -> Any:
                return open_backend(name, bundle, b, options)

            timings = cfg_mode.measure(bundle, batch, opener, budget_s=budget_s)
            with opener(batch) as be:
                unguided = cfg_mode.time_guided_step(be, cfg_mode._inputs(bundle, batch), 1, budget_s / 2)
            row = {"backend": name, "precision": options.precision, "batch": batch,
                   "unguided_ms": round(unguided, 3), "batched_ms": round(timings["batched"], 3),
                   "split_ms": round(timings["split"], 3)}
            row["faster"] = "batched" if timings["batched"] <= timings["split"] else "split"
            row["guided_over_unguided"] = round(min(timings.values()) / unguided, 3)
            log(json.dumps(row))
            rows.append(row)
    return {"model": model, "cpu": cpu_model(), "threads": threads, "loadavg": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [f"# CFG speed: one call of 2B vs two calls of B ({result['model']})", "",
             f"CPU: {result['cpu']}; threads {result['threads'] or 'all'}; load average "
             f"{' / '.join(f'{v:.1f}' for v in result['loadavg'])} (2 cores shared with other jobs); "
             f"{result['date']}.", f"Command: `{command}`", "",
             "ms per sampling step (median). `unguided`: one call of B (what w = 1 or an unconditional "
             "model runs); `batched`: one call of 2B (cond + uncond halves concatenated); `split`: two calls "
             "of B. `guided / unguided` = the faster guided mode over the unguided step.", "",
             "| backend | precision | B | unguided | 2B batched | 2 x B split | faster | guided / unguided |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['batch']} | {r['unguided_ms']:.2f} | "
                     f"{r['batched_ms']:.2f} | {r['split_ms']:.2f} | {r['faster']} | {r['guided_over_unguided']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cond-digits")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per (mode, batch)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    from ddpm_rt.fsutil import atomic_write_text

    result = measure(args.model, args.batches, args.threads, args.budget)
    command = "python -m benchmarks.cfg_speed --model {} --batches {}".format(args.model, " ".join(map(str, args.batches)))
    atomic_write_text(args.out / "cfg_speed.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out / "cfg_speed.md", markdown(result, command))
    log(f"wrote {args.out}/cfg_speed.{{json,md}}")


if __name__ == "__main__":
    main()
