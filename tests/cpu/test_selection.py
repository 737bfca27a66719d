"""Quality guard and `auto` ranking: verdicts and rankings cached per key and re-done when it changes,
a variant over tolerance refused with its figures, rankings reused without re-measuring."""

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
from ddpm_rt.runtime import selection

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
    v = selection.guard(digits, "openvino", "fp32", steps=STEPS, cache_dir=tmp_path)
    assert v.ok and not v.cached and v.steps == STEPS and v.max_abs <= 1e-4
    files = list((tmp_path / selection.CACHE_SUBDIR).glob("guard-*.json"))
    assert [f.name for f in files] == [f"guard-{v.key}.json"]
    again = selection.guard(digits, "openvino", "fp32", steps=STEPS, cache_dir=tmp_path, opener=_no_open)
    assert again.cached and again.max_abs == v.max_abs and again.key == v.key


def test_guard_key_covers_precision_cpu_versions_and_graph(digits, perturbed, monkeypatch):
    base = selection.Candidate("openvino", Precision.FP32)
    fields = selection.guard_fields(digits, base, STEPS, 2, 0, selection.Tolerance())
    key = selection._key(fields)
    assert {"bundle_sha256", "candidate_sha256", "backend", "precision", "cpu", "versions"} <= set(fields)
    for other in (replace(base, precision=Precision.BF16), replace(base, backend="ort"),
                  replace(base, bundle=perturbed)):
        assert selection._key(selection.guard_fields(digits, other, STEPS, 2, 0, selection.Tolerance())) != key
    monkeypatch.setattr(selection, "cpu_capabilities", lambda: CpuCapabilities("EPYC", frozenset({"avx2"})))
    assert selection._key(selection.guard_fields(digits, base, STEPS, 2, 0, selection.Tolerance())) != key
    monkeypatch.setattr(selection, "runtime_versions", lambda: {"onnxruntime": "9.9"})
    assert "9.9" in json.dumps(selection.guard_fields(digits, base, STEPS, 2, 0, selection.Tolerance()))


def test_changed_machine_or_tampered_entry_is_checked_again(digits, tmp_path, monkeypatch):
    first = selection.guard(digits, "ort", "fp32", steps=STEPS, batch=1, cache_dir=tmp_path)
    path = tmp_path / selection.CACHE_SUBDIR / f"guard-{first.key}.json"
    data = json.loads(path.read_text())
    data["fields"]["precision"] = "bf16"  # an entry whose fields do not match its name
    path.write_text(json.dumps(data))
    assert not selection.guard(digits, "ort", "fp32", steps=STEPS, batch=1, cache_dir=tmp_path).cached
    monkeypatch.setattr(selection, "cpu_capabilities", lambda: CpuCapabilities("EPYC", frozenset({"avx2"})))
    moved = selection.guard(digits, "ort", "fp32", steps=STEPS, batch=1, cache_dir=tmp_path)
    assert not moved.cached and moved.key != first.key


def test_variant_over_tolerance_is_refused_with_its_figures(digits, perturbed, tmp_path):
    v = selection.guard(digits, "ort", "int8", candidate_bundle=perturbed, steps=STEPS, cache_dir=tmp_path)
    assert not v.ok and v.rel_rms > v.tolerance["rel_rms"]
    with pytest.raises(ConfigError) as e:
        selection.require_ok(v)
    msg = str(e.value)
    assert "\n" not in msg and f"{v.rel_rms:.3g}" in msg and "--allow-inexact" in msg
    selection.require_ok(v, allow_inexact=True)  # explicitly allowed: no error
    cached = selection.guard(digits, "ort", "int8", candidate_bundle=perturbed, steps=STEPS, cache_dir=tmp_path,
                             opener=_no_open)
    assert cached.cached and not cached.ok  # the refusal is remembered too
    shown = selection.cached_verdicts(digits, tmp_path)  # what inspect / doctor list
    assert [(x.backend, x.precision, x.ok) for x in shown] == [("ort", "int8", False)]


def test_default_candidates_follow_this_cpu(perturbed, monkeypatch):
    epyc = CpuCapabilities("EPYC", frozenset({"avx2"}))
    monkeypatch.setattr(selection, "cpu_capabilities", lambda: epyc)
    labels = [c.label for c in selection.default_candidates(perturbed)]
    assert "openvino bf16" not in labels and "openvino fp16" not in labels
    assert labels[0] == "ort fp32" and "ort int8" in labels
    assert "ort int8" not in [c.label for c in selection.default_candidates()]


def test_rank_picks_the_fastest_guarded_candidate_and_caches_it(digits, perturbed, tmp_path):
    _needs_openvino()
    candidates = [selection.Candidate("ort", Precision.FP32), selection.Candidate("openvino", Precision.FP32),
                  selection.Candidate("ort", Precision.INT8, perturbed)]
    fake_ms = {"OrtCpuBackend": 2.0, "OpenVinoBackend": 1.0}  # a stand-in clock: which one wins is given

    def timer(be, bundle, batch, budget_s):
        assert budget_s <= 1.0  # the budget is shared between the candidates
        return fake_ms[type(be).__name__]

    r = selection.rank(digits, 2, candidates, budget_s=3.0, cache_dir=tmp_path, guard_steps=STEPS, timer=timer)
    assert (r.backend, r.precision, r.cached) == ("openvino", "fp32", False)
    assert set(r.timings_ms) == {"ort fp32", "openvino fp32"} and "quality guard" in r.refused["ort int8"]
    assert r.reason.startswith("openvino fp32: 1.0 ms/call") and "refused ort int8" in r.reason

    again = selection.rank(digits, 2, candidates, budget_s=3.0, cache_dir=tmp_path, guard_steps=STEPS,
                           opener=_no_open, timer=_no_open)
    assert again.cached and (again.backend, again.reason) == (r.backend, r.reason)
    other_batch = selection.rank(digits, 1, candidates[:1], budget_s=1.0, cache_dir=tmp_path, guard_steps=STEPS,
                                 timer=timer)
    assert not other_batch.cached and other_batch.backend == "ort"


def test_real_timer_measures_a_few_calls(digits):
    with selection.open_candidate("ort", digits, 1, selection.BackendOptions(threads=1)) as be:
        ms = selection.time_calls(be, digits, 1, budget_s=0.05)
    assert ms > 0


def test_selection_imports_neither_torch_nor_the_exporter():
    code = ("import sys, ddpm_rt.runtime.selection; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('ddpm_rt.exporter')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_candidates_is_a_config_error(digits):
    with pytest.raises(ConfigError, match="no candidates"):
        selection.rank(digits, 1, [])
    assert Path(digits.onnx_path).is_file()
