"""Regenerate every committed bench result (benchmarks/results/bench_*), one script after another.

    .venv/bin/python -m benchmarks.bench_all [--threads 1]

The settings are the committed ones: 1 thread for every backend (the machine these ran on
has 2 cores shared with other jobs; see the notes in bench_cifar10.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1")
    args = p.parse_args()
    runs = [
        ["bench_builtin.py", "digits", "--warmup", "2", "--repeat", "5"],
        ["bench_builtin.py", "swissroll", "--warmup", "5", "--repeat", "30"],
        ["bench_cifar10.py", "--warmup", "2", "--repeat", "5", "--sweep", "4,16",
         "--sweep-warmup", "1", "--sweep-repeat", "2", "--pipeline-repeat", "3"],
    ]
    for script, *rest in runs:
        cmd = [sys.executable, str(HERE / script), *rest, "--threads", args.threads]
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
