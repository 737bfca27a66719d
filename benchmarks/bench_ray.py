"""Sharded sampling throughput: in-process vs 1 and 2 Ray workers (1 thread each), and Ray's cost per shard.

    .venv/bin/python benchmarks/bench_ray.py [--num 512 --shard-size 64 --micro-batch 16 --steps 50]

Every run writes the same shard directory layout through `ddpm_rt.shards.run_shards` and must
produce the same bytes (checked). Throughput excludes opening the backend(s) (`startup_s`).
Ray's overhead per shard is measured two ways:

* pipelined: wall time per shard through one Ray worker (2 shards in flight) minus the
  in-process wall time per shard: what Ray costs a run on this machine (task dispatch,
  result transfer, the raylet's and driver's CPU time taken from the worker's cores);
* round trip: an actor method that only returns an array of one shard's size, one call at
  a time (median of 50): the fixed latency of one shard, when nothing hides it.

Results: benchmarks/results/bench_ray.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_rt.bench.machine import environment
from ddpm_rt.fsutil import atomic_write_text
from ddpm_rt.machine import load_average
from ddpm_rt.shards import LocalExecutor, ShardStore, iter_shards, prepare_job, run_shards
from ddpm_rt.shards.ray_executor import RayExecutor, import_ray

RESULTS = Path(__file__).resolve().parent / "results"


def _run(job, out: Path, executor) -> dict[str, Any]:
    summary = run_shards(job, out, executor)
    manifest = ShardStore(out).load_manifest()
    assert manifest is not None
    shard_s = [r.seconds for r in manifest.shards.values()]
    shard_cpu = [r.cpu_seconds for r in manifest.shards.values()]
    busy = summary.seconds - summary.stats.startup_s
    return {
        "executor": executor.name,
        "workers": summary.stats.workers,
        "startup_s": round(summary.stats.startup_s, 3),
        "run_s": round(busy, 3),
        "samples_per_s": round(summary.samples_per_s, 2),
        "wall_per_shard_s": round(busy / len(summary.computed), 4),
        "shard_compute_median_s": round(statistics.median(shard_s), 4),
        "shard_cpu_median_s": round(statistics.median(shard_cpu), 4),
        "loadavg_after": load_average(),
    }


def cpu_details() -> dict[str, Any]:
    """Family / model / the matrix and vector flags that decide CPU inference speed."""
    info: dict[str, Any] = {}
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key in ("cpu family", "model") and key not in info:
                info[key] = value
            elif key == "flags" and "flags" not in info:
                info["flags"] = [f for f in wanted if f in value.split()]
    except OSError:
        pass
    return info


def _round_trip(ray: Any, shape: tuple[int, ...], calls: int = 50) -> float:
    """Median seconds of one no-op shard through an actor: dispatch + a shard-sized result back."""

    class Echo:
        def shard(self, n: int) -> np.ndarray:
            return np.zeros((n, *shape[1:]), dtype=np.float32)

    actor = ray.remote(num_cpus=1)(Echo).remote()
    ray.get(actor.shard.remote(shape[0]))  # warm: process up, function exported
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        ray.get(actor.shard.remote(shape[0]))
        times.append(time.perf_counter() - t0)
    ray.kill(actor)
    return statistics.median(times)


def _per_sample_s(source: str, steps: int | None, micro_batch: int, samples: int = 256) -> float:
    """In-process seconds per sample of another model (to size its shards), best of 3."""
    job = prepare_job(source, num=samples, shard_size=samples, micro_batch=micro_batch, steps=steps, threads=1)
    best = float("inf")
    for _ in range(3):
        with tempfile.TemporaryDirectory() as tmp:
            best = min(best, _run(job, Path(tmp) / "out", LocalExecutor())["run_s"] / samples)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="digits")
    p.add_argument("--num", type=int, default=256)
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeat", type=int, default=2, help="rounds of (in-process, 1 worker, 2 workers), interleaved")
    p.add_argument("--also", default="swissroll", help="comma-separated models whose per-sample cost sizes shards too")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    ray = import_ray()

    job = prepare_job(args.source, num=args.num, shard_size=args.shard_size, micro_batch=args.micro_batch,
                      steps=args.steps, threads=1)
    env = {**environment(threads=1), "cpu_details": cpu_details(), "ray": ray.__version__}
    rows: list[dict[str, Any]] = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            reference = None
            for rnd in range(args.repeat):  # interleaved, so drifting load hits every executor alike
                for name, executor in (("local", LocalExecutor()), ("ray1", RayExecutor(workers=1)),
                                       ("ray2", RayExecutor(workers=2))):
                    out = Path(tmp) / f"{name}-{rnd}"
                    rows.append({"round": rnd, **_run(job, out, executor)})
                    got = np.concatenate(list(iter_shards(out))).tobytes()
                    reference = reference or got
                    assert got == reference, f"{name} round {rnd}: bytes differ"
        round_trip = _round_trip(ray, (args.shard_size, *job.sample_shape))
    finally:
        ray.shutdown()

    def median(executor: str, workers: int, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["executor"] == executor and r["workers"] == workers)

    local_shard = median("local", 1, "wall_per_shard_s")
    per_sample = {args.source: local_shard / args.shard_size}
    for other in filter(None, args.also.split(",")):
        per_sample[other] = _per_sample_s(other, None, args.micro_batch)
    pipelined = median("ray", 1, "wall_per_shard_s") - local_shard
    overhead = {
        "pipelined_s_per_shard": round(pipelined, 4),
        "round_trip_s_per_shard": round(round_trip, 5),
        "in_process_s_per_sample": {k: round(v, 7) for k, v in per_sample.items()},
        # shard size K with (round-trip overhead) / (K · per-sample time) <= 2%
        "shard_size_for_2pct": {k: int(np.ceil(round_trip / (0.02 * v))) for k, v in per_sample.items()},
    }
    summary = {f"{e}-{w}": {"samples_per_s": round(median(e, w, "samples_per_s"), 2),
                            "wall_per_shard_s": round(median(e, w, "wall_per_shard_s"), 4)}
               for e, w in (("local", 1), ("ray", 1), ("ray", 2))}
    result = {
        "config": {"source": args.source, "bundle_onnx_sha256": job.source_key, "num": args.num,
                   "shard_size": args.shard_size, "micro_batch": args.micro_batch,
                   "sampler": job.plan.sampler.sampler, "steps": job.plan.steps, "threads_per_worker": 1,
                   "backend": job.backend, "ray_num_cpus": 2, "in_flight_per_worker": 2,
                   "repeat": args.repeat},
        "environment": {**env, "loadavg_end": load_average()},
        "median": summary,
        "results": rows,
        "ray_overhead": overhead,
        "bytes_identical": True,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "bench_ray.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out / "bench_ray.md", markdown(result))
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    c, e, o = r["config"], r["environment"], r["ray_overhead"]
    d = e["cpu_details"]
    lines = [
        "# Sharded sampling: in-process vs Ray workers",
        "",
        f"{c['source']} ({c['sampler']} {c['steps']} steps, backend {c['backend']}), {c['num']} samples in "
        f"shards of {c['shard_size']}, micro-batch {c['micro_batch']}, {c['threads_per_worker']} thread per "
        f"worker; local Ray instance `ray.init(num_cpus={c['ray_num_cpus']})`, "
        f"{c['in_flight_per_worker']} shards in flight per worker; {c['repeat']} interleaved rounds, "
        f"medians below. Output bytes identical in every run: {r['bytes_identical']}.",
        "",
        f"Machine: {e['cpu']} (family {d.get('cpu family')} model {d.get('model')}; flags "
        f"{', '.join(d.get('flags', [])) or 'n/a'}), {e['usable_cores']} usable cores; Ray {e['ray']}, "
        f"onnxruntime {e['onnxruntime']}, numpy {e['numpy']}; {e['date']}. Load average at start "
        f"{e['loadavg_start']}, at end {e['loadavg_end']}: other jobs shared these 2 cores, so "
        "absolute rates are low and noisy.",
        "",
        "| executor | workers | samples/s (median) | wall s / shard (median) |",
        "|---|---|---|---|",
    ]
    for key, m in r["median"].items():
        executor, workers = key.rsplit("-", 1)
        lines.append(f"| {executor} | {workers} | {m['samples_per_s']} | {m['wall_per_shard_s']} |")
    lines += [
        "",
        "Every run (startup = opening the backend(s), excluded from samples/s; a shard's worker CPU "
        "time is what it costs whatever else runs on the machine, its wall time is not):",
        "",
        "| round | executor | workers | startup s | run s | samples/s | shard wall s (median) | "
        "shard worker CPU s (median) | load after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["results"]:
        lines.append(f"| {row['round']} | {row['executor']} | {row['workers']} | {row['startup_s']} | "
                     f"{row['run_s']} | {row['samples_per_s']} | {row['shard_compute_median_s']} | "
                     f"{row['shard_cpu_median_s']} | {row['loadavg_after']} |")
    lines += [
        "",
        "Ray overhead per shard:",
        "",
        f"- round trip of a no-op shard of {c['shard_size']} samples, one call at a time (median of 50): "
        f"**{o['round_trip_s_per_shard'] * 1e3:.2f} ms**",
        f"- pipelined (1 worker wall / shard minus in-process wall / shard, medians): "
        f"{o['pipelined_s_per_shard']} s",
        "",
        "| model | in-process ms / sample | shard size for < 2% overhead |",
        "|---|---|---|",
    ]
    for model, per in o["in_process_s_per_sample"].items():
        lines.append(f"| {model} | {per * 1e3:.3f} | >= {o['shard_size_for_2pct'][model]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
