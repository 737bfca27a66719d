"""OpenVINO backend: parity with eager torch on the shipped digits model, shared buffers without
per-step allocation, the compiled-model cache, precision / CPU-capability errors (the
`ddpm_rt.precision` checks run everywhere; the backend tests skip where openvino is absent)."""

from __future__ import annotations

import json
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_rt.bundle.load import Bundle, load_bundle
from ddpm_rt.errors import ConfigError
from ddpm_rt.models.catalog import get_builtin
from ddpm_rt.precision import (
    CpuCapabilities,
    Precision,
    check_supported,
    cpu_capabilities,
    parse_cpuinfo,
)
from ddpm_rt.runtime.backend import BackendOptions
from ddpm_rt.runtime.loop import initial_noise, sample_loop
from ddpm_rt.schedule import ScheduleSpec
from ddpm_rt.sources import resolve_source
from ddpm_rt.spec import DiffusionSpec

F32 = BackendOptions(threads=1)
HAS_BF16 = cpu_capabilities().supports(Precision.BF16)


def _ov():
    pytest.importorskip("openvino")
    from ddpm_rt.runtime import openvino_backend

    return openvino_backend


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Bundle, torch.nn.Module]:
    import shutil

    from ddpm_rt.models.catalog import shipped_bundle

    source = resolve_source("digits")
    bundle = load_bundle(shutil.copytree(shipped_bundle("digits"), tmp_path_factory.mktemp("bundles") / "digits"))
    return bundle, source.load_module()


def _eager(module: torch.nn.Module):
    def call(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    return call


def _open(bundle, batch: int, options: BackendOptions = F32, tmp: Path | None = None):
    ovb = _ov()
    if tmp is not None:
        options = BackendOptions(threads=options.threads, precision=options.precision, cache_dir=str(tmp))
    return ovb.OpenVinoBackend.open(bundle, batch, options)


def test_single_call_and_trajectory_parity_with_eager(digits, tmp_path):
    bundle, module = digits
    x = initial_noise((3, 1, 16, 16), np.random.default_rng(0))
    t = np.array([999.0, 500.0, 0.0], np.float32)
    with _open(bundle, 4, tmp=tmp_path) as be:
        out = be(x, t)  # batch 3 on a backend compiled for 4: copied into its own padded buffer
        assert out.shape == (3, 1, 16, 16)
        assert np.max(np.abs(out - _eager(module)(x, t))) <= 1e-4
        plan = bundle.spec.plan(bundle.spec.sampler(10, sampler="ddim"))
        x4 = initial_noise((4, 1, 16, 16), np.random.default_rng(1))
        got = be.sample(plan, x4)
        assert be.info["inference_precision"] == "f32"
    want = sample_loop(_eager(module), plan, x4)
    assert np.max(np.abs(got - want)) <= 1e-4


def test_loop_buffers_are_shared_not_copied(digits, tmp_path):
    bundle, _ = digits
    with _open(bundle, 2, tmp=tmp_path) as be:
        x = np.ones((2, 1, 16, 16), np.float32)
        t = np.full(2, 500.0, np.float32)
        out1 = be(x, t).copy()
        t[:] = 10.0  # an in-place update of the shared input is seen by the next run
        out2 = be(x, t)
        assert out2 is be(x, t)  # the same output array every step
        assert np.max(np.abs(out2 - out1)) > 1e-3
        np.testing.assert_allclose(out2, be(x.copy(), t.copy()), atol=1e-6)
        out3 = be(np.asfortranarray(x.astype(np.float64)), t)  # foreign layout: copied, not rejected
        np.testing.assert_allclose(out3, out2, atol=1e-5)


def test_no_allocation_per_step(tmp_path):
    """tracemalloc: the traced peak of a 200-step run is that of a 10-step run (no per-step arrays)."""
    spec = DiffusionSpec(ScheduleSpec(kind="linear", num_train_timesteps=1000), "epsilon", (2,),
                         clip=(-1.0, 1.0))
    bundle = replace(_swissroll_bundle(tmp_path / "mlp", seed=0), spec=spec)
    plans = {n: spec.plan(spec.sampler(n, sampler="ddpm")) for n in (10, 200)}
    batch = 2048  # one [B, 2] float32 buffer = 16 KiB: any per-step array would show
    x_init = initial_noise((batch, 2), np.random.default_rng(0))
    with _open(bundle, batch) as be:
        for plan in plans.values():  # warm-up: plan tables and binding are made once
            be.sample(plan, x_init, rng=np.random.default_rng(0))
        peaks = {}
        for steps, plan in plans.items():
            tracemalloc.start()
            be.sample(plan, x_init, rng=np.random.default_rng(0))
            peaks[steps] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        # nothing kept per step (190 more steps would add 190 x 16 KiB); in about half the runs the
        # 200-step peak is 16-19 KiB above the 10-step one, once per run: a one-off block from
        # OpenVINO's side (not traced to its source yet), bounded here at 4 buffers. Transient
        # per-call allocations are excluded by the direct-call check below.
        assert peaks[200] <= peaks[10] + 4 * x_init.nbytes, peaks

        x, t = x_init.copy(), np.full(batch, 7.0, np.float32)
        for _ in range(300):  # shares x and t once; OpenVINO's Python layer settles its keep-alives
            be(x, t)
        grown = {}
        for calls in (20, 200):
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            for _ in range(calls):
                be(x, t)
            grown[calls] = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
        # a per-call array would add >= 16 KiB per call; on some runs (seen on a Xeon with AMX) the
        # traced size creeps by a few bytes per call inside OpenVINO's Python layer: bounded at 16 B/call
        assert grown[200] <= grown[20] + 180 * 16 and grown[200] < x.nbytes // 4, grown


def _swissroll_bundle(path: Path, seed: int) -> Bundle:
    """A bare contract-shaped graph (no manifest hash: the backend hashes the file)."""
    torch.manual_seed(seed)
    model = get_builtin("swissroll")
    path.mkdir(parents=True, exist_ok=True)
    onnx = path / "denoiser.onnx"
    torch.onnx.export(model.build().eval(), (torch.randn(2, 2), torch.full((2,), 3.0)), str(onnx),
                      input_names=["x", "t"], output_names=["out"],
                      dynamic_axes={n: {0: "batch"} for n in ("x", "t", "out")}, opset_version=17,
                      dynamo=False)
    return Bundle(path, {"precision": "fp32"}, model.spec, onnx, hash_checked=False)


def test_model_cache_reused_then_rebuilt_when_bundle_changes(tmp_path):
    ovb = _ov()
    bundle = _swissroll_bundle(tmp_path / "b", seed=0)
    x, t = np.ones((4, 2), np.float32), np.full(4, 10.0, np.float32)
    with ovb.OpenVinoBackend.open(bundle, 4, F32) as be:
        assert be.info["model_cache"] == "built"
        first = Path(be.info["cache_dir"])
        assert first.parent == tmp_path / "b" / ovb.CACHE_SUBDIR  # beside the bundle
        out_a = be(x, t).copy()
    assert any(first.glob("*.blob")), "OpenVINO wrote no compiled blob"
    assert json.loads((first / "fields.json").read_text())["batch"] == 4
    with ovb.OpenVinoBackend.open(bundle, 4, F32) as be:
        assert be.info["model_cache"] == "hit" and Path(be.info["cache_dir"]) == first
    with ovb.OpenVinoBackend.open(bundle, 2, F32) as be:  # another batch: another slot
        assert be.info["model_cache"] == "built" and Path(be.info["cache_dir"]) != first

    bundle2 = _swissroll_bundle(tmp_path / "b", seed=1)  # new weights in the same directory
    with ovb.OpenVinoBackend.open(bundle2, 4, F32) as be:
        assert be.info["model_cache"] == "built" and Path(be.info["cache_dir"]) != first
        out_b = be(x, t)
        torch.manual_seed(1)
        ref = get_builtin("swissroll").build().eval()
        with torch.inference_mode():
            want = ref(torch.from_numpy(x), torch.from_numpy(t)).numpy()
        assert np.max(np.abs(out_b - want)) <= 1e-4
        assert np.max(np.abs(out_b - out_a)) > 1e-3


def test_cache_key_covers_bundle_batch_precision_and_version():
    ovb = _ov()
    base = ovb.cache_fields("a" * 64, 4, Precision.FP32, "2026.4")
    key = ovb.cache_key(base)
    for change in ({"bundle_sha256": "b" * 64}, {"batch": 8}, {"precision": "bf16"}, {"openvino": "2027.0"}):
        assert ovb.cache_key({**base, **change}) != key, change
    assert ovb.cache_key(dict(base)) == key


def test_precision_errors_name_what_is_available(digits, tmp_path, monkeypatch):
    ovb = _ov()
    bundle, _ = digits
    with pytest.raises(ConfigError, match="unknown precision 'fp64'; choose one of fp32|fp16|bf16|int8"):
        _open(bundle, 1, BackendOptions(precision="fp64"), tmp_path)
    with pytest.raises(ConfigError, match="needs an int8 bundle"):
        _open(bundle, 1, BackendOptions(precision="int8"), tmp_path)
    # OpenVINO's own capability list decides on a CPU that has the instructions (pinned here, so the
    # check does not depend on this machine's CPU)
    from ddpm_rt import precision as precision_module

    fp16_cpu = precision_module.parse_cpuinfo("model name\t: Test CPU\nflags\t\t: avx2 avx512f avx512_fp16\n")
    monkeypatch.setattr(precision_module, "cpu_capabilities", lambda *a, **k: fp16_cpu)
    with pytest.raises(ConfigError, match=r"cannot run --precision fp16 .* available: fp32, bf16, int8"):
        ovb.check_precision("fp16", "fp32", ["FP32", "BF16", "INT8"])


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has neither avx512_bf16 nor amx_bf16")
def test_bf16_runs_close_to_f32(digits, tmp_path):
    bundle, module = digits
    x = initial_noise((2, 1, 16, 16), np.random.default_rng(0))
    t = np.array([700.0, 20.0], np.float32)
    with _open(bundle, 2, BackendOptions(threads=1, precision="bf16"), tmp_path) as be:
        assert be.info["inference_precision"] == "bf16"
        out = be(x, t)
        ref = _eager(module)(x, t)
        rel = np.sqrt(np.mean((out - ref) ** 2) / np.mean(ref ** 2))
        assert 0 < rel < 0.05, rel  # reduced, but close


def test_unavailable_reason_names_the_extra(monkeypatch):
    import importlib.util

    from ddpm_rt.runtime import openvino_backend as ovb

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    reason = ovb.OpenVinoBackend.unavailable_reason()
    assert reason and "pip install 'ddpm-rt[openvino]'" in reason and "\n" not in reason


def test_asking_whether_openvino_can_run_does_not_import_it():
    import subprocess
    import sys

    code = ("import sys; from ddpm_rt.runtime.openvino_backend import OpenVinoBackend; "
            "assert OpenVinoBackend.unavailable_reason() is None; print('openvino' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_importing_ddpm_rt_does_not_import_openvino():
    import subprocess
    import sys

    code = ("import sys, ddpm_rt, ddpm_rt.precision, ddpm_rt.runtime.openvino_backend; "
            "print('openvino' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- ddpm_rt.precision ------------------------------------------------------------------------

CPUINFO_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx2 fma\n"
CPUINFO_SPR = ("model name\t: Intel(R) Xeon(R) Platinum 8480+\n"
               "flags\t\t: avx2 avx512f avx512_bf16 avx512_fp16 amx_tile amx_bf16 amx_int8 avx_vnni\n")


def test_parse_and_enum():
    assert Precision.parse("BF16") is Precision.BF16 and str(Precision.INT8) == "int8"
    assert Precision.parse(Precision.FP16) is Precision.FP16
    assert [p.value for p in Precision] == ["fp32", "fp16", "bf16", "int8"]
    with pytest.raises(ConfigError) as e:
        Precision.parse("half")
    assert "\n" not in str(e.value) and "fp32|fp16|bf16|int8" in str(e.value)


def test_cpu_capabilities_from_cpuinfo():
    epyc = parse_cpuinfo(CPUINFO_AVX2)
    assert epyc.model == "AMD EPYC 7B13" and epyc.flags == {"avx2", "fma"}
    assert epyc.available() == [Precision.FP32, Precision.INT8] and epyc.isa_class == "avx2"
    spr = parse_cpuinfo(CPUINFO_SPR)
    assert spr.isa_class == "amx" and set(spr.available()) == set(Precision)
    assert parse_cpuinfo("").available() == [Precision.FP32]


def test_check_supported_names_what_is_available():
    epyc = parse_cpuinfo(CPUINFO_AVX2)
    with pytest.raises(ConfigError, match=r"needs a CPU with avx512_bf16 or amx_bf16.*can run fp32, int8 here"):
        check_supported("bf16", "openvino", {"fp32", "bf16", "int8"}, cpu=epyc)
    with pytest.raises(ConfigError, match=r"backend 'ort' does not run --precision bf16; it runs fp32, int8"):
        check_supported("bf16", "ort", {"fp32", "int8"}, cpu=epyc)
    # GPU backends are not held to the host CPU's flags
    assert check_supported("fp16", "trt", {"fp32", "fp16"}, device="cuda", cpu=epyc) is Precision.FP16
    spr = CpuCapabilities("x", frozenset({"amx_bf16"}))
    assert check_supported("bf16", "openvino", {"bf16"}, cpu=spr) is Precision.BF16
