"""Start-up cost of the runtime: `ddpm-rt sample BUNDLE --steps 1 --batch 1` on a warm cache, wall time and
peak RSS of the whole process, two installations side by side in one run (interleaved).

    python -m benchmarks.lean_runtime --before "PYTHONPATH=/old/checkout /venv-with-torch/bin/python" \\
        --after "/core-only-venv/bin/python" --bundle ddpm_rt/assets/digits/bundle --runs 10

Each side is a python command; the script runs `<python> -m ddpm_rt.cli sample BUNDLE ...` with a
warm cache (one untimed run first), and reads the child's peak RSS from wait4's rusage.
Writes benchmarks/results/lean_runtime.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_common import RESULTS, log


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed: {proc.stderr.read().decode()[-500:]}")
    return wall, usage.ru_maxrss / 1024


def _side(spec: str) -> tuple[dict[str, str], list[str]]:
    """'VAR=x VAR2=y /path/python' -> (env additions, argv prefix)."""
    env, argv = {}, []
    for part in shlex.split(spec):
        if "=" in part and not argv:
            k, v = part.split("=", 1)
            env[k] = v
        else:
            argv.append(part)
    return env, argv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=None)
    ap.add_argument("--after", default=None)
    ap.add_argument("--side", action="append", default=[], metavar="LABEL::PYTHON",
                    help="an installation to time (repeatable), e.g. 'core install::/venv/bin/python'")
    ap.add_argument("--stem", default="lean_runtime", help="result file name in benchmarks/results")
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--label-before", default="before")
    ap.add_argument("--label-after", default="after")
    args = ap.parse_args()
    from ddpm_rt.machine import cpu_model, load_average

    sides = {label: _side(spec) for label, spec in (s.split("::", 1) for s in args.side)}
    if args.before and args.after:
        sides = {args.label_before: _side(args.before), args.label_after: _side(args.after), **sides}
    if len(sides) < 2:
        raise SystemExit("give at least two installations (--before/--after or --side)")
    results: dict[str, dict[str, list[float]]] = {k: {"wall_s": [], "peak_rss_mb": []} for k in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (extra, prefix) in sides.items():
            env = {**os.environ, **extra, "DDPM_RT_CACHE": str(Path(tmp) / label)}
            source = str(args.bundle.resolve()) if args.bundle.exists() else str(args.bundle)  # or a built-in name
            cmd = [*prefix, "-m", "ddpm_rt.cli", "sample", source, "--steps", "1",
                   "--batch", "1", "--out", str(Path(tmp) / f"{label}.npy")]
            sides[label] = (env, cmd)
            _run(cmd, env)  # warm the caches (ORT's optimized graph, the OS file cache)
        load_before = load_average()
        for r in range(args.runs):
            order = list(sides.items())
            for label, (env, cmd) in order[r % len(order):] + order[: r % len(order)]:  # rotate who goes first
                wall, rss = _run(cmd, env)
                results[label]["wall_s"].append(wall)
                results[label]["peak_rss_mb"].append(rss)
            log(f"run {r + 1}/{args.runs}")
    summary = {k: {m: {"median": float(np.median(v)), "min": float(np.min(v)), "max": float(np.max(v))}
                   for m, v in res.items()} for k, res in results.items()}
    out = {"cpu": cpu_model(), "loadavg_before": load_before, "loadavg_after": load_average(),
           "bundle": str(args.bundle), "runs": args.runs, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
           "commands": {k: shlex.join(c) for k, (_, c) in sides.items()}, "summary": summary, "raw": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.stem}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# Runtime start-up: `ddpm-rt sample BUNDLE --steps 1 --batch 1`, warm cache", "",
             f"CPU: {out['cpu']}; load average before/after: {load_before} / {out['loadavg_after']}; "
             f"{args.runs} interleaved runs each; {out['date']}", "",
             "| installation | wall s (median, min–max) | peak RSS MB (median, min–max) |", "|---|---|---|"]
    for k, m in summary.items():
        w, r = m["wall_s"], m["peak_rss_mb"]
        lines.append(f"| {k} | {w['median']:.2f} ({w['min']:.2f}–{w['max']:.2f}) | "
                     f"{r['median']:.0f} ({r['min']:.0f}–{r['max']:.0f}) |")
    lines += ["", "Commands:", ""] + [f"- {k}: `{c}`" for k, c in out["commands"].items()]
    (RESULTS / f"{args.stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
