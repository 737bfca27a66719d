"""The full-loop graph (one ORT `Run` for every step) vs the Python ORT loop vs eager PyTorch.

Same model, same plan, same x_T, same batch, side by side in one process. Each round runs
every contender once in turn (so machine-load swings hit all of them alike), after warm-up;
median, p10/p90 and min of the end-to-end sampling time are reported, with the machine,
versions, thread settings and os.getloadavg() before and after. The three samples are
checked against each other before anything is timed.

    python -m benchmarks.fullloop --model swissroll            # DDIM 40, eta 0
    python -m benchmarks.fullloop --model digits               # DDIM 50
    python -m benchmarks.fullloop --model swissroll --batches 1,64 --rounds 30 --threads 1

Writes benchmarks/results/fullloop_<model>.{json,md} (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
NODE_DIR = Path(__file__).resolve().parent.parent / "examples" / "node"
DEFAULT_STEPS = {"swissroll": 40, "digits": 50}
TARGET = {"swissroll": {"batch": 1, "speedup_vs_eager": 5.0}}  # full-loop graph vs eager torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _stats(times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1e3 for t in times)
    q = statistics.quantiles(ms, n=10) if len(ms) >= 2 else [ms[0]] * 9
    return {"median_ms": statistics.median(ms), "p10_ms": q[0], "p90_ms": q[-1], "min_ms": ms[0],
            "max_ms": ms[-1], "runs": len(ms)}


def prepare(name: str, steps: int, threads: int, workdir: Path) -> dict[str, Any]:
    """Bundle, plan, full-loop graph session and eager module for `name` (once per model)."""
    from dataclasses import replace

    import onnxruntime as ort
    import torch

    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.eager import TorchBackend
    from ddpm_rt.exporter.export import ExportOptions, export_bundle
    from ddpm_rt.exporter.sampler_export import export_sampler_graph, load_denoiser
    from ddpm_rt.sources import resolve_source

    torch.set_num_threads(threads)
    src = resolve_source(name)
    # one module instance for every contender (an untrained built-in draws fresh weights per load)
    module = src.load_module()
    src = replace(src, load_module=lambda: module)
    export_bundle(src, workdir / "bundle", ExportOptions(trajectory_steps=0))
    bundle = load_bundle(workdir / "bundle")
    sampler = bundle.spec.sampler(steps, sampler="ddim", eta=0.0)
    exported = export_sampler_graph(load_denoiser(bundle.onnx_path), bundle.manifest, bundle.spec, sampler,
                                    workdir / f"{name}_loop.onnx", graph="loop")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    graphs = {"fullloop_graph": exported.path}
    sessions, session_s = {}, {}
    for k, path in graphs.items():
        t0 = time.perf_counter()
        sessions[k] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        session_s[k] = time.perf_counter() - t0
    return {
        "src": src, "bundle_src": resolve_source(str(workdir / "bundle")), "plan": bundle.spec.plan(sampler),
        "sampler": sampler, "exported": exported, "sessions": sessions, "session_create_s": session_s,
        "eager": TorchBackend(module, threads),
        "sample_shape": tuple(bundle.spec.sample_shape),
    }


def bench_batch(m: dict[str, Any], batch: int, threads: int, warmup: int, rounds: int,
                workdir: Path) -> dict[str, Any]:
    from ddpm_rt.prepare import open_for
    from ddpm_rt.runtime.backend import BackendOptions

    plan = m["plan"]
    ort_loop = open_for("ort", m["bundle_src"], batch, BackendOptions(threads=threads, cache_dir=str(workdir / "ort")))
    fns: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "eager_torch": lambda x: m["eager"].sample(plan, x),
        "python_ort_loop": lambda x: ort_loop.sample(plan, x),
    }
    for k, sess in m["sessions"].items():
        fns[k] = lambda x, sess=sess: sess.run(["x_0"], {"x_init": x})[0]
    x_init = np.random.default_rng(0).standard_normal((batch, *m["sample_shape"]), dtype=np.float32)
    outs = {k: f(x_init) for k, f in fns.items()}
    agree = {f"{k}_vs_fullloop_max_abs": float(np.max(np.abs(v - outs["fullloop_graph"])))
             for k, v in outs.items() if k != "fullloop_graph"}
    for _ in range(warmup):
        for f in fns.values():
            f(x_init)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():  # interleaved: each round times every contender once
            t0 = time.perf_counter()
            f(x_init)
            times[k].append(time.perf_counter() - t0)
    ort_loop.close()
    node = node_host_timing(m["exported"].path, x_init, outs["fullloop_graph"], threads, rounds, workdir)
    stats = {k: _stats(v) for k, v in times.items()}
    full, eager_ms = stats["fullloop_graph"]["median_ms"], stats["eager_torch"]["median_ms"]
    speedup = {f"fullloop_vs_{k}": stats[k]["median_ms"] / full for k in stats if k != "fullloop_graph"}
    speedup |= {f"{k}_vs_eager_torch": eager_ms / stats[k]["median_ms"] for k in stats if k != "eager_torch"}
    return {"batch": batch, "agreement": agree, "timings": stats, "speedup_median": speedup, "node_host": node}


def node_host_timing(model: Path, x_init: np.ndarray, expected: np.ndarray, threads: int, repeat: int,
                     workdir: Path) -> dict[str, Any] | None:
    """The same full-loop graph run by examples/node/sample.mjs (onnxruntime-node), in its own process.

    Not interleaved with the rounds above (a separate process, right after them); None when
    node or examples/node/node_modules is missing.
    """
    import shutil
    import subprocess

    host = NODE_DIR / "sample.mjs"
    if shutil.which("node") is None or not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir():
        return None
    np.save(workdir / "x_init.npy", x_init)
    proc = subprocess.run(
        ["node", str(host), "--model", str(model), "--x-init", str(workdir / "x_init.npy"),
         "--out", str(workdir / "node_out.npy"), "--threads", str(threads), "--repeat", str(repeat)],
        capture_output=True, text=True, timeout=1800,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()}
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"median_ms": summary["run_ms"], "min_ms": summary["run_ms_min"], "runs": summary["repeat"],
            "onnxruntime_node": summary["ort"],
            "vs_python_fullloop_max_abs": float(np.max(np.abs(np.load(workdir / "node_out.npy") - expected)))}


def to_markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"# Full-loop graph vs Python ORT loop vs eager PyTorch — {res['model']}",
        "",
        f"{res['plan']}, threads {res['threads']} (torch and ORT intra-op), warm-up {res['warmup']}, "
        f"{res['rounds']} interleaved rounds ({res['rounds_large']} at batch >= 16); {res['date']}.",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs (shared), {m['platform']}; "
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, onnx {m['onnx']}, numpy {m['numpy']}.",
        f"Load average (1/5/15 min) before {res['loadavg_before']}, after {res['loadavg_after']}.",
        f"Weights: {'UNTRAINED (no shipped weights at the time of the run)' if res['untrained'] else 'shipped'}.",
        "",
        "| batch | contender | median ms | p10–p90 ms | min ms | speed-up vs eager (median) "
        "| full-loop graph's speed-up over it |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["results"]:
        for k, s in r["timings"].items():
            sp = "—" if k == "fullloop_graph" else f"{r['speedup_median'][f'fullloop_vs_{k}']:.2f}×"
            ve = "1.00×" if k == "eager_torch" else f"{r['speedup_median'][f'{k}_vs_eager_torch']:.2f}×"
            lines.append(f"| {r['batch']} | {k} | {s['median_ms']:.3f} | {s['p10_ms']:.3f}–{s['p90_ms']:.3f} "
                         f"| {s['min_ms']:.3f} | {ve} | {sp} |")
    node_rows = [(r["batch"], r["node_host"]) for r in res["results"] if r.get("node_host")]
    if node_rows:
        lines += ["", "The same full-loop graph from Node.js (examples/node/sample.mjs, onnxruntime-node, same "
                  "threads), run in its own process right after the rounds above (not interleaved):", ""]
        for b, nd in node_rows:
            if "error" in nd:
                lines.append(f"- batch {b}: failed: {nd['error']}")
            else:
                lines.append(f"- batch {b}: median {nd['median_ms']:.3f} ms, min {nd['min_ms']:.3f} ms over "
                             f"{nd['runs']} runs (onnxruntime-node {nd['onnxruntime_node']}); max abs vs the "
                             f"Python full-loop run {nd['vs_python_fullloop_max_abs']:.2e}")
    lines += ["", "Agreement of the samples (max abs difference vs the full-loop graph):", ""]
    for r in res["results"]:
        lines.append(f"- batch {r['batch']}: " + ", ".join(f"{k} {v:.2e}" for k, v in r["agreement"].items()))
    lines.append(f"- export-sampler check (vs the Python loop, same kernels): {res['export_check_max_abs_diff']:.2e}")
    if res.get("target"):
        t = res["target"]
        lines += ["", f"Target: full-loop graph ≥ {t['speedup_vs_eager']}× faster than eager PyTorch at batch "
                  f"{t['batch']}: measured {t['measured']:.2f}× — {'met' if t['met'] else 'NOT met'}."]
    lines += ["", "Session creation (s): " + ", ".join(f"{k} {v:.2f}" for k, v in res["session_create_s"].items()),
              "", f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(DEFAULT_STEPS), required=True)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and ORT")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--rounds-large", type=int, default=None,
                   help="rounds for batches >= 16 (default: --rounds); eager digits at batch 64 takes seconds")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    from ddpm_rt.fsutil import atomic_write_text

    steps = args.steps or DEFAULT_STEPS[args.model]
    batches = [int(b) for b in args.batches.split(",")]
    load_before = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="ddpm_rt_fullloop_") as tmp:
        m = prepare(args.model, steps, args.threads, Path(tmp))
        results = []
        for b in batches:
            print(f"{args.model}: batch {b} ...", file=sys.stderr, flush=True)
            rounds = args.rounds if b < 16 or args.rounds_large is None else args.rounds_large
            results.append(bench_batch(m, b, args.threads, args.warmup, rounds, Path(tmp)))
    res: dict[str, Any] = {
        "model": args.model,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.fullloop " + " ".join(argv if argv is not None else sys.argv[1:]),
        "plan": f"DDIM {steps} steps, eta 0",
        "threads": args.threads, "warmup": args.warmup, "rounds": args.rounds,
        "rounds_large": args.rounds_large or args.rounds,
        "source": m["src"].name, "untrained": m["src"].untrained,
        "export_check_max_abs_diff": m["exported"].max_abs_diff,
        "session_create_s": {k: round(v, 3) for k, v in m["session_create_s"].items()},
        "loadavg_before": load_before, "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "machine": machine(),
        "results": results,
    }
    if args.model in TARGET:
        t = TARGET[args.model]
        r = next((r for r in results if r["batch"] == t["batch"]), None)
        if r is not None:
            measured = r["speedup_median"]["fullloop_vs_eager_torch"]
            res["target"] = {**t, "measured": measured, "met": measured >= t["speedup_vs_eager"]}
    out = args.out_dir / f"fullloop_{args.model}"
    atomic_write_text(out.with_suffix(".json"), json.dumps(res, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), to_markdown(res))
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
