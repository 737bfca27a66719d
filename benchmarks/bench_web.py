"""Sampling in the browser (examples/web, onnxruntime-web) vs Python ONNX Runtime, same graphs, same inputs.

The shipped digits model, batch 16, DPM-Solver++(2M) 15 steps (not the page's default UniPC,
which onnxruntime-web's WebGPU gets wrong, see examples/web/README.md): the step graph and the
full-loop graph, run by

* headless Chromium (the page served by `ddpm-rt web`'s server, driven through its own
  `ddpmRt.run`): WASM with 1 thread, WASM with threads (the page is cross-origin isolated),
  and WebGPU where the browser has an adapter (here SwiftShader, WebGPU emulated on the CPU);
* Python ONNX Runtime (`run_fused` over an InferenceSession on the very same graph bytes) at
  1 thread and at the WASM thread count.

Every contender gets the same x_T (and noise) and is checked against the Python loop
(`sample_loop` over ORT on the plain denoiser) before it is timed. Warm-up, then interleaved
rounds (each round runs every contender once, so load swings hit all alike); median and
spread of the whole sampling call (session creation excluded), per step and per sample.
WebGPU on SwiftShader takes seconds per step, so it runs after the rounds, once
(`--webgpu-runs`), and its per-step figure is the median over that run's steps.

    python -m benchmarks.bench_web                          # writes benchmarks/results/web_digits.{json,md}
    python -m benchmarks.bench_web --rounds 3 --no-webgpu --screenshot ''   # quick look

Also takes the README's screenshot (docs/img/web_page.png): the page after a run of the
shipped digits model from its own controls.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SCREENSHOT = ROOT / "docs" / "img" / "web_page.png"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _stats(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    q = statistics.quantiles(s, n=10) if len(s) >= 2 else [s[0]] * 9
    return {"median_ms": statistics.median(s), "p10_ms": q[0], "p90_ms": q[-1], "min_ms": s[0], "runs": len(s)}


def _python_runner(graph_path: Path, kind: str, plan: Any, threads: int):
    import onnxruntime as ort

    from ddpm_rt.exporter.sampler_export import run_fused

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(graph_path), opts, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        out = run_fused(sess, kind, plan, x, z)
        return out, (time.perf_counter() - t0) * 1e3

    return run


def _browser_runner(browser: Any, options: dict[str, Any]):
    from ddpm_rt.web.drive import run_page

    def run(x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, float, list[float]]:
        out = run_page(browser, options, x, z if options["graph"] == "step" else None)
        if "error" in out:
            raise RuntimeError(f"{options}: {out['error']}")
        return out["array"], float(out["totalMs"]), [float(v) for v in out["stepMs"]]

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    # dpmpp-2m, not the page's default unipc: onnxruntime-web 1.30.0's WebGPU gets graphs with a
    # history of 2+ outputs wrong (examples/web/app.js), and every contender runs the same graph
    p.add_argument("--sampler", default="dpmpp-2m")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--threads", type=int, default=2, help="WASM threads (and Python ORT's second thread count)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--webgpu-runs", type=int, default=1)
    p.add_argument("--no-webgpu", action="store_true")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--screenshot", default=str(SCREENSHOT), help="PNG path ('' to skip)")
    args = p.parse_args(argv)

    from ddpm_rt.bench.machine import environment, load_average
    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.exporter.sampler_export import reference_loop
    from ddpm_rt.fsutil import atomic_write_text
    from ddpm_rt.models.catalog import shipped_bundle
    from ddpm_rt.web.chromium import Chromium
    from ddpm_rt.web.drive import click_sample, open_page
    from ddpm_rt.web.graphs import GraphRequest, GraphStore, WebModel
    from ddpm_rt.web.page import ensure_page
    from ddpm_rt.web.server import make_server, serve_in_thread

    env = environment(args.threads)
    bundle = load_bundle(shipped_bundle("digits"))
    spec = bundle.spec
    plan = spec.plan(spec.sampler(args.steps, sampler=args.sampler))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, *spec.sample_shape), dtype=np.float32)
    z = rng.standard_normal((args.steps, args.batch, *spec.sample_shape), dtype=np.float32)
    ref = reference_loop(str(bundle.onnx_path), plan, x, z)

    with tempfile.TemporaryDirectory(prefix="ddpm_rt_bench_web_") as tmp:
        store = GraphStore([WebModel("digits", bundle, "builtin:digits")], cache_dir=Path(tmp), log=log)
        page = ensure_page(log=log)
        server = make_server(store, page, port=0)
        serve_in_thread(server)
        graphs = {kind: store.graph(GraphRequest("digits", args.sampler, args.steps, kind))[0]
                  for kind in ("step", "loop")}
        with Chromium(webgpu=not args.no_webgpu) as browser:
            browser_version = browser.send("Browser.getVersion")["product"]
            open_page(browser, server.url)
            page_env = browser.evaluate("window.ddpmRt.env")
            runners: dict[str, Any] = {}
            for kind in ("step", "loop"):
                for t in (1, args.threads):
                    runners[f"browser wasm {t} thread{'s' * (t > 1)}, {kind} graph"] = (
                        kind, t, _browser_runner(browser, {"model": "digits", "sampler": args.sampler,
                                                           "steps": args.steps, "graph": kind,
                                                           "batch": args.batch, "ep": "wasm", "threads": t}))
                    runners[f"python ort {t} thread{'s' * (t > 1)}, {kind} graph"] = (
                        kind, t, _python_runner(graphs[kind], kind, plan, t))
            agreement: dict[str, float] = {}
            for name, (_, _, run) in runners.items():  # check, then warm up
                out = run(x, z)[0]
                agreement[name] = float(np.max(np.abs(out - ref)))
                for _ in range(args.warmup - 1):
                    run(x, z)
                log(f"{name}: max |x - Python loop| {agreement[name]:.2e}")
            times: dict[str, list[float]] = {k: [] for k in runners}
            steps_ms: dict[str, list[float]] = {k: [] for k in runners}
            for r in range(args.rounds):
                for name, (_, _, run) in runners.items():
                    res = run(x, z)
                    times[name].append(res[1])
                    if len(res) > 2 and runners[name][0] == "step":
                        steps_ms[name] += res[2]
                log(f"round {r + 1}/{args.rounds} done")
            webgpu: dict[str, Any] = {"adapter": page_env.get("webgpu")}
            if not args.no_webgpu and page_env.get("webgpu"):
                run = _browser_runner(browser, {"model": "digits", "sampler": args.sampler, "steps": args.steps,
                                                "graph": "step", "batch": args.batch, "ep": "webgpu"})
                totals, per_step = [], []
                for i in range(args.webgpu_runs):
                    log(f"webgpu run {i + 1}/{args.webgpu_runs} (seconds per step on SwiftShader) ...")
                    out, total, st = run(x, z)
                    totals.append(total)
                    per_step += st
                    webgpu["max_abs_vs_python_loop"] = float(np.max(np.abs(out - ref)))
                webgpu |= {"total": _stats(totals), "per_step": _stats(per_step)}
            shot = None
            if args.screenshot:
                open_page(browser, server.url)
                out = click_sample(browser, model="digits", ep="auto", threads=args.threads, seed=0)
                if "error" in out:
                    raise RuntimeError(out["error"])
                shot = browser.screenshot(Path(args.screenshot))
                log(f"wrote {shot}")
        server.shutdown()
        server.server_close()

    rows = []
    for name, (kind, t, _) in runners.items():
        total = _stats(times[name])
        step = _stats(steps_ms[name]) if steps_ms[name] else None
        rows.append({"contender": name, "graph": kind, "threads": t, "total": total,
                     "per_step_ms": total["median_ms"] / args.steps,
                     "page_per_run_ms": step,  # the page's own per-step Run times (browser step graph)
                     "per_sample_ms": total["median_ms"] / args.batch,
                     "max_abs_vs_python_loop": agreement[name]})
    result = {
        "model": "digits (shipped)", "batch": args.batch, "sampler": args.sampler, "steps": args.steps,
        "warmup": args.warmup, "rounds": args.rounds, "environment": env, "loadavg_end": load_average(),
        "browser": browser_version, "onnxruntime_web": page.ort_version, "page": page_env,
        "results": rows, "webgpu": webgpu,
        "command": "python -m benchmarks.bench_web " + " ".join(argv if argv is not None else sys.argv[1:]),
        "screenshot": str(shot.relative_to(ROOT)) if shot is not None and shot.is_relative_to(ROOT) else None,
    }
    import json

    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "web_digits.json", json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(args.out_dir / "web_digits.md", to_markdown(result))
    log(f"wrote {args.out_dir / 'web_digits'}.{{json,md}}")
    return 0


def to_markdown(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = [
        "# Sampling in the browser vs Python ONNX Runtime — digits",
        "",
        f"Shipped digits model, {res['sampler']} {res['steps']} steps, batch {res['batch']}, the same x_T and "
        f"noise for every contender; warm-up {res['warmup']}, {res['rounds']} interleaved rounds; {env['date']}.",
        f"Machine: {env['cpu']}, {env['usable_cores']} usable cores (shared with other jobs: load average "
        f"{env['loadavg_start']} at the start, {res['loadavg_end']} at the end; {env['cpu_busy_before']} of the "
        f"CPUs busy before the run); {env['os']}.",
        f"Browser: headless {res['browser']} (cross-origin isolated: {res['page']['isolated']}, "
        f"hardwareConcurrency {res['page']['cores']}); onnxruntime-web {res['onnxruntime_web']}; "
        f"Python: onnxruntime {env['onnxruntime']}, numpy {env['numpy']}.",
        "",
        "| contender | graph | median ms per sampling call | p10–p90 ms | per step, ms | per sample, ms "
        "| max abs vs Python loop |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["results"]:
        t = r["total"]
        lines.append(f"| {r['contender']} | {r['graph']} | {t['median_ms']:.1f} | {t['p10_ms']:.1f}–{t['p90_ms']:.1f} "
                     f"| {r['per_step_ms']:.2f} | {r['per_sample_ms']:.2f} | {r['max_abs_vs_python_loop']:.1e} |")
    w = res["webgpu"]
    lines.append("")
    if "total" in w:
        a = w["adapter"] or {}
        lines += [f"WebGPU (adapter: {a.get('vendor', '?')} {a.get('architecture', '?')}, fallback adapter: "
                  f"{a.get('fallback')}; WebGPU emulated on the CPU by SwiftShader), step graph, "
                  f"{w['total']['runs']} run(s) after the rounds: {w['total']['median_ms'] / 1e3:.1f} s per sampling "
                  f"call, {w['total']['median_ms'] / res['steps']:.0f} ms per step (median Run "
                  f"{w['per_step']['median_ms']:.0f} ms, p10–p90 {w['per_step']['p10_ms']:.0f}–{w['per_step']['p90_ms']:.0f}), "
                  f"{w['total']['median_ms'] / res['batch']:.0f} ms per sample; max abs vs the Python loop "
                  f"{w['max_abs_vs_python_loop']:.1e}. The page's `auto` backend therefore takes WASM on a "
                  "fallback adapter."]
    elif w.get("adapter"):
        lines.append("WebGPU: not measured (--no-webgpu).")
    else:
        lines.append("WebGPU: the headless browser exposed no adapter.")
    lines += ["", "Per step and per sample: the median sampling call divided by the steps and by the batch. "
              "Browser times are measured inside the page's worker (performance.now() around the whole loop of "
              "session.run calls, input tensors built per step, as the page shows them); Python times around "
              "`run_fused` (a Python loop of session.run). Session creation is excluded from both; the JSON also "
              "holds the page's own per-Run times (`page_per_run_ms`).", "",
              f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
