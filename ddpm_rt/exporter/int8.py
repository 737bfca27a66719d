"""int8: a static-quantized (QDQ) variant of an fp32 bundle, calibrated on the model's own trajectories.

Calibration data is what the denoiser really sees when it samples: the fp32 bundle is run
through ONNX Runtime along DDIM trajectories from fixed noise, and every step's (x, t) is
recorded, so early (pure noise, large t), middle and late (nearly clean, small t) inputs are
all represented. `onnxruntime.quantization.quantize_static` then inserts QuantizeLinear /
DequantizeLinear pairs around Conv / MatMul / Gemm (per-channel symmetric int8 weights, uint8
activations), except in the layers diffusion models are known to be sensitive in, kept float:

* the first conv (reads the raw noisy sample) and the last conv (writes the prediction);
* the attention matmuls on both sides of each Softmax (scores and the weighted sum);
* normalisation and Softmax themselves are never quantized (not in the quantized op types).

The result is a complete bundle (``denoiser.onnx`` + ``ddpm_rt.json`` with precision "int8" and the
fp32 parent's sha256), written atomically. It runs on ORT's CPU EP and on OpenVINO.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_rt.bundle.manifest import (
    FP32_GRAPH,
    FP32_GRAPH_FILE,
    MANIFEST_FILE,
    METADATA_KEY,
    ONNX_FILE,
    dumps,
    with_hash,
    without_hash,
)
from ddpm_rt.errors import ConfigError, ExportError, first_line

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class Int8Options:
    """How to calibrate. The defaults take ~100 recorded calls on a small model."""

    steps: int = 20  # DDIM steps per calibration trajectory (every step is recorded)
    trajectories: int = 2  # fixed-noise starting points (seeds seed, seed + 1, ...)
    batch: int = 4  # samples per trajectory call
    seed: int = 0
    method: str = "percentile"  # minmax | percentile | entropy
    percentile: float = 99.999
    keep_float: bool = True  # False quantizes the sensitive layers too (for testing the guard)
    exclude: tuple[str, ...] = field(default_factory=tuple)  # extra node names kept float


def record_trajectories(onnx_path: Path, spec: Any, options: Int8Options) -> list[dict[str, np.ndarray]]:
    """[{x, t, *cond}] fed to the fp32 graph at every step of `options.trajectories` DDIM runs (ORT CPU).

    A conditional model runs each trajectory on labels drawn over its range, the null among them
    (`parity.draw_conditioning`), so both CFG halves are calibrated.
    """
    import onnxruntime as ort

    from ddpm_rt.exporter.parity import draw_conditioning
    from ddpm_rt.runtime.loop import initial_noise, sample_loop

    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    records: list[dict[str, np.ndarray]] = []
    cond: dict[str, np.ndarray] = {}

    def model(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        feed = {"x": x.copy(), "t": t.copy(), **cond}
        records.append(feed)
        return session.run(["out"], feed)[0]

    plan = spec.plan(spec.sampler(options.steps, sampler="ddim"))
    shape = (options.batch, *spec.sample_shape)
    for k in range(options.trajectories):
        x_init = initial_noise(shape, np.random.default_rng(options.seed + k))
        drawn = draw_conditioning(spec.conditioning, options.batch, np.random.default_rng(options.seed + k),
                                  with_null=options.batch > 1 or k % 2 == 1)
        cond = {c.name: v for c, v in zip(spec.conditioning, drawn, strict=True)}
        sample_loop(model, plan, x_init, rng=np.random.default_rng(options.seed + k))
    return records


def sensitive_nodes(model: Any) -> dict[str, list[str]]:
    """Names of Conv / MatMul / Gemm nodes kept float: first and last conv, attention around Softmax."""
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    convs = [n for n in nodes if n.op_type == "Conv"]
    graph_out = {o.name for o in model.graph.output}

    def upstream(name: str, want: str, hops: int = 4) -> Any:
        n = producer.get(name)
        while n is not None and hops > 0:
            if n.op_type == want:
                return n
            n = producer.get(n.input[0]) if n.input else None
            hops -= 1
        return None

    def downstream(name: str, want: str, hops: int = 4) -> list[Any]:
        found, frontier = [], list(consumers.get(name, []))
        for _ in range(hops):
            nxt = []
            for n in frontier:
                (found if n.op_type == want else nxt).append(n)
            frontier = [c for n in nxt for o in n.output for c in consumers.get(o, [])]
        return found

    attention = []
    for sm in (n for n in nodes if n.op_type == "Softmax"):
        before = upstream(sm.input[0], "MatMul")
        attention += [before.name] if before is not None else []
        attention += [n.name for n in downstream(sm.output[0], "MatMul")]
    last = [n.name for n in convs if any(o in graph_out for o in n.output)]
    if not last:  # the prediction may leave the last conv through a reshape or an add
        last = [n.name for n in convs[-1:]]
    return {"first_conv": [n.name for n in convs[:1]], "last_conv": last, "attention": attention}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer prints progress and logs pre-processing advice on the root logger: hide both."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over recorded (x, t) pairs."""

    def __init__(self, records: list[dict[str, np.ndarray]]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(records)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - unused by quantize_static today
        pass


def _calibrate_method(options: Int8Options) -> tuple[Any, dict[str, Any]]:
    from onnxruntime.quantization import CalibrationMethod

    if options.method not in CALIBRATION_METHODS:
        raise ConfigError(f"unknown calibration method {options.method!r}; choose one of "
                          f"{', '.join(CALIBRATION_METHODS)}")
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[options.method]
    extra = {"CalibPercentile": options.percentile} if options.method == "percentile" else {}
    return method, extra


def quantize_bundle(fp32_bundle_dir: Path, out_dir: Path, options: Int8Options | None = None) -> dict[str, Any]:
    """Write an int8 QDQ bundle of the fp32 bundle at `fp32_bundle_dir` to `out_dir`; return its manifest."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.fsutil import atomic_directory, file_sha256

    options = options or Int8Options()
    parent = load_bundle(Path(fp32_bundle_dir))
    if parent.manifest.get("precision", "fp32") != "fp32":
        raise ConfigError(f"{fp32_bundle_dir} is a {parent.manifest['precision']} bundle; quantize an fp32 one")
    method, extra = _calibrate_method(options)
    records = record_trajectories(parent.onnx_path, parent.spec, options)
    model = onnx.load(str(parent.onnx_path))
    keep = sensitive_nodes(model) if options.keep_float else {}
    excluded = sorted({n for names in keep.values() for n in names} | set(options.exclude))
    parent_sha = parent.manifest.get("onnx_sha256") or file_sha256(parent.onnx_path)
    manifest = {
        **without_hash(parent.manifest),
        "precision": "int8",
        "parent": {"onnx_sha256": parent_sha, "precision": "fp32", "directory": str(parent.directory)},
        "quantization": {
            "format": "QDQ", "op_types": list(QUANTIZED_OPS), "weights": "int8 per-channel symmetric",
            "activations": "uint8 asymmetric", "calibration": {**asdict(options), "records": len(records)},
            "kept_float": {k: len(v) for k, v in keep.items()}, "excluded_nodes": excluded,
        },
    }
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        raw = tmp / "quantized.onnx"
        try:
            with _quiet():
                quantize_static(
                    str(parent.onnx_path), str(raw), _Reader(records), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, reduce_range=False,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded, calibrate_method=method,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False, **extra},
                )
        except Exception as e:  # noqa: BLE001 - the quantizer raises untyped errors
            raise ExportError(f"int8 quantization of {parent.onnx_path} failed: {first_line(e)}") from None
        q = onnx.load(str(raw))
        raw.unlink()
        for p in list(q.metadata_props):
            if p.key == METADATA_KEY:
                q.metadata_props.remove(p)
        q.metadata_props.add(key=METADATA_KEY, value=json.dumps(manifest, separators=(",", ":")))
        onnx.save(q, str(tmp / ONNX_FILE))
        for leftover in tmp.glob("*"):  # the calibrator's augmented model and its data, if any
            if leftover.name != ONNX_FILE:
                leftover.unlink()
        # the fp32 graph travels with it: `auto` ranks fp32/bf16/fp16 on it beside int8 on this one
        shutil.copyfile(parent.onnx_path, tmp / FP32_GRAPH_FILE)  # a copy: never a link into its parent
        manifest[FP32_GRAPH] = {"file": FP32_GRAPH_FILE, "sha256": parent_sha}
        manifest = with_hash(manifest, file_sha256(tmp / ONNX_FILE))
        (tmp / MANIFEST_FILE).write_text(dumps(manifest))
    return manifest
