"""Per-call latency of the CIFAR-10-size U-Net on ONNX Runtime and the two OpenVINO routes.

Routes, all on the same exported ``denoiser.onnx`` (batch 1, static shape, N threads):

* ``ort-fp32``      ONNX Runtime CPU EP, IO binding over numpy buffers (today's ``ort`` backend);
* ``ov-f32``        ``openvino`` (PyPI), INFERENCE_PRECISION_HINT f32, tensors shared with numpy;
* ``ov-bf16``       the same with INFERENCE_PRECISION_HINT bf16 (OpenVINO's own default on
                    AVX512_BF16 / AMX CPUs);
* ``ov-f16``        the same with f16 (only where the CPU plugin lists FP16, e.g. AVX512_FP16);
* ``ortep-*``       ONNX Runtime with the OpenVINO plugin execution provider
                    (``onnxruntime-ep-openvino``), IO binding, precision via ``load_config``.

Each route reports the median and min of per-call wall times after warm-up, and the max-abs
difference of one output against ORT fp32 at t = 10 and t = 500 (random input, seeded weights).

    .venv/bin/python benchmarks/openvino_probe.py --threads 2 [--bundle DIR] [--calls 30]
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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"
Call = Callable[[], np.ndarray]


def cpu_flags() -> list[str]:
    from ddpm_rt.precision import cpu_capabilities

    return sorted(cpu_capabilities().flags)


def ort_route(onnx: Path, x: np.ndarray, t: np.ndarray, threads: int) -> Call:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx), so, providers=["CPUExecutionProvider"])
    return _bound(sess, x, t)


def _bound(sess, x: np.ndarray, t: np.ndarray) -> Call:
    import onnxruntime as ort

    out = np.zeros_like(x)
    io = sess.io_binding()
    io.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(x))
    io.bind_ortvalue_input("t", ort.OrtValue.ortvalue_from_numpy(t))
    io.bind_ortvalue_output("out", ort.OrtValue.ortvalue_from_numpy(out))

    def call() -> np.ndarray:
        sess.run_with_iobinding(io)
        return out

    return call


def ov_route(onnx: Path, x: np.ndarray, t: np.ndarray, threads: int, precision: str,
             cache: Path | None) -> tuple[Call, float]:
    import openvino as ov

    core = ov.Core()
    if cache is not None:
        core.set_property({"CACHE_DIR": str(cache)})
    model = core.read_model(str(onnx))
    model.reshape({"x": list(x.shape), "t": list(t.shape)})
    t0 = time.perf_counter()
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
    })
    compile_s = time.perf_counter() - t0
    req = compiled.create_infer_request()
    out = np.zeros_like(x)
    req.set_tensor("x", ov.Tensor(x, shared_memory=True))
    req.set_tensor("t", ov.Tensor(t, shared_memory=True))
    req.set_tensor("out", ov.Tensor(out, shared_memory=True))

    def call() -> np.ndarray:
        req.start_async()
        req.wait()
        return out

    return call, compile_s


def ortep_route(onnx: Path, x: np.ndarray, t: np.ndarray, threads: int, precision: str) -> tuple[Call, float]:
    import onnxruntime as ort
    import onnxruntime_ep_openvino as ovep

    name = "openvino_ep"
    if name not in _REGISTERED:
        ort.register_execution_provider_library(name, ovep.get_library_path())
        _REGISTERED.add(name)
    devices = [d for d in ort.get_ep_devices()
               if d.ep_name == ovep.get_ep_name() and d.ep_metadata.get("ov_device") == "CPU"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.add_provider_for_devices(devices[:1], {
        "num_of_threads": str(threads),
        "load_config": json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": precision,
                                           "INFERENCE_NUM_THREADS": threads}}),
    })
    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(onnx), so)
    compile_s = time.perf_counter() - t0
    return _bound(sess, x, t), compile_s


_REGISTERED: set[str] = set()


def time_calls(call: Call, calls: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)}


def errors(call: Call, ref: Call, t: np.ndarray) -> dict[str, object]:
    got: dict[str, object] = {}
    outs = {}
    for step in (10.0, 500.0):
        t[:] = step  # an in-place update of a bound input, as the sampling loop does every step
        a, b = call().copy(), ref().copy()
        outs[step] = a
        got[f"max_abs_t{int(step)}"] = float(np.max(np.abs(a - b)))
        got[f"rel_rms_t{int(step)}"] = float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b ** 2)))
    # a route that copied its inputs when they were bound gives the same output for both t
    got["sees_inplace_updates"] = bool(np.max(np.abs(outs[10.0] - outs[500.0])) > 1e-3)
    return got


def cifar_bundle(path: Path | None) -> Path:
    if path is not None:
        return path
    from bench_cifar10_model import cifar10_source

    src, _ = cifar10_source(0, 0)
    return Path(src.bundle)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None, help="CIFAR-size bundle (default: export once)")
    ap.add_argument("--int8-bundle", type=Path, default=None, help="an int8 variant (ddpm_rt.exporter.int8) to time too")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "openvino_probe")
    args = ap.parse_args()

    onnx = cifar_bundle(args.bundle) / "denoiser.onnx"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 32, 32), dtype=np.float32)
    t = np.full((args.batch,), 500.0, np.float32)
    load = [os.getloadavg()]
    ref = ort_route(onnx, x, t, args.threads)
    rows = {"ort-fp32": {**time_calls(ref, args.calls), "compile_s": None}}

    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    precisions = ["f32", "bf16"] + (["f16"] if "FP16" in caps else [])
    with tempfile.TemporaryDirectory() as tmp:
        for p in precisions:
            call, compile_s = ov_route(onnx, x, t, args.threads, p, None)
            rows[f"ov-{p}"] = {**time_calls(call, args.calls), "compile_s": compile_s, **errors(call, ref, t)}
        # compile with a model cache: first (writes the blob) then again (loads it)
        for label in ("ov-bf16-cache-cold", "ov-bf16-cache-warm"):
            _, compile_s = ov_route(onnx, x, t, args.threads, "bf16", Path(tmp))
            rows[label] = {"compile_s": compile_s}
    if args.int8_bundle is not None:
        q = args.int8_bundle / "denoiser.onnx"
        rows["ort-int8"] = {**time_calls(ort_route(q, x, t, args.threads), args.calls), "compile_s": None,
                            **errors(ort_route(q, x, t, args.threads), ref, t)}
        call, compile_s = ov_route(q, x, t, args.threads, "f32", None)
        rows["ov-int8"] = {**time_calls(call, args.calls), "compile_s": compile_s, **errors(call, ref, t)}
    try:
        for p in precisions:
            call, compile_s = ortep_route(onnx, x, t, args.threads, p)
            rows[f"ortep-{p}"] = {**time_calls(call, args.calls), "compile_s": compile_s, **errors(call, ref, t)}
    except Exception as e:  # noqa: BLE001 - report why the plugin route did not run
        rows["ortep"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    load.append(os.getloadavg())

    import onnxruntime

    result = {
        "benchmark": "openvino_probe",
        "model": "DDPM CIFAR-10 U-Net (35.7M params, google/ddpm-cifar10-32 config), seeded random weights",
        "batch": args.batch, "threads": args.threads, "calls": args.calls,
        "rows": rows,
        "machine": {"cpu": _cpu_model(), "flags": cpu_flags(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "ov_capabilities": caps,
                    "loadavg_start": [round(v, 2) for v in load[0]],
                    "loadavg_end": [round(v, 2) for v in load[1]]},
        "versions": {"openvino": ov.__version__, "onnxruntime": onnxruntime.__version__,
                     "onnxruntime_ep_openvino": _version("onnxruntime-ep-openvino")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    for name, r in rows.items():
        print(name, {k: (float(f"{v:.3g}") if isinstance(v, float) else v) for k, v in r.items()})


def _cpu_model() -> str:
    from ddpm_rt.precision import cpu_capabilities

    return cpu_capabilities().model


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
