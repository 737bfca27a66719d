"""Regenerate the committed `ddpm-rt bench` results, one command after another (the CLI does the work).

    .venv/bin/python -m benchmarks.bench_all [--threads 1] [--only bench|quality|cifar10]

The settings are the committed ones: 1 thread for every backend (the machines these ran on
have 2 cores shared with other jobs; each result page names its CPU and the load).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _outputs(stem: str) -> list[str]:
    return ["--json-file", str(RESULTS / f"{stem}.json"), "--markdown", str(RESULTS / f"{stem}.md"),
            "--plot", str(RESULTS / f"{stem}.png")]


def runs(threads: str) -> dict[str, list[list[str]]]:
    cli = [sys.executable, "-m", "ddpm_rt.cli", "bench"]
    bench = [[*cli, model, "--backends", "torch,ort", "--warmup", warmup, "--repeat", repeat, "--threads", threads,
              *_outputs(f"bench_{model}")] for model, warmup, repeat in (("digits", "2", "5"), ("swissroll", "5", "30"))]
    quality = [[*cli, model, "--quality", "--n", "1000", "--threads", threads, *(["--spacing", spacing] if spacing else []),
                *_outputs(f"solver_quality_{model}" + (f"_{spacing}" if spacing else ""))]
               for model in ("digits", "swissroll") for spacing in (None, "trailing")]
    cifar = [[sys.executable, "-m", "benchmarks.bench_cifar10", "--warmup", "2", "--repeat", "5", "--sweep", "4,16",
              "--sweep-warmup", "1", "--sweep-repeat", "2", "--pipeline-repeat", "3", "--threads", threads]]
    return {"bench": bench, "quality": quality, "cifar10": cifar}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1")
    p.add_argument("--only", choices=("bench", "quality", "cifar10"), default=None)
    args = p.parse_args()
    for group, commands in runs(args.threads).items():
        if args.only not in (None, group):
            continue
        for cmd in commands:
            print("+", " ".join(cmd), file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
