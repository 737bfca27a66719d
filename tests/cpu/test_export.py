"""`ddpm-rt export` / `inspect` through the real CLI: module:factory sources, fp16, and every
bad input giving one clear line, a non-zero exit and nothing half-written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests.cli_helpers import assert_one_line_error, run_cli
from tests.helpers.bundles import assert_nothing_written, call_main, read_manifest, save_weights
from tests.helpers.tiny import make, make_mlp

TINY = ("--model", "tests.helpers.tiny:make", "--sample-shape", "1,8,8")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    mlp_pickle = root / "mlp.pt"
    torch.save(make_mlp().state_dict(), mlp_pickle)
    return {
        "conv": save_weights(make(), root / "conv.safetensors"),
        "mlp": save_weights(make_mlp(), root / "mlp.safetensors"),
        "mlp_pickle": mlp_pickle,
    }


@pytest.fixture(scope="module")
def conv_bundle(weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "conv"
    proc = run_cli("export", *TINY, "--weights", str(weights["conv"]), "--out", str(out),
                   "--trajectory-steps", "20")
    assert proc.returncode == 0, proc.stderr
    return out


def test_module_factory_export_is_verified(conv_bundle: Path) -> None:
    m = read_manifest(conv_bundle)
    assert m["source"] == {"kind": "module", "ref": "tests.helpers.tiny:make"}
    assert m["parity"]["max_abs"] <= 1e-4
    assert {(c["batch"]) for c in m["parity"]["calls"]} == {1, 4}
    assert len({c["t"] for c in m["parity"]["calls"]}) == 3  # early, middle, late
    assert m["parity"]["trajectory"]["fp32"]["steps"] == 20
    assert m["spec"]["timestep_meaning"] == "train_index" and m["opset"] >= 17
    assert m["graph"]["parameters"] == sum(p.numel() for p in make().parameters())
    model = onnx.load(str(conv_bundle / "denoiser.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["ddpm_rt"]) == {k: v for k, v in m.items() if k != "onnx_sha256"}
    ops = {n.op_type for n in model.graph.node}
    assert "InstanceNormalization" in ops  # GroupNorm in the form ORT's fusion matches


def test_inspect_text_and_json(conv_bundle: Path, capsys) -> None:
    text = call_main(capsys, "inspect", str(conv_bundle))
    assert text.returncode == 0, text.stderr
    for needle in ("module: tests.helpers.tiny:make", "input  x", "['batch', 1, 8, 8]", "parity", "MAC"):
        assert needle in text.stdout, text.stdout
    js = call_main(capsys, "inspect", str(conv_bundle), "--json")
    info = json.loads(js.stdout)
    assert info["io"]["t"] == {"kind": "input", "dtype": "float32", "shape": ["batch"]}
    # conv 1→8 3x3, qkv 8→24 1x1, out 8→1 3x3 on 8x8, plus attention q·k and v·a (64x64x8 each)
    assert info["graph"]["macs_per_sample"] == 64 * (8 * 9 + 24 * 8 + 8 * 9) + 2 * 64 * 64 * 8 + 16 * 8


def test_fp16_keeps_float32_io_and_reports_trajectory(weights, tmp_path: Path, capsys) -> None:
    out = tmp_path / "half"
    proc = call_main(capsys, "export", *TINY, "--weights", str(weights["conv"]), "--out", str(out),
                   "--precision", "fp16", "--trajectory-steps", "10")
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(out)
    assert m["precision"] == "fp16"
    traj = m["parity"]["trajectory"]
    assert set(traj) == {"fp32", "fp16"} and traj["fp16"]["steps"] == 10
    assert traj["fp32"]["max_abs"] < traj["fp16"]["max_abs"] < 1.0
    model = onnx.load(str(out / "denoiser.onnx"))
    elem = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}
    assert elem == {"x": 1, "t": 1, "out": 1}  # float32 at the boundary
    kinds = {i.data_type for i in model.graph.initializer if len(i.dims) == 4}
    assert kinds == {onnx.TensorProto.FLOAT16}  # conv weights in fp16 (the t path stays fp32)


def test_pickle_refused_then_allowed(weights, tmp_path: Path, capsys) -> None:
    out = tmp_path / "mlp"
    args = ("export", "--model", "tests.helpers.tiny:make_mlp", "--weights", str(weights["mlp_pickle"]),
            "--sample-shape", "2", "--schedule", "cosine", "--num-train-timesteps", "40", "--out", str(out))
    refused = call_main(capsys, *args)
    assert_one_line_error(refused, "pickle", "--allow-pickle")
    assert_nothing_written(out)
    allowed = call_main(capsys, *args, "--allow-pickle", "--trajectory-steps", "0")
    assert allowed.returncode == 0, allowed.stderr
    assert read_manifest(out)["parity"]["max_abs"] <= 1e-4


def _not_a_model(tmp_path: Path) -> list[str]:
    folder = tmp_path / "random"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    return [str(folder)]


def _file_parent(tmp_path: Path) -> Path:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    return blocker / "bundle"


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing", ("not found",)),
        ("neither", ("not a model ddpm-rt can read",)),
        ("mismatch", ("do not match", "missing")),
        ("not_module", ("not a torch.nn.Module",)),
        ("bad_clip", ("--clip",)),
        ("parity", ("differs from eager", "tolerance")),
        ("out_under_file", ("cannot create bundle directory",)),
        ("out_not_bundle", ("not a bundle",)),
    ],
)
def test_bad_inputs_fail_cleanly(case: str, needles: tuple[str, ...], weights, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    mlp = ["--model", "tests.helpers.tiny:make_mlp", "--weights", str(weights["mlp"]), "--sample-shape", "2"]
    args = {
        "missing": [str(tmp_path / "nope")],
        "neither": _not_a_model(tmp_path),
        "mismatch": [*TINY, "--weights", str(weights["mlp"])],
        "not_module": ["--model", "tests.helpers.tiny:not_a_module", "--sample-shape", "2"],
        "bad_clip": [*mlp, "--clip", "3,1"],
        "parity": ["--model", "tests.helpers.tiny:make_data_dependent", "--sample-shape", "2"],
        "out_under_file": mlp,
        "out_not_bundle": mlp,
    }[case]
    if case == "out_under_file":
        out = _file_parent(tmp_path)
    if case == "out_not_bundle":
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
    # in-process through cli.main (same mapping as the console script; see the subprocess test below)
    proc = call_main(capsys, "export", *args, "--out", str(out), "--trajectory-steps", "0")
    assert_one_line_error(proc, *needles)
    if case == "out_not_bundle":
        assert (out / "precious.txt").read_text() == "keep me"
    else:
        assert_nothing_written(out)


def test_console_script_errors_are_one_line(tmp_path: Path) -> None:
    proc = run_cli("export", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert_one_line_error(proc, "not found")
    assert_nothing_written(tmp_path / "out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_read_only_output_parent(weights, tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        proc = run_cli("export", "--model", "tests.helpers.tiny:make_mlp", "--weights", str(weights["mlp"]),
                       "--sample-shape", "2", "--out", str(parent / "b"))
        assert_one_line_error(proc, "not writable")
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o700)


def test_exported_graph_runs_in_ort_at_other_batches(conv_bundle: Path) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(conv_bundle / "denoiser.onnx"), providers=["CPUExecutionProvider"])
    model = make().eval()
    for batch in (3, 7):
        x = np.random.default_rng(batch).standard_normal((batch, 1, 8, 8), dtype=np.float32)
        t = np.linspace(0, 999, batch, dtype=np.float32)
        got = sess.run(None, {"x": x, "t": t})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(x), torch.from_numpy(t)).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-4)
