"""CPU paths by precision, side by side: speed on the CIFAR-10-size U-Net and quality on the shipped models.

Part ``cifar`` (DDIM 50, batch 1 [and 8], N threads, one process, runners interleaved per round):
diffusers DDIMPipeline eager fp32, the ddpm-rt loop over eager torch fp32 (the reference for the
error column), ddpm-rt `ort` fp32, OpenVINO f32 / bf16 / f16 loops, int8 on ORT and OpenVINO,
and torch.compile with bf16 autocast (in a subprocess with a time limit; skipped with a note if it
does not compile in time). Every runner starts from the same noise; the error column is the
final-sample max-abs against the eager fp32 loop (data range [-1, 1], finals clipped to it).
Also raw OpenVINO calls × steps against the OpenVINO loop (loop overhead).

Part ``quality`` (shipped ``digits`` n=1000 and ``swissroll`` n=2000, fixed seed): samples from each
precision path, scored by `ddpm_rt.quality.report.quality_report`, next to fp32's, plus the
quality guard's verdict (`ddpm_rt.runtime.quality_guard.guard`) for each path.

    .venv/bin/python benchmarks/bench_cpu_precision.py --part cifar --threads 2 --batches 1 8
    .venv/bin/python benchmarks/bench_cpu_precision.py --part quality --threads 2

Writes benchmarks/results/cpu_precision_<cpu-class>.{json,md} (each part updates its own section).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_common import log

HERE = Path(__file__).resolve().parent

RESULTS = HERE / "results"
Runner = Callable[[np.ndarray], np.ndarray]  # x_init -> final sample


def machine() -> dict[str, Any]:
    from ddpm_rt.precision import cpu_capabilities

    cpu = cpu_capabilities()
    return {"cpu": cpu.model, "isa_class": cpu.isa_class, "flags": sorted(cpu.flags),
            "cpu_count": os.cpu_count(), "platform": platform.platform()}


def versions() -> dict[str, str | None]:
    import torch

    from ddpm_rt.runtime.verdicts import runtime_versions

    return {**runtime_versions(), "torch": torch.__version__}


# -- CIFAR-size speed --------------------------------------------------------------------------

def cifar_runners(src, bundle, plan, batch: int, threads: int, int8_bundle) -> dict[str, tuple[Runner, Any]]:
    """name -> (x_init -> final, closeable or None)."""
    import torch
    from diffusers import DDIMPipeline

    from ddpm_rt.bench.pipeline import ddim_scheduler, find_unet
    from ddpm_rt.runtime.backend import BackendOptions
    from ddpm_rt.runtime.loop import sample_loop
    from ddpm_rt.runtime.quality_guard import open_candidate

    torch.set_num_threads(threads)
    module = src.load_module().eval()
    unet = find_unet(module).eval()
    pipe = DDIMPipeline(unet=unet, scheduler=ddim_scheduler(src.spec, plan))
    pipe.set_progress_bar_config(disable=True)

    def run_pipe(x_init: np.ndarray) -> np.ndarray:  # draws the same x_init from the same generator
        g = torch.Generator().manual_seed(0)
        img = pipe(batch_size=batch, generator=g, eta=0.0, num_inference_steps=plan.steps, output_type="pt").images
        return img.numpy() * 2.0 - 1.0

    def eager(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x), torch.from_numpy(t)).numpy()

    runners: dict[str, tuple[Runner, Any]] = {
        "diffusers DDIMPipeline eager fp32": (run_pipe, None),
        "ddpm-rt loop, eager torch fp32": (lambda x: sample_loop(eager, plan, x), eager),
    }
    opened = [("ort", "fp32", bundle), ("openvino", "fp32", bundle), ("openvino", "bf16", bundle),
              ("openvino", "fp16", bundle), ("ort", "int8", int8_bundle), ("openvino", "int8", int8_bundle)]
    for backend, precision, b in opened:
        if b is None:
            continue
        try:
            be = open_candidate(backend, b, batch, BackendOptions(threads=threads, precision=precision))
        except Exception as e:  # noqa: BLE001 - e.g. f16 on a CPU without AVX512_FP16
            log(f"skip {backend} {precision}: {e}")
            continue
        runners[f"ddpm-rt {backend} {precision}"] = (lambda x, be=be: be.sample(plan, x), be)
    return runners


def per_call_errors(be, ref, shape: tuple[int, ...]) -> dict[str, float]:
    """rel-RMS of one call against the reference callable at t = 10 and t = 500 (same random x)."""
    x = np.random.default_rng(1).standard_normal((be.batch, *shape), dtype=np.float32)
    got = {}
    for step in (10.0, 500.0):
        t = np.full(be.batch, step, np.float32)
        a, b = be(x, t).copy(), ref(x, t)
        got[f"rel_rms_t{int(step)}"] = float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b ** 2)))
    return got


def raw_call_ms(be, batch: int, shape: tuple[int, ...], calls: int = 20) -> float:
    x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
    t = np.full(batch, 500.0, np.float32)
    be(x, t)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        be(x, t)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def compile_worker(args: argparse.Namespace) -> None:
    """Subprocess: torch.compile (frozen, bf16 autocast) loop; writes timings and the final sample."""
    import torch
    from bench_cifar10_model import cifar10_source

    from ddpm_rt.runtime.loop import sample_loop

    torch.set_num_threads(args.threads)
    src, _ = cifar10_source(0, args.trained_steps)
    module = src.load_module().eval()
    plan = src.spec.plan(src.spec.sampler(args.steps, sampler="ddim"))
    x_init = np.load(args.compile_worker)
    t0 = time.perf_counter()
    with torch.no_grad():
        torch._inductor.config.freezing = True
        compiled = torch.compile(module)

        def call(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return compiled(torch.from_numpy(x), torch.from_numpy(t)).float().numpy()

        sample_loop(call, plan, x_init)  # compiles
        compile_s = time.perf_counter() - t0
        times, final = [], None
        for _ in range(args.repeat):
            t1 = time.perf_counter()
            final = sample_loop(call, plan, x_init)
            times.append(time.perf_counter() - t1)
    np.save(args.compile_worker + ".final.npy", final)
    Path(args.compile_worker + ".json").write_text(json.dumps({"compile_s": compile_s, "times": times}))


def torch_compile_row(args: argparse.Namespace, x_init: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "x_init.npy")
        np.save(path, x_init)
        cmd = [sys.executable, __file__, "--compile-worker", path, "--threads", str(args.threads),
               "--steps", str(args.steps), "--trained-steps", str(args.trained_steps), "--repeat", str(args.repeat)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.compile_timeout)
        except subprocess.TimeoutExpired:
            return {"skipped": f"torch.compile did not finish compiling and running within {args.compile_timeout} s"}
        if proc.returncode != 0:
            return {"skipped": f"torch.compile failed: {proc.stderr.strip().splitlines()[-1][:200]}"}
        data = json.loads(Path(path + ".json").read_text())
        final = np.clip(np.load(path + ".final.npy"), -1, 1)
    return {"times_s": data["times"], "median_s": float(np.median(data["times"])), "compile_s": data["compile_s"],
            "max_abs_vs_eager": float(np.max(np.abs(final - ref)))}


def run_cifar(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from bench_cifar10_model import cifar10_source
    from ddpm_rt.exporter.bundle import load_bundle

    from ddpm_rt.exporter.int8 import Int8Options, quantize_bundle

    src, params = cifar10_source(0, args.trained_steps)
    bundle = load_bundle(src.bundle)
    int8_dir = Path(src.bundle).with_name(Path(src.bundle).name + f"-int8-{args.int8_method}")
    if not (int8_dir / "ddpm_rt.json").is_file():
        t0 = time.perf_counter()
        quantize_bundle(bundle.directory, int8_dir, Int8Options(method=args.int8_method, steps=20, trajectories=1,
                                                                batch=2))
        log(f"int8 bundle in {time.perf_counter() - t0:.1f}s")
    int8_bundle = load_bundle(int8_dir)
    plan = src.spec.plan(src.spec.sampler(args.steps, sampler="ddim"))
    out: dict[str, Any] = {"model": f"DDPM CIFAR-10 U-Net ({params / 1e6:.1f}M params), "
                           + (f"seeded random weights + {args.trained_steps} brief training steps"
                              if args.trained_steps else "seeded random weights (chaotic 50-step trajectory)"),
                           "steps": plan.steps, "sampler": "ddim eta 0", "threads": args.threads,
                           "int8": int8_bundle.manifest["quantization"]["calibration"], "batches": {}}
    for batch in args.batches:
        x_init = torch.randn((batch, *src.spec.sample_shape), generator=torch.Generator().manual_seed(0)).numpy()
        runners = cifar_runners(src, bundle, plan, batch, args.threads, int8_bundle)
        times: dict[str, list[float]] = {n: [] for n in runners}
        finals: dict[str, np.ndarray] = {}
        load0 = os.getloadavg()
        for r in range(1 + args.repeat):  # round 0 is the warm-up
            for name, (run, _) in runners.items():
                t0 = time.perf_counter()
                finals[name] = np.clip(run(x_init), -1.0, 1.0)
                if r:
                    times[name].append(time.perf_counter() - t0)
            log(f"batch {batch}: round {r}/{args.repeat} done")
        ov = runners.get("ddpm-rt openvino fp32", (None, None))[1]
        raw, calls = {}, {}
        eager = runners["ddpm-rt loop, eager torch fp32"][1]
        for name, (_, be) in runners.items():
            if be is not None and name != "ddpm-rt loop, eager torch fp32":
                raw[name] = raw_call_ms(be, batch, tuple(src.spec.sample_shape))
                calls[name] = per_call_errors(be, eager, tuple(src.spec.sample_shape))
                be.close()
        ref = finals["ddpm-rt loop, eager torch fp32"]
        rows = {n: {"times_s": ts, "median_s": float(np.median(ts)),
                    "max_abs_vs_eager": float(np.max(np.abs(finals[n] - ref)))} for n, ts in times.items()}
        for n, ms in raw.items():
            rows[n]["raw_call_ms"] = ms
            rows[n]["loop_overhead"] = rows[n]["median_s"] / (ms * plan.steps / 1e3) - 1.0
            rows[n]["per_call_vs_eager"] = calls[n]
        if not args.skip_compile:
            log(f"batch {batch}: torch.compile bf16 (timeout {args.compile_timeout}s)")
            rows["torch.compile bf16 autocast, frozen"] = torch_compile_row(args, x_init, ref)
        pipe_s = rows["diffusers DDIMPipeline eager fp32"]["median_s"]
        for r in rows.values():
            if "median_s" in r:
                r["speedup_vs_pipeline"] = pipe_s / r["median_s"]
        del ov
        out["batches"][str(batch)] = {"rows": rows, "loadavg_start": load0, "loadavg_end": os.getloadavg()}
    return out


# -- quality on the shipped models -------------------------------------------------------------

def run_quality(args: argparse.Namespace) -> dict[str, Any]:
    from ddpm_rt.exporter.bundle import load_bundle
    from ddpm_rt.source import resolve_source

    from ddpm_rt.exporter.int8 import Int8Options, quantize_bundle
    from ddpm_rt.quality.report import quality_report
    from ddpm_rt.runtime.backend import BackendOptions
    from ddpm_rt.runtime.loop import initial_noise
    from ddpm_rt.runtime.quality_guard import guard, open_candidate

    out: dict[str, Any] = {}
    for model, n in (("digits", args.quality_n), ("swissroll", 2 * args.quality_n)):
        bundle = load_bundle(resolve_source(model).bundle_dir())
        variants = {"int8": bundle.directory.with_name(bundle.directory.name + "-int8"),
                    "int8-naive": bundle.directory.with_name(bundle.directory.name + "-int8-naive")}
        for label, path in variants.items():
            if not (path / "ddpm_rt.json").is_file():
                naive = label == "int8-naive"  # every conv/matmul quantized, min-max, one short trajectory
                quantize_bundle(bundle.directory, path, Int8Options(method="minmax", keep_float=False, steps=2,
                                                                    trajectories=1, batch=1) if naive else None)
        paths = [("ort", "fp32", bundle), ("openvino", "bf16", bundle),
                 ("ort", "int8", load_bundle(variants["int8"])),
                 ("openvino", "int8", load_bundle(variants["int8"])),
                 ("ort", "int8-naive", load_bundle(variants["int8-naive"]))]
        spec = bundle.spec
        plan = spec.plan(spec.sampler(args.quality_steps))
        rows: dict[str, Any] = {}
        finals: dict[str, np.ndarray] = {}
        for seed in args.seeds:
            rng = np.random.default_rng(seed)
            x_init = initial_noise((n, *spec.sample_shape), rng)
            noise = rng.standard_normal((plan.steps, n, *spec.sample_shape), dtype=np.float32)
            for backend, label, b in paths:
                precision = "int8" if label.startswith("int8") else label
                name = f"{backend} {label}"
                try:
                    with open_candidate(backend, b, n, BackendOptions(threads=args.threads, precision=precision)) as be:
                        t0 = time.perf_counter()
                        finals[name] = be.sample(plan, x_init, noise=noise)
                        dt = time.perf_counter() - t0
                except Exception as e:  # noqa: BLE001
                    rows[name] = {"skipped": str(e)}
                    continue
                report = quality_report(model, finals[name])
                row = rows.setdefault(name, {"seeds": {}})
                row["seeds"][str(seed)] = {
                    "report": {k: v for k, v in report.items() if isinstance(v, int | float)},
                    "max_abs_vs_ort_fp32": float(np.max(np.abs(finals[name] - finals["ort fp32"]))),
                    "sample_s": dt}
                log(f"{model} seed {seed} {name}: {dt:.1f}s")
        for backend, label, b in paths[1:]:
            name = f"{backend} {label}"
            if "skipped" in rows.get(name, {}):
                continue
            v = guard(bundle, backend, "int8" if label.startswith("int8") else label,
                      candidate_bundle=b if label.startswith("int8") else None, threads=args.threads)
            rows[name]["guard"] = {"ok": v.ok, "rel_rms": v.rel_rms, "max_abs": v.max_abs, "steps": v.steps,
                                   "batch": v.batch, "tolerance": v.tolerance}
        out[model] = {"n": n, "plan": f"{plan.sampler.sampler} {plan.steps} steps", "seeds": list(args.seeds),
                      "rows": rows}
    return out


# -- report ------------------------------------------------------------------------------------

def _f(v: Any, fmt: str = ".3g") -> str:
    return "—" if v is None else format(v, fmt)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"# CPU precision paths — {m['cpu']} ({m['isa_class']})", "",
             f"CPU flags: {', '.join(m['flags'])}; {m['cpu_count']} vCPUs; {m['platform']}.",
             f"Versions: {json.dumps(result['versions'])}.", ""]
    cifar = result.get("cifar")
    if cifar:
        lines += [f"## CIFAR-10-size U-Net, {cifar['sampler']}, {cifar['steps']} steps, {cifar['threads']} threads",
                  "", f"Model: {cifar['model']}. int8 calibration: {json.dumps(cifar['int8'])}.", ""]
        for batch, b in cifar["batches"].items():
            lines += [f"### batch {batch} (load average {_f(b['loadavg_start'][0], '.2f')} at start, "
                      f"{_f(b['loadavg_end'][0], '.2f')} at end)", "",
                      "| path | s (median) | vs DDIMPipeline | final max-abs vs eager fp32 | per-call rel-RMS t=10 / t=500 "
                      "| raw call ms | loop overhead |",
                      "|---|---|---|---|---|---|---|"]
            for name, r in b["rows"].items():
                if "skipped" in r:
                    lines.append(f"| {name} | skipped: {r['skipped']} | | | | | |")
                    continue
                pc = r.get("per_call_vs_eager")
                pctxt = f"{pc['rel_rms_t10']:.2g} / {pc['rel_rms_t500']:.2g}" if pc else "—"
                lines.append(f"| {name} | {r['median_s']:.2f} | {r['speedup_vs_pipeline']:.2f}× | "
                             f"{_f(r['max_abs_vs_eager'])} | {pctxt} | {_f(r.get('raw_call_ms'), '.1f')} | "
                             f"{_f(r.get('loop_overhead') and 100 * r['loop_overhead'], '.1f')}{'%' if 'loop_overhead' in r else ''} |")
            lines.append("")
    quality = result.get("quality")
    if quality:
        lines += ["## Quality on the shipped models", ""]
        for model, q in quality.items():
            metric = "fd" if model == "digits" else "sliced_wasserstein"
            ref_key = "fd_real_vs_real" if model == "digits" else "sliced_wasserstein_real_vs_real"
            lines += [f"### {model}: n={q['n']}, {q['plan']}, seeds {q['seeds']}", "",
                      f"| path | {metric} per seed | vs fp32 | real-vs-real | max-abs vs ort fp32 | quality guard (model's default trajectory) |",
                      "|---|---|---|---|---|---|"]
            base = q["rows"]["ort fp32"]["seeds"]
            for name, r in q["rows"].items():
                if "skipped" in r:
                    lines.append(f"| {name} | skipped: {r['skipped'][:120]} | | | | |")
                    continue
                vals = [s["report"][metric] for s in r["seeds"].values()]
                ratios = [s["report"][metric] / base[k]["report"][metric] for k, s in r["seeds"].items()]
                rr = next(iter(r["seeds"].values()))["report"].get(ref_key)
                g = r.get("guard")
                gtxt = "reference" if g is None else (f"{'pass' if g['ok'] else 'REFUSED'}: rel-RMS {g['rel_rms']:.3g}, "
                                                      f"max-abs {g['max_abs']:.3g} ({g['steps']} steps, "
                                                      f"{g['batch']} samples)")
                lines.append(f"| {name} | {' / '.join(f'{v:.4g}' for v in vals)} | "
                             f"{' / '.join(f'{x:.3f}' for x in ratios)} | {_f(rr, '.4g')} | "
                             f"{' / '.join(_f(s['max_abs_vs_ort_fp32']) for s in r['seeds'].values())} | {gtxt} |")
            lines.append("")
    lines += result.get("notes", [])
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["cifar", "quality", "all"], default="all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--trained-steps", type=int, default=0)
    ap.add_argument("--int8-method", default="percentile")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--compile-timeout", type=int, default=600)
    ap.add_argument("--quality-n", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--quality-steps", type=int, default=None, help="sampler steps (default: the model's own)")
    ap.add_argument("--compile-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.compile_worker:
        compile_worker(args)
        return
    from ddpm_rt.fsutil import atomic_write_text

    m = machine()
    path = RESULTS / f"cpu_precision_{m['isa_class']}.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.update({"benchmark": "cpu_precision", "machine": m, "versions": versions()})
    if args.part in ("cifar", "all"):
        result["cifar"] = run_cifar(args)
    if args.part in ("quality", "all"):
        result["quality"] = run_quality(args)
    atomic_write_text(path, json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(path.with_suffix(".md"), markdown(result))
    log(f"wrote {path} and .md")


if __name__ == "__main__":
    main()
