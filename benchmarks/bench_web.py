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
    python -m benchmarks.bench_web --guided                 # adds the guided section to web_digits.{json,md}

`--guided`: classifier-free guidance in the browser. Until a shipped conditional digits model
exists, the conditional model is the shipped digits U-Net with a class input added (a 10 + 1 row
embedding added to its output: the same U-Net work per sample, plus one Gather and one Add); its
guided step graph runs the U-Net once on 2B (conditional and null halves) and combines
u + w·(c − u). Against it: the plain digits step graph at B, same sampler, steps and inputs, in the
same page and rounds, WASM at 1 and at `--threads` threads.

Also takes the README's screenshot (docs/img/web_page.png; `--screenshot-only` for just that): the
page after a run of the shipped digits model from its own controls, then "Edit the last result"
keeping the left half.
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
SHOT_SIZE = (1280, 1000)  # the browser window: the controls, both panels and input | mask | result


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


def take_screenshot(browser: Any, url: str, path: Path, threads: int) -> Path:
    """The README's picture: cond-digits sampled from the page's own controls (one row per class, the
    model's default guidance), then "Edit the last result" keeping the left half (input | mask | result)."""
    from ddpm_rt.web.drive import click_sample, open_page

    open_page(browser, url)
    for run in ({"model": "cond-digits", "ep": "auto", "threads": threads, "seed": 0},
                {"button": "edit-last", "mask": "left", "strength": "0.8", "seed": 1}):
        out = click_sample(browser, **run)
        if "error" in out:
            raise RuntimeError(out["error"])
    shot = browser.screenshot(path)
    log(f"wrote {shot}")
    return shot


def screenshot_only(args: argparse.Namespace) -> int:
    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.models.catalog import shipped_bundle
    from ddpm_rt.web.chromium import Chromium
    from ddpm_rt.web.graphs import GraphStore, WebModel
    from ddpm_rt.web.page import ensure_page
    from ddpm_rt.web.server import make_server, serve_in_thread

    with tempfile.TemporaryDirectory(prefix="ddpm_rt_web_shot_") as tmp:
        models = [WebModel(n, load_bundle(shipped_bundle(n)), f"builtin:{n}") for n in ("digits", "cond-digits", "swissroll")]
        server = make_server(GraphStore(models, cache_dir=Path(tmp), log=log), ensure_page(log=log), port=0)
        serve_in_thread(server)
        with Chromium(size=SHOT_SIZE) as browser:
            take_screenshot(browser, server.url, Path(args.screenshot), args.threads)
        server.shutdown()
        server.server_close()
    return 0


def conditional_digits(bundle: Any, directory: Path, classes: int = 10, guidance: float = 3.0) -> Any:
    """The digits U-Net with a class input: out + emb[class_labels] (classes + 1 rows, the last the null
    label), as a bundle in `directory` (no torch). For timing guided graphs at digits size."""
    from dataclasses import replace

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ddpm_rt.bundle.contract import CONTRACT
    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.bundle.manifest import MANIFEST_FILE, ONNX_FILE, dumps, with_hash, without_hash
    from ddpm_rt.conditioning import CondInput
    from ddpm_rt.fsutil import file_sha256

    spec = replace(bundle.spec, conditioning=(CondInput("class_labels", "class", num_classes=classes, null=classes),),
                   sampler_defaults={**bundle.spec.sampler_defaults, "guidance_scale": guidance})
    model = onnx.load(str(bundle.onnx_path))
    g = model.graph
    out = g.output[0].name
    for node in g.node:  # the U-Net now writes `unet_out`; out = unet_out + emb[class_labels]
        node.output[:] = ["unet_out" if o == out else o for o in node.output]
    emb = np.random.default_rng(0).standard_normal((classes + 1, *spec.sample_shape)).astype(np.float32) * 0.1
    g.initializer.append(numpy_helper.from_array(emb, "class_emb"))
    g.input.append(helper.make_tensor_value_info("class_labels", TensorProto.INT64, ["batch"]))
    g.node.extend([helper.make_node("Gather", ["class_emb", "class_labels"], ["class_add"], axis=0),
                   helper.make_node("Add", ["unet_out", "class_add"], [out])])
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(directory / ONNX_FILE))
    manifest = {**without_hash(bundle.manifest), "spec": spec.to_dict(), "io": CONTRACT.for_spec(spec).to_dict(
        tuple(spec.sample_shape)), "onnx_file": ONNX_FILE, "source": {"kind": "module", "ref": "bench:cond-digits"}}
    manifest.pop("fp32_graph", None)
    (directory / MANIFEST_FILE).write_text(dumps(with_hash(manifest, file_sha256(directory / ONNX_FILE))))
    return load_bundle(directory)


def guided(args: argparse.Namespace) -> int:
    """Guided (2B inside the graph) vs unguided (B) browser ms/step; merged into web_digits.{json,md}."""
    import json

    from ddpm_rt.bench.machine import environment, load_average
    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.exporter.sampler_export import graph_options, reference_loop
    from ddpm_rt.fsutil import atomic_write_text
    from ddpm_rt.models.catalog import shipped_bundle
    from ddpm_rt.web.chromium import Chromium
    from ddpm_rt.web.drive import open_page, run_page
    from ddpm_rt.web.graphs import GraphStore, WebModel
    from ddpm_rt.web.page import ensure_page
    from ddpm_rt.web.server import make_server, serve_in_thread

    env = environment(args.threads)
    digits = load_bundle(shipped_bundle("digits"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, *digits.spec.sample_shape), dtype=np.float32)
    z = rng.standard_normal((args.steps, args.batch, *digits.spec.sample_shape), dtype=np.float32)
    labels = [i % 10 for i in range(args.batch)]
    w = args.guidance
    with tempfile.TemporaryDirectory(prefix="ddpm_rt_bench_web_guided_") as tmp:
        cond = conditional_digits(digits, Path(tmp) / "cond-digits")
        s = digits.spec.sampler(args.steps, sampler=args.sampler)
        plan = digits.spec.plan(s)
        refs = {"digits": reference_loop(str(digits.onnx_path), plan, x, z),
                "cond-digits": reference_loop(str(cond.onnx_path), plan, x, z, options=graph_options(cond.spec, s, False),
                                              extras={"class_labels": np.array(labels, np.int64),
                                                      "guidance_scale": np.array(w, np.float32),
                                                      "guidance_rescale": np.array(0.0, np.float32)})}
        store = GraphStore([WebModel("digits", digits, "builtin:digits"), WebModel("cond-digits", cond, "bench")],
                           cache_dir=Path(tmp) / "cache", log=log)
        page = ensure_page(log=log)
        server = make_server(store, page, port=0)
        serve_in_thread(server)
        contenders = {}
        for t in (1, args.threads):
            for model, what in (("digits", "unguided (B)"), ("cond-digits", f"guided w={w:g} (2B inside)")):
                opts = {"model": model, "sampler": args.sampler, "steps": args.steps, "graph": "step",
                        "batch": args.batch, "ep": "wasm", "threads": t}
                if model == "cond-digits":
                    opts |= {"cond": {"class_labels": labels}, "guidance": w}
                contenders[f"browser wasm {t} thread{'s' * (t > 1)}, {what}"] = (model, t, opts)
        with Chromium() as browser:
            browser_version = browser.send("Browser.getVersion")["product"]
            open_page(browser, server.url)
            agreement: dict[str, float] = {}
            for name, (model, _, opts) in contenders.items():  # check, then warm up
                for i in range(args.warmup):
                    out = run_page(browser, opts, x, z)
                    if "error" in out:
                        raise RuntimeError(f"{name}: {out['error']}")
                    if i == 0:
                        agreement[name] = float(np.max(np.abs(out["array"] - refs[model])))
                log(f"{name}: max |x - Python loop| {agreement[name]:.2e}")
            totals: dict[str, list[float]] = {k: [] for k in contenders}
            per_run: dict[str, list[float]] = {k: [] for k in contenders}
            for r in range(args.rounds):
                for name, (_, _, opts) in contenders.items():
                    out = run_page(browser, opts, x, z)
                    totals[name].append(float(out["totalMs"]))
                    per_run[name] += [float(v) for v in out["stepMs"]]
                log(f"round {r + 1}/{args.rounds} done")
        server.shutdown()
        server.server_close()
    rows = []
    for name, (model, t, _) in contenders.items():
        total = _stats(totals[name])
        rows.append({"contender": name, "model": model, "threads": t, "total": total,
                     "per_step_ms": total["median_ms"] / args.steps, "page_per_run_ms": _stats(per_run[name]),
                     "max_abs_vs_python_loop": agreement[name]})
    for t in (1, args.threads):
        un, gu = (next(r for r in rows if r["threads"] == t and r["model"] == m) for m in ("digits", "cond-digits"))
        gu["vs_unguided"] = gu["per_step_ms"] / un["per_step_ms"]
    section = {"model": "digits U-Net + a class input (bench-made, see bench_web.py); unguided: shipped digits",
               "batch": args.batch, "sampler": args.sampler, "steps": args.steps, "guidance": w,
               "warmup": args.warmup, "rounds": args.rounds, "environment": env, "loadavg_end": load_average(),
               "browser": browser_version, "onnxruntime_web": page.ort_version, "results": rows,
               "command": "python -m benchmarks.bench_web --guided " + " ".join(
                   a for a in (sys.argv[1:]) if a != "--guided")}
    path = args.out_dir / "web_digits.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result["guided"] = section
    atomic_write_text(path, json.dumps(result, indent=2, default=str) + "\n")
    if "results" in result:
        atomic_write_text(args.out_dir / "web_digits.md", to_markdown(result))
    log(f"wrote the guided section of {args.out_dir / 'web_digits'}.{{json,md}}")
    return 0


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
    p.add_argument("--guided", action="store_true", help="only the guided vs unguided comparison (merged into "
                   "the results)")
    p.add_argument("--screenshot-only", action="store_true", help="only the README's screenshot")
    p.add_argument("--guidance", type=float, default=3.0, help="w of the guided runs (--guided)")
    args = p.parse_args(argv)
    if args.guided:
        return guided(args)
    if args.screenshot_only:
        return screenshot_only(args)

    from ddpm_rt.bench.machine import environment, load_average
    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.exporter.sampler_export import reference_loop
    from ddpm_rt.fsutil import atomic_write_text
    from ddpm_rt.models.catalog import shipped_bundle
    from ddpm_rt.web.chromium import Chromium
    from ddpm_rt.web.drive import open_page
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
        with Chromium(webgpu=not args.no_webgpu, size=SHOT_SIZE) as browser:
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
            shot = take_screenshot(browser, server.url, Path(args.screenshot), args.threads) if args.screenshot else None
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
    g = res.get("guided")
    if g:
        genv = g["environment"]
        lines += ["", "## Classifier-free guidance in the browser", "",
                  f"{g['model']}; {g['sampler']} {g['steps']} steps, batch {g['batch']}, step graph, WASM, guidance "
                  f"w = {g['guidance']:g}; the same x_T and noise for every contender; warm-up {g['warmup']}, "
                  f"{g['rounds']} interleaved rounds; {genv['date']}.",
                  f"Machine: {genv['cpu']}, {genv['usable_cores']} usable cores (shared: load average "
                  f"{genv['loadavg_start']} at the start, {g['loadavg_end']} at the end); headless {g['browser']}, "
                  f"onnxruntime-web {g['onnxruntime_web']}."
                  + (" (Not the machine of the table above: compare within this table.)"
                     if genv["cpu"] != env["cpu"] else ""), "",
                  "| contender | median ms per sampling call | p10–p90 ms | per step, ms | vs unguided "
                  "| max abs vs Python loop |", "|---|---:|---:|---:|---:|---:|"]
        for r in g["results"]:
            t = r["total"]
            ratio = f"{r['vs_unguided']:.2f}×" if "vs_unguided" in r else "1"
            lines.append(f"| {r['contender']} | {t['median_ms']:.1f} | {t['p10_ms']:.1f}–{t['p90_ms']:.1f} "
                         f"| {r['per_step_ms']:.2f} | {ratio} | {r['max_abs_vs_python_loop']:.1e} |")
        lines += ["", "The guided graph calls the U-Net once per step on 2B samples (the conditional and the null "
                  "half) and combines them inside the graph; the Python reference is `sample_loop` over "
                  "`runtime.guidance` on the plain denoiser. "
                  f"Command: `{g['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
