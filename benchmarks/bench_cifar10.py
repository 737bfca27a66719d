"""Bench the DDPM CIFAR-10 U-Net (diffusers UNet2DModel, 35.7M params), 50 DDIM steps:
eager torch vs ORT at batch 1/4/16, and diffusers' DDIMPipeline (eager) at batch 1.

    .venv/bin/python -m benchmarks.bench_cifar10

Batch 1 carries the targets (warm-up/repeat from the flags); batches 4 and 16 use
--sweep-warmup/--sweep-repeat because one 50-step run at batch 16 takes minutes on 2 cores.
Writes benchmarks/results/bench_cifar10.{json,md,png}. The first run also builds the model folder
under ~/.cache/ddpm-rt/bench-work: seeded random weights, then 300 brief training steps (about
6 minutes on 2 cores; `--trained-steps 0` skips them), exported once to a bundle.
"""

from __future__ import annotations

from benchmarks.bench_common import base_args, log, merge, row, write


def _met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def probe_notes(probe: list[dict]) -> list[str]:
    if not probe:
        return []
    lines = ["", "### Thread probe (denoiser call only, batch 1, 5 calls after 1 warm-up)", "",
             "| threads | backend | call ms median | p90 | load avg |", "|---|---|---|---|---|"]
    lines += [f"| {p['threads']} | {p['backend']} | {p['call_ms']['median']:.1f} | "
              f"{p['call_ms']['p90']:.1f} | {p['loadavg']} |" for p in probe]
    return lines


def ort_investigation(onnx_path, threads: int, calls: int = 5) -> dict:
    """Per-call latency at each ORT graph level (same session settings otherwise), and what the
    ORT_ENABLE_ALL graph holds: NCHWc reorders around each InstanceNormalization-based GroupNorm."""
    import collections
    import tempfile
    import time

    import numpy as np
    import onnx
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    t = np.full(1, 480.0, np.float32)
    levels = {}
    for name in ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, name)
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        sess.run(None, {"x": x, "t": t})
        ts = []
        for _ in range(calls):
            t0 = time.perf_counter()
            sess.run(None, {"x": x, "t": t})
            ts.append(time.perf_counter() - t0)
        levels[name] = float(np.median(ts) * 1e3)
    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = f"{d}/all.onnx"
        so.log_severity_level = 3
        ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        nodes = onnx.load(f"{d}/all.onnx").graph.node
        ops = collections.Counter(n.op_type for n in nodes)
        nchwc = sum(1 for n in nodes if n.domain == "com.microsoft.nchwc" and n.op_type == "Conv")
    keep = ("Conv", "ReorderInput", "ReorderOutput", "InstanceNormalization", "Shape", "Gather",
            "Unsqueeze", "Concat", "Reshape", "QuickGelu", "FusedMatMul", "Gemm")
    return {"call_ms_by_level": levels, "all_graph_ops": {k: ops.get(k, 0) for k in keep},
            "all_graph_nodes": sum(ops.values()), "nchwc_convs": nchwc}


def investigation_notes(inv: dict) -> list[str]:
    lv = ", ".join(f"{k.replace('ORT_', '').lower()} {v:.1f} ms" for k, v in inv["call_ms_by_level"].items())
    ops = inv["all_graph_ops"]
    return [
        "", "### What bounds the speed-up: what was tried", "",
        f"- Graph optimization level, per call at batch 1: {lv}. The backend loads the cached "
        "EXTENDED graph and applies ALL on top.",
        f"- The ALL graph ({inv['all_graph_nodes']} nodes) runs {inv['nchwc_convs']} of its {ops['Conv']} convolutions "
        f"in ORT's blocked NCHWc layout and needs {ops['ReorderInput']} ReorderInput + {ops['ReorderOutput']} "
        f"ReorderOutput layout flips: every GroupNorm is exported as Reshape → "
        f"InstanceNormalization ({ops['InstanceNormalization']}) → Reshape, which the NCHWc "
        "transformer cannot keep blocked, so the blocked layout is left and re-entered around "
        f"each one. {ops['Shape'] + ops['Gather'] + ops['Unsqueeze'] + ops['Concat']} small "
        "Shape/Gather/Unsqueeze/Concat nodes (dynamic batch) cost little by comparison.",
        "- Threads: the same count for both sides (torch.set_num_threads = ORT intra-op); by default "
        "every usable core (2 here), which is what eager PyTorch and an ORT session each use out "
        "of the box; `--threads 1` pins both (bench_cifar10.* is such a run, "
        "bench_cifar10_2threads.* one at the default). Both sides scale "
        "to the second core about equally (thread probe below). A run is only valid on a quiet "
        "machine (load average recorded above): with another job on one of the 2 cores torch's "
        "OpenMP barriers stall, which flatters ORT (an earlier run taken while tests ran beside it "
        "showed 2.25x with a 38% spread).",
        "- A static batch (SessionOptions.add_free_dimension_override_by_name('batch', 1), which lets "
        "ORT fold the shape arithmetic) measured about 2% faster per call in an earlier side-by-side "
        "probe, inside the noise, so the backend keeps the dynamic-batch graph.",
        "- The loop itself is not the gap: outside-call time is well under 1% on this model.",
    ]


def ceiling_remark(result: dict, threads: int, ratio: float) -> str:
    """The FLOP ceiling at the run's thread count beside a measured ratio (see flop_ceiling.py)."""
    c = next((c for c in result.get("ceiling", []) if c["threads"] == threads), None)
    if c is None:
        return ""
    text = (f" (the FLOP ceiling measured in this run for {threads} thread(s): "
            f"{c['max_speedup']:.2f}x, see the end of this file")
    if ratio > c["max_speedup"]:
        text += ("; a ratio above the ceiling means the eager runs were slowed by other load on "
                 "the shared machine, so this figure overstates the gain")
    return text + ")"


def main() -> None:
    p = base_args(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sweep", default="4,16", help="further batch sizes ('' for none)")
    p.add_argument("--sweep-warmup", type=int, default=1)
    p.add_argument("--sweep-repeat", type=int, default=2)
    p.add_argument("--pipeline-repeat", type=int, default=3)
    p.add_argument("--stem", default="bench_cifar10")
    p.add_argument("--thread-probe", default="1,2", help="thread counts for the per-call probe ('' for none)")
    p.add_argument("--trained-steps", type=int, default=300,
                   help="brief training steps before benching (0 = random weights); see cifar10_brief_training.py")
    args = p.parse_args()

    from flop_ceiling import ceiling, conv_macs
    from flop_ceiling import notes as ceiling_notes

    from benchmarks.bench_cifar10_model import UNET_CONFIG, cifar10_source
    from ddpm_rt.bench.pipeline import run_pipeline_suite
    from ddpm_rt.bench.suites import BenchConfig, run_suite, thread_probe
    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.commands.options import parse_list

    src, params = cifar10_source(trained_steps=args.trained_steps)
    plan = src.spec.plan(src.spec.sampler(args.steps, sampler="ddim", eta=0.0))
    main_cfg = BenchConfig(backends=("torch", "ort"), batches=(1,), warmup=args.warmup,
                           repeat=args.repeat, threads=args.threads)
    results = [run_suite(src, plan, main_cfg, log=log)]
    threads = results[0]["config"]["threads"]
    if args.sweep:
        sweep = BenchConfig(backends=("torch", "ort"), batches=parse_list(args.sweep, int),
                            warmup=args.sweep_warmup, repeat=args.sweep_repeat, threads=threads,
                            floor=False)
        results.append(run_suite(src, plan, sweep, log=log))
    result = merge(*results)
    result["config"]["runs_per_batch"] = {
        "1": [args.warmup, args.repeat],
        **{str(b): [args.sweep_warmup, args.sweep_repeat] for b in parse_list(args.sweep or "", int)},
    }
    pipe_cfg = BenchConfig(backends=("torch", "ort"), batches=(1,), warmup=1,
                           repeat=args.pipeline_repeat, threads=threads)
    result["pipeline"] = run_pipeline_suite(src, plan, pipe_cfg, log=log)
    if args.thread_probe:
        log("thread probe")
        result["thread_probe"] = thread_probe(src, plan, ("torch", "ort"),
                                              parse_list(args.thread_probe, int))
    log("ORT investigation (graph levels, NCHWc reorders)")
    result["ort_investigation"] = ort_investigation(src.bundle / "denoiser.onnx", threads)
    log("FLOP ceiling (SGEMM peak, ORT kernel times)")
    macs = float(load_bundle(src.bundle).manifest["graph"]["macs_per_sample"])
    cmacs = conv_macs(src.load_module().eval(), tuple(src.spec.sample_shape))
    eager_call_ms = row(result, "torch", 1)["call_ms"]["median"]  # the main suite: most samples
    result["ceiling"] = [ceiling(src.bundle / "denoiser.onnx", macs, cmacs, eager_call_ms, threads)]
    import diffusers

    result["environment"]["diffusers"] = diffusers.__version__
    result["model"] = {"parameters": params, "unet_config": UNET_CONFIG, "trained_steps": args.trained_steps}

    ort1, pipe = row(result, "ort", 1), {r["runner"]: r for r in result["pipeline"]["results"]}
    s_eager = ort1["speedup_vs_baseline"]
    s_pipe = pipe["ort"]["speedup_vs_pipeline"]
    floor = ort1["baseline_1ulp_sensitivity"]
    first = max(r["max_abs_diff_first_call"] for r in result["results"] if r["backend"] == "ort")
    eager_vs_pipe = pipe["torch"]["max_abs_diff_vs_pipeline"]
    outside = ort1["outside_call_share"]["median"]
    diffs = [r["max_abs_diff_vs_baseline"] for r in result["results"] if r["backend"] == "ort"]
    result["targets"] = {
        "ort_vs_eager_speedup_b1": s_eager, "ort_vs_eager_met": s_eager >= 2.0,
        "ort_vs_ddim_pipeline_speedup_b1": s_pipe, "ort_vs_pipeline_met": s_pipe >= 2.0,
        "ort_outside_call_share_b1": outside, "outside_met": outside <= 0.03,
        "ort_vs_eager_max_abs_diff": max(diffs), "parity_met": max(diffs) <= 1e-3,
        "eager_1ulp_sensitivity_b1": floor, "ort_vs_eager_first_call_max_abs": first,
    }
    notes = [
        f"- model: diffusers `UNet2DModel`, DDPM CIFAR-10 configuration, {params / 1e6:.1f}M parameters, "
        "with every field of google/ddpm-cifar10-32's unet/config.json (one attention head over 256 "
        "channels, norm eps 1e-6, ...); "
        + (f"seeded random weights then {args.trained_steps} brief DDPM training steps on colour-tinted "
           "32×32 digits (`benchmarks/cifar10_brief_training.py`: no CIFAR-10 can be downloaded here), so "
           "that the reverse loop contracts as a trained model's does and trajectory parity means "
           "something; speed does not depend on the weights"
           if args.trained_steps else "seeded random weights") +
        "; exported with the project's exporter (`ddpm-rt export` on the DDIMPipeline folder).",
        f"- batch 1: {args.warmup} warm-up + {args.repeat} timed runs per backend; batches "
        f"{args.sweep or '-'}: {args.sweep_warmup} warm-up + {args.sweep_repeat} timed (a 50-step run "
        "at batch 16 takes minutes here); per-step figures pool every step of those runs.",
        "",
        "### Targets (CIFAR-10-size U-Net, 50 DDIM steps, batch 1, fp32)",
        "",
        f"- ORT end to end >= 2x eager PyTorch on the same loop: {s_eager:.2f}x — **{_met(s_eager >= 2)}**"
        + ceiling_remark(result, threads, s_eager),
        f"- ORT end to end >= 2x diffusers DDIMPipeline (eager): {s_pipe:.2f}x — **{_met(s_pipe >= 2)}**"
        + ceiling_remark(result, threads, s_pipe),
        f"- time outside the denoiser call <= 3% (ORT): {100 * outside:.2f}% — **{_met(outside <= 0.03)}**",
        f"- final samples ORT vs eager within 1e-3 max-abs after {plan.steps} steps: {max(diffs):.1e} — "
        f"**{_met(max(diffs) <= 1e-3)}** (batch 1: {ort1['max_abs_diff_vs_baseline']:.1e}). For scale: eager "
        f"against eager with x_T moved by 1 ulp differs by {floor:.1e} at batch 1, and our eager loop "
        f"against diffusers' eager DDIMPipeline (same weights, same math up to rounding) by "
        f"{eager_vs_pipe:.1e} in [0, 1] image space; per call ORT agrees with eager to {first:.1e}. "
        "With random weights (`--trained-steps 0`) the trajectory amplifies fp32 rounding like a "
        "chaotic map (clipped x0^ from an untrained eps): in such a run on 2026-11-22 ORT vs eager "
        "and eager vs eager 1 ulp apart both differed by about 0.6.",
        "- images/s at batch 1, 4, 16: table above and the plot.",
        "",
        "- Regenerate: `.venv/bin/python -m benchmarks.bench_cifar10` (add `--threads N` to pin threads).",
        *investigation_notes(result["ort_investigation"]),
        *probe_notes(result.get("thread_probe") or []),
        *[line for c in result["ceiling"] for line in ceiling_notes(c)],
    ]
    write(args.stem, result, "ddpm-rt bench: DDPM CIFAR-10 U-Net (35.7M), 50 DDIM steps", notes, args.out)


if __name__ == "__main__":
    main()
