"""`ddpm-rt build` / `doctor` / `selfcheck` without a GPU: pure build helpers, availability, error paths.

Every GPU path must fail here with one `error:` line and exit code != 0; `auto`
must never pick a GPU backend; importing ddpm-rt must never import tensorrt.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddpm_rt.errors import BackendUnavailable, ConfigError
from ddpm_rt.gpu.availability import CUDA_MISSING, NO_NVIDIA, TRT_MISSING, nvidia_device_present
from ddpm_rt.gpu.trt_build import (
    BuildConfig,
    Precision,
    keep_fp32,
    layers_kept_fp32,
    profile_shapes,
)
from tests.cli_helpers import assert_one_line_error, run_cli

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error paths")
# the first thing missing on a machine without CUDA: the device itself, or a CUDA build of torch
NO_CUDA_REASON = CUDA_MISSING if nvidia_device_present() else NO_NVIDIA


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    """The real `main()` in-process (fast: no interpreter start): exit code and stderr lines."""
    from ddpm_rt import cli

    monkeypatch.setattr(sys, "argv", ["ddpm-rt", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return exc.value.code, capsys.readouterr().err.strip().splitlines()


def assert_one_error(code: int, err: list[str], *needles: str) -> None:
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle.lower() in err[0].lower(), (needle, err[0])

# -- pure build helpers ----------------------------------------------------------------------


def test_profile_shapes_image_and_vector() -> None:
    assert profile_shapes((3, 32, 32), 1, 8, 16) == {
        "x": ((1, 3, 32, 32), (8, 3, 32, 32), (16, 3, 32, 32)),
        "t": ((1,), (8,), (16,)),
    }
    assert profile_shapes((2,), 4, 4, 4) == {"x": ((4, 2), (4, 2), (4, 2)), "t": ((4,), (4,), (4,))}


@pytest.mark.parametrize("lo,opt,hi", [(0, 1, 2), (4, 2, 8), (1, 9, 8)])
def test_profile_shapes_reject_bad_ranges(lo: int, opt: int, hi: int) -> None:
    with pytest.raises(ConfigError, match="--min-batch <= --opt-batch <= --max-batch"):
        profile_shapes((1, 16, 16), lo, opt, hi)


def test_precision_is_one_enum() -> None:
    assert Precision.parse("bf16") is Precision.BF16 and Precision.parse(Precision.FP16) is Precision.FP16
    with pytest.raises(ConfigError, match="fp32|fp16|bf16|int8"):
        Precision.parse("fp64")
    with pytest.raises(ConfigError, match="fp32, fp16 or bf16"):  # no int8 TensorRT engines
        BuildConfig(precision="int8")


LAYERS = [
    ("CONVOLUTION", "/down.0/conv/Conv"),
    ("NORMALIZATION", "/down.0/norm1/GroupNormalization"),
    ("LayerType.SOFTMAX", "/attn/Softmax"),
    ("REDUCE", "/norm/ReduceMean"),
    ("ELEMENTWISE", "/mid/norm2/Sub"),  # a piece of a decomposed GroupNorm
    ("ELEMENTWISE", "/down.0/Add"),
    ("MATRIX_MULTIPLY", "/attn/MatMul"),
    ("UNARY", "/attn/softmax/Exp"),
    ("CONSTANT", "/norm/Constant"),  # weights / constants are not pinned
]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_keeps_norm_softmax_reduce_in_fp32(precision: str) -> None:
    assert layers_kept_fp32(LAYERS, precision) == [1, 2, 3, 4, 7]


def test_fp32_pins_nothing() -> None:
    assert layers_kept_fp32(LAYERS, "fp32") == []
    assert keep_fp32("SOFTMAX") and not keep_fp32("CONVOLUTION", "/norm/conv")


def test_build_config_validates() -> None:
    with pytest.raises(ConfigError, match="0..5"):
        BuildConfig(opt_level=7)
    with pytest.raises(ConfigError, match="workspace"):
        BuildConfig(workspace_mib=0)
    with pytest.raises(ConfigError, match="min-batch"):
        BuildConfig(min_batch=4, opt_batch=2, max_batch=8)
    assert BuildConfig(precision="fp16").precision is Precision.FP16


# -- availability ----------------------------------------------------------------------------


@no_cuda
def test_gpu_backends_unavailable_with_one_line_reasons() -> None:
    from ddpm_rt.prepare import choose_backend
    from ddpm_rt.registry import available_backends, check_backend, unavailable_reason
    from ddpm_rt.sources import resolve_source

    assert unavailable_reason("torch-cuda") == NO_CUDA_REASON
    assert unavailable_reason("trt") == NO_CUDA_REASON  # CUDA is the first thing missing
    usable = available_backends()
    assert "trt" not in usable and "torch-cuda" not in usable
    assert choose_backend("auto", resolve_source("swissroll")).name not in ("trt", "torch-cuda")
    with pytest.raises(BackendUnavailable, match=NO_CUDA_REASON.split(" (")[0].split(":")[0]):
        check_backend("trt")


def test_no_nvidia_device_is_known_without_torch(tmp_path) -> None:
    dev, proc = tmp_path / "dev", tmp_path / "proc-nvidia"
    dev.mkdir()
    assert not nvidia_device_present(dev, proc)
    (dev / "nvidia0").touch()
    assert nvidia_device_present(dev, proc)
    (dev / "nvidia0").unlink()
    proc.mkdir()
    assert nvidia_device_present(dev, proc)


@pytest.mark.skipif(nvidia_device_present(), reason="this machine shows an NVIDIA device")
def test_gpu_availability_imports_no_torch_without_a_device() -> None:
    code = ("import sys\nfrom ddpm_rt.registry import available_backends, unavailable_reason\n"
            "usable = available_backends()\n"
            "assert unavailable_reason('torch-cuda').startswith('no NVIDIA GPU'), unavailable_reason('torch-cuda')\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('ddpm_rt.gpu.trt', "
            "'ddpm_rt.gpu.torch', 'ddpm_rt.gpu.ort')))\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_tensorrt_missing_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import ddpm_rt.gpu.availability as doctor
    from ddpm_rt.gpu.trt_backend import TrtBackend

    real = importlib.util.find_spec
    monkeypatch.setattr(doctor, "cuda_missing_reason", lambda: None)  # pretend CUDA is there
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorrt" else real(n, *a))
    assert TrtBackend.unavailable_reason() == TRT_MISSING
    with pytest.raises(BackendUnavailable, match=r"pip install 'ddpm-rt\[trt\]'"):
        doctor.require_tensorrt()


def test_build_without_tensorrt_through_main(monkeypatch, capsys, tmp_path) -> None:
    import importlib.util

    import ddpm_rt.gpu.availability as doctor

    real = importlib.util.find_spec
    monkeypatch.setattr(doctor, "cuda_missing_reason", lambda: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorrt" else real(n, *a))
    code, err = run_main(monkeypatch, capsys, "build", str(tmp_path))
    assert code == 2 and err == [f"error: {TRT_MISSING}"]


def test_import_never_pulls_tensorrt() -> None:
    code = (
        "import sys, ddpm_rt, ddpm_rt.cli, ddpm_rt.doctor, ddpm_rt.gpu.trt_build, "
        "ddpm_rt.gpu.engine_cache, ddpm_rt.gpu.trt_backend, ddpm_rt.gpu.torch_cuda_backend, "
        "ddpm_rt.gpu.device_loop\n"
        "from ddpm_rt.registry import available_backends; available_backends()\n"
        "assert 'tensorrt' not in sys.modules, 'tensorrt imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# -- CLI error paths (real entry point, subprocess) ------------------------------------------


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--precision", "int8"], ["precision", "fp16"]),
        (["--min-batch", "8", "--max-batch", "4"], ["min-batch", "max-batch"]),
        (["--opt-level", "9"], ["opt-level", "0..5"]),
    ],
)
def test_build_bad_arguments(monkeypatch, capsys, tmp_path, args, needles) -> None:
    assert_one_error(*run_main(monkeypatch, capsys, "build", str(tmp_path), *args), *needles)


def test_build_missing_bundle(tmp_path) -> None:
    proc = run_cli("build", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert_one_line_error(proc, "not found", "ddpm-rt export")


@no_cuda
def test_build_without_cuda(tmp_path) -> None:
    proc = run_cli("build", str(tmp_path))
    assert proc.returncode == 2
    assert_one_line_error(proc, NO_CUDA_REASON)


@no_cuda
def test_selfcheck_without_cuda(tmp_path) -> None:
    proc = run_cli("selfcheck", "--out", str(tmp_path / "sc"), "--models", "swissroll")
    assert proc.returncode == 2
    assert_one_line_error(proc, NO_CUDA_REASON)
    assert not (tmp_path / "sc").exists()  # nothing half-written


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--models", "nope"], ["--models", "cifar10-unet"]),
        (["--batches", "1,x"], ["--batches"]),
        (["--precisions", "int8"], ["--precisions", "fp16"]),
        (["--steps", "0"], ["--steps"]),
    ],
)
def test_selfcheck_bad_arguments(monkeypatch, capsys, tmp_path, args, needles) -> None:
    assert_one_error(*run_main(monkeypatch, capsys, "selfcheck", "--out", str(tmp_path), *args), *needles)


@no_cuda
@pytest.mark.parametrize("backend", ["trt", "torch-cuda"])
def test_sample_on_gpu_backend_without_cuda(monkeypatch, capsys, tmp_path, backend) -> None:
    code, err = run_main(monkeypatch, capsys, "sample", "swissroll", "--steps", "5", "--backend", backend,
                         "--out", str(tmp_path / "s.npy"))
    err = [ln for ln in err if not ln.startswith("warning:")]  # untrained built-in note
    assert_one_error(code, err, backend, NO_CUDA_REASON)


def test_doctor_text(monkeypatch, capsys) -> None:
    from ddpm_rt import cli

    monkeypatch.setattr(sys, "argv", ["ddpm-rt", "doctor"])
    cli.main()  # returns normally: exit code 0
    out = capsys.readouterr().out
    assert "backends" in out and "auto picks:" in out and "tensorrt" in out


def test_doctor_json() -> None:
    proc = run_cli("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report["backends"]) >= {"trt", "torch-cuda", "ort", "torch"}
    assert report["torch"]["installed"] and "version" in report["onnxruntime"]
    for b in report["backends"].values():
        assert b["available"] == (b["reason"] is None)
        assert b["reason"] is None or "\n" not in b["reason"]
    if not torch.cuda.is_available():
        assert report["auto"] not in ("trt", "torch-cuda", "ort-cuda", "ort-trt")
        assert report["backends"]["trt"]["reason"] == NO_CUDA_REASON


# -- selfcheck report helpers (formatting only; no figures are produced here) -----------------


def test_parity_metrics() -> None:
    from ddpm_rt.bench.parity import parity_metrics

    ref = np.ones((2, 3), dtype=np.float32)
    m = parity_metrics(ref + 0.01, ref)
    assert m["finite"] and m["max_abs"] == pytest.approx(0.01, rel=1e-4)
    assert m["rel_rms"] == pytest.approx(0.01, rel=1e-4)
    assert not parity_metrics(ref * np.nan, ref)["finite"]


def test_pinned_source_shares_one_set_of_weights() -> None:
    # an untrained built-in builds fresh random weights per load; the self-check pins one set
    from ddpm_rt.bench.selfcheck import pinned_source
    from ddpm_rt.sources import resolve_source

    src = pinned_source(resolve_source("swissroll"))
    a, b = src.load_module(), src.load_module()
    assert a is not b
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_selfcheck_report_shows_one_step_and_1ulp_scale() -> None:
    from ddpm_rt.bench.selfcheck import render_markdown

    timing = {"median": 2.0, "p10": 1.9, "p90": 2.2, "speedup_vs_eager": 1.0}
    parity = {"max_abs": 0.31, "rel_rms": 0.42, "finite": True, "one_step_rel_rms": 3.0e-7,
              "tolerance_rel_rms": 1.1, "ok": True}
    report = {
        "environment": {"torch": {"devices": [{"name": "GPU X"}], "version": "2", "cuda_build": "12"},
                        "tensorrt": {"version": "10"}, "python": "3.11"},
        "date": "today", "repeats": 3,
        "models": [{"model": "cifar10-unet", "sampler": "ddim", "steps": 50, "sample_shape": [3, 32, 32],
                    "untrained": True, "bench": {"1": {"eager": timing, "trt-fp32": timing}},
                    "parity": {"1": {"trt-fp32": parity}}, "eager_1ulp_rel_rms": {"1": 0.55}}],
    }
    md = render_markdown(report)
    row = next(line for line in md.splitlines() if line.startswith("| 1 | trt-fp32 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["1", "trt-fp32", "4.20e-01", "3.10e-01", "3.00e-07", "5.50e-01", "1e+00", "yes"]
    assert "1 step rel RMS" in md and "eager 1 ulp" in md
