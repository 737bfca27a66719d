"""Quality guard and `auto` ranking: verdicts and rankings cached per key and re-done when it changes,
a variant over tolerance refused with its figures, rankings reused without re-measuring, only the
candidates that can win guarded, chaotic models judged per call, int8 bundles ranked beside their fp32
graph."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from ddpm_rt.bundle.load import Bundle, load_bundle
from ddpm_rt.bundle.manifest import without_hash
from ddpm_rt.errors import ConfigError
from ddpm_rt.precision import CpuCapabilities, Precision
from ddpm_rt.runtime import quality_guard as qg
from ddpm_rt.runtime import ranking, verdicts

STEPS = 10  # guard trajectory length in these tests (the default is the model's own, 50 for digits)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Bundle:
    import shutil

    from ddpm_rt.models.catalog import shipped_bundle

    return load_bundle(shutil.copytree(shipped_bundle("digits"), tmp_path_factory.mktemp("bundles") / "digits"))


@pytest.fixture(scope="module")
def perturbed(digits, tmp_path_factory) -> Bundle:
    """The digits graph with its output scaled by 1.5: an 'int8 variant' that is plainly wrong."""
    model = onnx.load(str(digits.onnx_path))
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_raw" if o == out else o for o in node.output]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(1.5, np.float32), "scale"))
    model.graph.node.append(onnx.helper.make_node("Mul", [f"{out}_raw", "scale"], [out]))
    path = tmp_path_factory.mktemp("perturbed") / "denoiser.onnx"
    onnx.save(model, str(path))
    manifest = {**without_hash(digits.manifest), "precision": "int8"}
    return Bundle(path.parent, manifest, digits.spec, path, hash_checked=False)


def _no_open(*a, **k):
    raise AssertionError("a cached verdict or ranking must not open a backend")


def _needs_openvino():
    pytest.importorskip("openvino")


def test_guard_passes_an_exact_path_and_reuses_its_verdict(digits, tmp_path):
    _needs_openvino()
    v = qg.guard(digits, "openvino", "fp32", steps=STEPS, cache_dir=tmp_path)
    assert v.ok and not v.cached and v.steps == STEPS and v.max_abs <= 1e-4
    files = list((tmp_path / verdicts.CACHE_SUBDIR).glob("guard-*.json"))
    assert [f.name for f in files] == [f"guard-{v.key}.json"]
    again = qg.guard(digits, "openvino", "fp32", steps=STEPS, cache_dir=tmp_path, opener=_no_open)
    assert again.cached and again.max_abs == v.max_abs and again.key == v.key


def test_guard_key_covers_precision_cpu_versions_and_graph(digits, perturbed, monkeypatch):
    base = ranking.Candidate("openvino", Precision.FP32)
    fields = qg.guard_fields(digits, base.backend, base.precision, base.bundle, STEPS, 2, 0, qg.Tolerance())
    key = verdicts.key(fields)
    assert {"bundle_sha256", "candidate_sha256", "backend", "precision", "cpu", "versions"} <= set(fields)
    for other in (replace(base, precision=Precision.BF16), replace(base, backend="ort"),
                  replace(base, bundle=perturbed)):
        assert verdicts.key(qg.guard_fields(digits, other.backend, other.precision, other.bundle, STEPS, 2, 0, qg.Tolerance())) != key
    monkeypatch.setattr(qg, "cpu_capabilities", lambda: CpuCapabilities("EPYC", frozenset({"avx2"})))
    assert verdicts.key(qg.guard_fields(digits, base.backend, base.precision, base.bundle, STEPS, 2, 0, qg.Tolerance())) != key
    monkeypatch.setattr(verdicts, "runtime_versions", lambda: {"onnxruntime": "9.9"})
    assert "9.9" in json.dumps(qg.guard_fields(digits, base.backend, base.precision, base.bundle, STEPS, 2, 0, qg.Tolerance()))


def test_changed_machine_or_tampered_entry_is_checked_again(digits, tmp_path, monkeypatch):
    first = qg.guard(digits, "ort", "fp32", steps=STEPS, batch=1, cache_dir=tmp_path)
    path = tmp_path / verdicts.CACHE_SUBDIR / f"guard-{first.key}.json"
    data = json.loads(path.read_text())
    data["fields"]["precision"] = "bf16"  # an entry whose fields do not match its name
    path.write_text(json.dumps(data))
    assert not qg.guard(digits, "ort", "fp32", steps=STEPS, batch=1, cache_dir=tmp_path).cached
    monkeypatch.setattr(qg, "cpu_capabilities", lambda: CpuCapabilities("EPYC", frozenset({"avx2"})))
    moved = qg.guard(digits, "ort", "fp32", steps=STEPS, batch=1, cache_dir=tmp_path)
    assert not moved.cached and moved.key != first.key


def test_variant_over_tolerance_is_refused_with_its_figures(digits, perturbed, tmp_path):
    v = qg.guard(digits, "ort", "int8", candidate_bundle=perturbed, steps=STEPS, cache_dir=tmp_path)
    assert not v.ok and v.rel_rms > v.tolerance["rel_rms"]
    with pytest.raises(ConfigError) as e:
        qg.require_ok(v)
    msg = str(e.value)
    assert "\n" not in msg and f"{v.rel_rms:.3g}" in msg and "--allow-inexact" in msg
    qg.require_ok(v, allow_inexact=True)  # explicitly allowed: no error
    cached = qg.guard(digits, "ort", "int8", candidate_bundle=perturbed, steps=STEPS, cache_dir=tmp_path,
                             opener=_no_open)
    assert cached.cached and not cached.ok  # the refusal is remembered too
    shown = qg.cached_verdicts(digits, tmp_path)  # what inspect / doctor list
    assert [(x.backend, x.precision, x.ok) for x in shown] == [("ort", "int8", False)]


def test_default_candidates_follow_this_cpu(perturbed, monkeypatch):
    epyc = CpuCapabilities("EPYC", frozenset({"avx2"}))
    monkeypatch.setattr(ranking, "cpu_capabilities", lambda: epyc)
    labels = [c.label for c in ranking.default_candidates(perturbed)]
    assert "openvino bf16" not in labels and "openvino fp16" not in labels
    assert labels[0] == "ort fp32" and "ort int8" in labels
    assert "ort int8" not in [c.label for c in ranking.default_candidates()]


def test_rank_guards_the_fastest_first_and_caches_the_ranking(digits, perturbed, tmp_path):
    _needs_openvino()
    candidates = [ranking.Candidate("ort", Precision.FP32), ranking.Candidate("openvino", Precision.FP32),
                  ranking.Candidate("ort", Precision.INT8, perturbed)]
    clock = {"ort fp32": 3.0, "openvino fp32": 2.0, "ort int8": 1.0}  # a stand-in clock: who is faster is given
    timed: list[str] = []

    def timer(be, bundle, batch, budget_s):
        assert budget_s <= 1.0  # the budget is shared between the candidates
        label = f"{be.name} {'int8' if be.info['onnx'] == str(perturbed.onnx_path) else 'fp32'}"
        timed.append(label)
        return clock[label]

    guarded: list[str] = []
    real_guard = qg.guard

    def spy(*a, **k):
        guarded.append(f"{a[1]} {Precision.parse(a[2]).value}")
        return real_guard(*a, **k)

    ranking.guard = spy  # the module-level name rank calls
    try:
        r = ranking.rank(digits, 2, candidates, budget_s=3.0, cache_dir=tmp_path, guard_steps=STEPS, timer=timer)
    finally:
        ranking.guard = real_guard
    # int8 is fastest but wrong: refused by the guard; openvino fp32 passes; ort fp32 is never guarded
    assert (r.backend, r.precision, r.cached) == ("openvino", "fp32", False)
    assert sorted(timed) == sorted(clock) and guarded == ["ort int8", "openvino fp32"]
    assert "quality guard" in r.refused["ort int8"] and r.reason.startswith("openvino fp32: 2.0 ms/call")

    again = ranking.rank(digits, 2, candidates, budget_s=3.0, cache_dir=tmp_path, guard_steps=STEPS,
                         opener=_no_open, timer=_no_open)
    assert again.cached and (again.backend, again.reason) == (r.backend, r.reason)
    clock["ort fp32"] = 0.5  # the reference fastest: chosen with no guard at all
    guarded.clear()
    other_batch = ranking.rank(digits, 1, candidates, budget_s=3.0, cache_dir=tmp_path, guard_steps=STEPS,
                               timer=timer)
    assert (other_batch.backend, other_batch.precision) == ("ort", "fp32") and "fp32 reference itself" in other_batch.reason


def _chaotic(tmp_path, scale: float, precision: str = "fp32") -> Bundle:
    """out = sin(1e4·x)·scale: one ulp of x_T changes the whole trajectory (a model no trajectory can judge)."""
    from onnx import TensorProto, helper, numpy_helper

    from ddpm_rt.schedule import ScheduleSpec
    from ddpm_rt.spec import DiffusionSpec

    io = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["kx"]), helper.make_node("Sin", ["kx"], ["s"]),
         helper.make_node("Mul", ["s", "scale"], ["st"]), helper.make_node("Mul", ["t", "zero"], ["t0"]),
         helper.make_node("Reshape", ["t0", "shape"], ["t4"]), helper.make_node("Add", ["st", "t4"], ["out"])],
        "chaos", [io("x", ["batch", 1, 4, 4]), io("t", ["batch"])], [io("out", ["batch", 1, 4, 4])],
        [numpy_helper.from_array(np.float32(1e4), "k"), numpy_helper.from_array(np.float32(scale), "scale"),
         numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(np.array([-1, 1, 1, 1]), "shape")])
    path = tmp_path / f"chaos{scale}" / "denoiser.onnx"
    path.parent.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    spec = DiffusionSpec(ScheduleSpec(kind="linear", num_train_timesteps=100), "epsilon", (1, 4, 4))
    return Bundle(path.parent, {"precision": precision, "spec": spec.to_dict()}, spec, path, hash_checked=False)


def test_a_chaotic_model_is_judged_per_call_and_says_so(tmp_path):
    ref = _chaotic(tmp_path, 1.0)
    near = _chaotic(tmp_path, 1.0 + 3e-6, "int8")  # as close as a good reduced precision per call
    far = _chaotic(tmp_path, 1.5, "int8")
    ok = qg.guard(ref, "ort", "int8", candidate_bundle=near, steps=STEPS, cache_dir=tmp_path)
    assert ok.ok and ok.judged_by == "per-call" and ok.floor_rel_rms > 0.05 and ok.per_call_rel_rms < 1e-4
    assert "too chaotic for a trajectory comparison" in ok.summary()
    bad = qg.guard(ref, "ort", "int8", candidate_bundle=far, steps=STEPS, cache_dir=tmp_path)
    assert not bad.ok and bad.judged_by == "per-call" and bad.per_call_rel_rms > 0.1
    with pytest.raises(ConfigError, match="too chaotic for a trajectory comparison"):
        qg.require_ok(bad)


def test_an_int8_bundle_carries_its_fp32_graph_and_auto_ranks_both(tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    from ddpm_rt.exporter.int8 import Int8Options, quantize_bundle
    from ddpm_rt.models.catalog import shipped_bundle
    from ddpm_rt.prepare import choose_backend
    from ddpm_rt.sources import resolve_source

    out = tmp_path / "swissroll-int8"
    quantize_bundle(shipped_bundle("swissroll"), out, Int8Options(steps=5, trajectories=1, batch=8))
    b = load_bundle(out)
    fp32 = b.fp32_variant()
    assert b.precision == "int8" and fp32 is not None and fp32.precision == "fp32"
    assert fp32.onnx_sha256 == load_bundle(shipped_bundle("swissroll")).onnx_sha256
    choice = choose_backend("auto", resolve_source(str(out)), batch=4, cache_dir=tmp_path / "c")
    labels = [f"{be} {p}" for be, p in (("ort", "fp32"), ("ort", "int8"))]
    assert all(label in choice.reason or label.startswith(choice.name) for label in labels), choice.reason
    assert choice.bundle is not None and choice.bundle.precision == choice.precision.replace("bf16", "fp32").replace(
        "fp16", "fp32")
    (out / "denoiser_fp32.onnx").write_bytes(b"tampered")
    with pytest.raises(Exception, match="modified after export"):
        load_bundle(out).fp32_variant()


def test_real_timer_measures_a_few_calls(digits):
    with qg.open_candidate("ort", digits, 1, qg.BackendOptions(threads=1)) as be:
        ms = ranking.time_calls(be, digits, 1, budget_s=0.05)
    assert ms > 0


def test_guard_and_ranking_import_neither_torch_nor_the_exporter():
    code = ("import sys, ddpm_rt.runtime.quality_guard, ddpm_rt.runtime.ranking; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('ddpm_rt.exporter')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_candidates_is_a_config_error(digits):
    with pytest.raises(ConfigError, match="no candidates"):
        ranking.rank(digits, 1, [])
    assert Path(digits.onnx_path).is_file()


def test_a_short_run_keeps_the_reference_when_opening_the_fastest_costs_more():
    r = ranking.Ranking("openvino", "bf16", "why", {"openvino bf16": 1.0, "ort fp32": 5.0},
                        open_ms={"openvino bf16": 200.0, "ort fp32": 10.0})
    assert r.for_calls(None)[:2] == ("openvino", "bf16")
    backend, precision, why = r.for_calls(1)  # 10 + 5 ms against 200 + 1 ms
    assert (backend, precision) == ("ort", "fp32") and "quicker end to end" in why
    assert r.for_calls(1000)[:2] == ("openvino", "bf16")  # 5010 ms against 1200 ms
