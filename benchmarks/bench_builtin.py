"""Bench the built-in models (digits U-Net, swiss-roll MLP): eager torch vs ORT, batch 1/4/16.

    .venv/bin/python -m benchmarks.bench_builtin digits swissroll

Writes benchmarks/results/bench_<name>.{json,md,png}.
"""

from __future__ import annotations

from benchmarks.bench_common import base_args, log, overhead_notes, row, write


def main() -> None:
    p = base_args(__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["digits", "swissroll"])
    p.add_argument("--batch", default="1,4,16")
    args = p.parse_args()

    from ddpm_rt.bench.suites import BenchConfig, run_suite
    from ddpm_rt.commands.options import parse_list
    from ddpm_rt.sources import resolve_source

    for name in args.models:
        src = resolve_source(name)
        plan = src.spec.plan(src.spec.sampler(None))  # the model's default sampler and steps
        config = BenchConfig(backends=("torch", "ort"), batches=parse_list(args.batch, int),
                             warmup=args.warmup, repeat=args.repeat, threads=args.threads)
        result = run_suite(src, plan, config, log=log)
        notes = [
            f"- weights: {'UNTRAINED (random init, fixed once per run; no shipped weights yet)' if src.untrained else 'shipped (trained)'}"
            "; speed does not depend on training, trajectory parity does (an untrained model's "
            "trajectory can amplify fp32 rounding; see the sensitivity line).",
            "- Per-step overhead (tiny models are dominated by it):", *overhead_notes(result),
        ]
        r1 = row(result, "ort", 1)
        if r1:
            notes.append(f"- ORT vs eager at batch 1: {r1['speedup_vs_baseline']:.2f}x end to end, "
                         f"max |diff| of the final samples {r1['max_abs_diff_vs_baseline']:.1e}.")
        notes.append("- Regenerate: `.venv/bin/python -m benchmarks.bench_builtin " + name + "`.")
        write(f"bench_{name}", result, f"ddpm-rt bench: built-in `{name}`", notes, args.out)


if __name__ == "__main__":
    main()
