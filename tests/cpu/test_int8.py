"""int8 bundles of the shipped digits model: a complete, checked bundle; sensitive layers kept float;
close to fp32 on trajectory inputs; runnable on ORT and OpenVINO; atomic on failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ddpm_rt.bundle.load import load_bundle
from ddpm_rt.errors import ConfigError, ExportError
from ddpm_rt.exporter import int8
from ddpm_rt.fsutil import file_sha256 as sha256_file
from ddpm_rt.runtime.backend import BackendOptions

FAST = int8.Int8Options(steps=10, trajectories=1, batch=4, method="minmax")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("int8")
    import shutil

    from ddpm_rt.models.catalog import shipped_bundle

    fp32 = Path(shutil.copytree(shipped_bundle("digits"), root / "bundles" / "digits"))
    int8.quantize_bundle(fp32, root / "digits-int8", FAST)
    return fp32, root / "digits-int8"


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path / "denoiser.onnx"), so, providers=["CPUExecutionProvider"])


def _trajectory_inputs(fp32: Path) -> list[dict[str, np.ndarray]]:
    """Inputs the model really sees (another seed than calibration): every 3rd of a 12-step DDIM run."""
    options = int8.Int8Options(steps=12, trajectories=1, batch=4, seed=7)
    return int8.record_trajectories(fp32 / "denoiser.onnx", load_bundle(fp32).spec, options)[::3]


def _rel_rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b ** 2)))


def test_bundle_is_complete_and_names_its_parent(bundles):
    fp32, q = bundles
    bundle = load_bundle(q)  # hash and contract checks pass
    m = bundle.manifest
    assert m["precision"] == "int8"
    assert m["parent"]["onnx_sha256"] == sha256_file(fp32 / "denoiser.onnx")
    assert m["quantization"]["kept_float"] == {"first_conv": 1, "last_conv": 1, "attention": 6}
    assert m["quantization"]["calibration"]["records"] == 10  # one 10-step trajectory
    assert m["spec"] == load_bundle(fp32).manifest["spec"]
    assert sorted(p.name for p in q.iterdir()) == ["ddpm_rt.json", "denoiser.onnx", "denoiser_fp32.onnx"]
    assert m["fp32_graph"]["sha256"] == m["parent"]["onnx_sha256"]  # it carries its parent's graph
    assert sha256_file(q / "denoiser_fp32.onnx") == m["parent"]["onnx_sha256"]


def test_sensitive_layers_stay_float(bundles):
    _, q = bundles
    model = onnx.load(str(q / "denoiser.onnx"))
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    kinds = [n.op_type for n in nodes]
    assert kinds.count("QuantizeLinear") > 20 and kinds.count("DequantizeLinear") > 20
    excluded = set(load_bundle(q).manifest["quantization"]["excluded_nodes"])
    for n in nodes:
        if n.name in excluded:  # none of its inputs come from a DequantizeLinear
            assert all(getattr(producer.get(i), "op_type", None) != "DequantizeLinear" for i in n.input), n.name
    quantized_convs = [n for n in nodes if n.op_type == "Conv" and n.name not in excluded]
    assert all(producer[n.input[0]].op_type == "DequantizeLinear" for n in quantized_convs)


def test_close_to_fp32_on_trajectory_inputs_on_ort_and_openvino(bundles):
    fp32, q = bundles
    ref, got = _session(fp32), _session(q)
    inputs = _trajectory_inputs(fp32)
    ref_out = [ref.run(None, feed)[0] for feed in inputs]
    errors = [_rel_rms(got.run(None, feed)[0], want) for feed, want in zip(inputs, ref_out, strict=True)]
    assert 0 < max(errors) < 0.05, errors  # quantized (not identical) but close

    pytest.importorskip("openvino")
    from ddpm_rt.runtime.openvino_backend import OpenVinoBackend

    with OpenVinoBackend.open(load_bundle(q), 4, BackendOptions(threads=1, precision="int8")) as be:
        ov_errors = [_rel_rms(be(feed["x"], feed["t"]), want) for feed, want in zip(inputs, ref_out, strict=True)]
    assert 0 < max(ov_errors) < 0.05, ov_errors


def test_sensitive_nodes_found_in_graph(bundles):
    fp32, _ = bundles
    keep = int8.sensitive_nodes(onnx.load(str(fp32 / "denoiser.onnx")))
    model = onnx.load(str(fp32 / "denoiser.onnx"))
    ops = {n.name: n.op_type for n in model.graph.node}
    assert {ops[n] for n in keep["attention"]} == {"MatMul"}
    assert ops[keep["first_conv"][0]] == ops[keep["last_conv"][0]] == "Conv"
    first = next(n for n in model.graph.node if n.name == keep["first_conv"][0])
    assert first.input[0] == "x"


def test_refuses_bad_inputs_and_is_atomic(bundles, tmp_path, monkeypatch):
    fp32, q = bundles
    with pytest.raises(ConfigError, match="minmax, percentile, entropy"):
        int8.quantize_bundle(fp32, tmp_path / "x", int8.Int8Options(method="kl"))
    with pytest.raises(ConfigError, match="quantize an fp32 one"):
        int8.quantize_bundle(q, tmp_path / "y", FAST)

    import onnxruntime.quantization as oq

    def broken(*a, **k):
        raise RuntimeError("calibration exploded")

    monkeypatch.setattr(oq, "quantize_static", broken)
    with pytest.raises(ExportError, match="calibration exploded"):
        int8.quantize_bundle(fp32, tmp_path / "z", FAST)
    assert not list(tmp_path.iterdir()), "a failed quantization left files behind"
