"""Time to quality of the samplers on the built-in models: sampler × steps, scored and timed.

    .venv/bin/python benchmarks/solver_quality.py digits swissroll --n 1000 --threads 1
    .venv/bin/python benchmarks/solver_quality.py digits --spacing trailing

Writes benchmarks/results/solver_quality_<model>[_<spacing>].{json,md,png} (see
ddpm_rt/bench/quality_sweep.py for what is measured and how a sampler "reaches" DDIM-50).
"""

from __future__ import annotations

import argparse
import json

from bench_common import RESULTS, log


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["digits", "swissroll"])
    p.add_argument("--n", type=int, default=1000, help="samples per cell")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spacing", default=None, help="timestep spacing for every sampler (default: the model's)")
    p.add_argument("--steps", default="5,8,10,15,20,30,50")
    p.add_argument("--samplers", default="ddim,dpmpp-2m,dpmpp-3m,unipc,ipndm")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--retime", type=int, default=3, help="interleaved timing rounds after the sweep (0: none)")
    p.add_argument("--retime-json", default=None, help="only re-time an existing result JSON, then rewrite it")
    args = p.parse_args()

    from pathlib import Path

    from ddpm_rt.bench.quality_sweep import SweepConfig, plot, quality_sweep, retime, to_markdown
    from ddpm_rt.fsutil import atomic_write_text

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save(result: dict, stem: str) -> None:
        atomic_write_text(out / f"{stem}.json", json.dumps(result, indent=2, default=str) + "\n")
        atomic_write_text(out / f"{stem}.md", to_markdown(result) + f"\nCommand: `{result['command']}`\n")
        plot(result, out / f"{stem}.png")
        log(f"wrote {out / stem}.{{json,md,png}}")

    if args.retime_json:
        path = Path(args.retime_json)
        result = retime(json.loads(path.read_text()), rounds=args.retime, log=log)
        result["command"] += f"; then --retime-json {path.name} --retime {args.retime}"
        save(result, path.stem)
        return
    config = SweepConfig(samplers=tuple(args.samplers.split(",")), steps=tuple(int(s) for s in args.steps.split(",")),
                         n=args.n, batch=args.batch, seed=args.seed, threads=args.threads, spacing=args.spacing)
    for model in args.models:
        result = quality_sweep(model, config, log=log)
        if args.retime:
            retime(result, rounds=args.retime, log=log)
        result["command"] = (f"python benchmarks/solver_quality.py {model} --n {args.n} --threads {args.threads} "
                             f"--steps {args.steps} --samplers {args.samplers} --retime {args.retime}"
                             + (f" --spacing {args.spacing}" if args.spacing else ""))
        save(result, f"solver_quality_{model}" + (f"_{args.spacing}" if args.spacing else ""))


if __name__ == "__main__":
    main()
