"""The noise-aware classifier's input gradient: written by hand, exported to ONNX, attached to a bundle.

The hand-written chain rule equals torch.autograd.grad (float64: to rounding; the exported graph on
ONNX Runtime: <= 1e-4 relative), `attach_classifier` adds a valid manifest section without touching
the denoiser or its hash, and every misfit (schedule, shape, classes, a bare .onnx, a modified
graph) is a one-line error.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ddpm_rt.bundle.contract import CONTRACT
from ddpm_rt.bundle.load import load_bundle
from ddpm_rt.bundle.manifest import MANIFEST_FILE, build_manifest, dumps, with_hash
from ddpm_rt.conditioning import CondInput
from ddpm_rt.errors import BundleError, ConfigError, SourceError
from ddpm_rt.exporter.classifier_export import (
    GRAD_FILE,
    GRAD_TOLERANCE,
    attach_classifier,
    check_grad_graph,
    export_classifier_grad,
    load_noisy_classifier,
)
from ddpm_rt.fsutil import file_sha256
from ddpm_rt.models.noisy_classifier import (
    ASSET_DIR,
    InputGradient,
    NoisyDigitsClassifier,
    autograd_input_gradient,
)
from ddpm_rt.runtime.classifier import classifier_labels, open_classifier
from ddpm_rt.schedule import ScheduleSpec
from ddpm_rt.spec import DiffusionSpec
from ddpm_rt.train.noisy_classifier import save
from tests.helpers.graphs import tiny_denoiser

LINEAR = ScheduleSpec(kind="linear", num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02)
SHAPE = (1, 8, 8)
LABELS = CondInput("class_labels", "class", num_classes=10, null=10)
SCHEDULE_RECORD = {"of": "digits", "kind": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4,
                   "beta_end": 0.02}


def small_classifier(seed: int = 0, num_classes: int = 10) -> NoisyDigitsClassifier:
    torch.manual_seed(seed)
    return NoisyDigitsClassifier(widths=(4, 8, 8), emb_dim=16, time_dim=16, num_classes=num_classes).eval()


def classifier_dir(tmp_path, seed: int = 0, num_classes: int = 10, schedule: dict | None = None):
    """A saved (untrained) small classifier, as `python -m ddpm_rt.train.noisy_classifier` writes one."""
    out = tmp_path / f"clf{seed}-{num_classes}"
    save(small_classifier(seed, num_classes), {"schedule": schedule or SCHEDULE_RECORD, "trained_on": "test",
                                               "heldout_accuracy_vs_t": {"0": 0.5}}, out)
    return out


def make_bundle(path, conditional: bool = True, schedule: ScheduleSpec = LINEAR, shape=SHAPE, seed: int = 0):
    """A tiny bundle (hand-built graph) on the contract: unconditional, or class-conditional with 10 classes."""
    spec = DiffusionSpec(schedule=schedule, prediction_type="epsilon", sample_shape=shape, clip=(-1.0, 1.0),
                         conditioning=(LABELS,) if conditional else ())
    path.mkdir(parents=True)
    onnx.save(tiny_denoiser(shape, seed=seed, num_classes=10 if conditional else None), str(path / "denoiser.onnx"))
    m = build_manifest(source={"kind": "module", "ref": "tests"}, spec=spec.to_dict(),
                       io=CONTRACT.for_spec(spec).to_dict(shape), opset=17, precision="fp32", graph={},
                       parity=None, exporter="torchscript", versions={})
    (path / MANIFEST_FILE).write_text(dumps(with_hash(m, file_sha256(path / "denoiser.onnx"))))
    return path


def test_hand_written_gradient_equals_autograd_in_float64():
    model = small_classifier().double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn((6, *SHAPE), generator=g, dtype=torch.float64) * 1.5
    t = torch.tensor([0.0, 1.0, 250.0, 500.0, 750.0, 999.0], dtype=torch.float64)
    y = torch.tensor([0, 3, 9, 1, 5, 7])
    want = autograd_input_gradient(model, x, t, y)
    got = InputGradient(model)(x, t, y)
    assert float(want.abs().max()) > 1e-6  # a real gradient, not zeros
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def test_gradient_depends_on_the_label_and_rows_are_independent():
    model = small_classifier().requires_grad_(False)
    x = torch.randn((3, *SHAPE))
    t = torch.tensor([10.0, 500.0, 900.0])
    a = InputGradient(model)(x, t, torch.tensor([1, 2, 3]))
    b = InputGradient(model)(x, t, torch.tensor([1, 2, 4]))
    torch.testing.assert_close(a[:2], b[:2])  # rows 0, 1 unchanged
    assert float((a[2] - b[2]).abs().max()) > 1e-6  # row 2 follows its label
    one = InputGradient(model)(x[2:], t[2:], torch.tensor([3]))
    torch.testing.assert_close(one, a[2:], rtol=1e-5, atol=1e-7)


def test_exported_graph_equals_autograd_on_random_inputs(tmp_path):
    model = small_classifier(seed=2)
    path = tmp_path / GRAD_FILE
    parity = export_classifier_grad(model, path, SHAPE, 1000, description={"what": "test"})
    assert parity["max_rel_err"] <= GRAD_TOLERANCE
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x", "t", "class_labels"]
    assert [o.name for o in session.get_outputs()] == ["grad"]
    rng = np.random.default_rng(7)
    for batch in (1, 3, 16):  # a dynamic batch, beyond the traced one
        x = rng.standard_normal((batch, *SHAPE)).astype(np.float32) * 2
        t = rng.integers(0, 1000, batch).astype(np.float32)
        y = rng.integers(0, 10, batch).astype(np.int64)
        got = session.run(["grad"], {"x": x, "t": t, "class_labels": y})[0]
        want = autograd_input_gradient(model, torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()
        rel = np.abs(got - want).max() / np.abs(want).max()
        assert rel <= 1e-4, (batch, rel)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["ddpm_rt_classifier"]) == {"what": "test"}


def test_a_wrong_graph_fails_the_check(tmp_path):
    path = tmp_path / GRAD_FILE
    export_classifier_grad(small_classifier(seed=2), path, SHAPE, 1000)
    from ddpm_rt.errors import ExportError

    with pytest.raises(ExportError, match="differs from torch.autograd.grad"):
        check_grad_graph(path, small_classifier(seed=3), SHAPE, 1000)  # other weights


@pytest.mark.parametrize("conditional", [True, False])
def test_attach_writes_the_graph_and_the_manifest_section(tmp_path, conditional):
    bundle = make_bundle(tmp_path / "b", conditional)
    before = load_bundle(bundle)
    section = attach_classifier(bundle, classifier_dir(tmp_path))
    after = load_bundle(bundle)
    assert after.onnx_sha256 == before.onnx_sha256  # the denoiser and its hash untouched
    entry = after.manifest["classifier"]
    assert entry == json.loads(json.dumps(section))
    assert entry["file"] == GRAD_FILE and entry["sha256"] == file_sha256(bundle / GRAD_FILE)
    assert entry["parity"]["max_rel_err"] <= GRAD_TOLERANCE
    assert entry["schedule"]["kind"] == "linear" and entry["trained_on"] == "test"
    assert classifier_labels(after) == CondInput("class_labels", "class", num_classes=10)
    assert {k: v for k, v in after.manifest.items() if k != "classifier"} == before.manifest
    clf = open_classifier(after, 4)
    x = np.zeros((4, *SHAPE), np.float32)
    grad = clf(x, np.full(4, 10.0, np.float32), np.arange(4, dtype=np.int64))
    assert grad.shape == x.shape and np.all(np.isfinite(grad))
    clf.close()
    assert sorted(p.name for p in bundle.iterdir()) == sorted(["denoiser.onnx", MANIFEST_FILE, GRAD_FILE])


def test_attach_twice_replaces_the_classifier(tmp_path):
    bundle = make_bundle(tmp_path / "b")
    first = attach_classifier(bundle, classifier_dir(tmp_path, seed=0))
    second = attach_classifier(bundle, classifier_dir(tmp_path, seed=1))
    assert first["sha256"] != second["sha256"]
    assert load_bundle(bundle).manifest["classifier"]["sha256"] == file_sha256(bundle / GRAD_FILE) == second["sha256"]


def test_a_modified_classifier_graph_is_refused(tmp_path):
    bundle = make_bundle(tmp_path / "b")
    attach_classifier(bundle, classifier_dir(tmp_path))
    (bundle / GRAD_FILE).write_bytes((bundle / GRAD_FILE).read_bytes() + b"\0")
    with pytest.raises(BundleError, match="modified after export"):
        open_classifier(load_bundle(bundle), 2)
    (bundle / GRAD_FILE).unlink()
    with pytest.raises(BundleError, match="missing its classifier graph"):
        open_classifier(load_bundle(bundle), 2)


def test_misfits_are_one_line_errors_and_write_nothing(tmp_path):
    clf = classifier_dir(tmp_path)
    cases = [
        (make_bundle(tmp_path / "cosine", schedule=ScheduleSpec(kind="cosine", num_train_timesteps=1000)),
         clf, ConfigError, "trained on the linear schedule"),
        (make_bundle(tmp_path / "odd", shape=(1, 6, 6)), clf, ConfigError, "multiples of 4"),
        (make_bundle(tmp_path / "rgb", shape=(3, 8, 8)), clf, ConfigError, r"\[B, 1, H, W\]"),
        (make_bundle(tmp_path / "k3"), classifier_dir(tmp_path, num_classes=3), ConfigError, "10 classes"),
        (make_bundle(tmp_path / "noclf"), tmp_path / "nowhere", SourceError, "holds no noisy classifier"),
        (make_bundle(tmp_path / "sched"), classifier_dir(tmp_path, seed=5, schedule={"kind": "linear"}),
         ConfigError, "records no valid schedule"),
    ]
    for bundle, directory, error, match in cases:
        manifest = (bundle / MANIFEST_FILE).read_text()
        with pytest.raises(error, match=match) as info:
            attach_classifier(bundle, directory)
        assert "\n" not in str(info.value)
        assert (bundle / MANIFEST_FILE).read_text() == manifest and not (bundle / GRAD_FILE).exists()
    bare = make_bundle(tmp_path / "bare")
    with pytest.raises(BundleError, match="is a file; attach a classifier to a bundle directory"):
        attach_classifier(bare / "denoiser.onnx", clf)


def test_the_shipped_classifier_fits_the_digits_schedule_and_is_noise_aware():
    model, info = load_noisy_classifier(ASSET_DIR)
    assert info["schedule"] == SCHEDULE_RECORD
    acc = info["heldout_accuracy_vs_t"]
    assert set(acc) == {"0", "250", "500", "750", "999"}
    assert acc["0"] >= 0.9 and acc["250"] >= 0.8  # clean and lightly noised digits: recognised
    assert acc["0"] >= acc["500"] >= acc["999"]  # less signal, less accuracy ...
    assert acc["999"] <= 0.2  # ... down to chance at pure noise
    weights = ASSET_DIR / "model.safetensors"
    assert weights.stat().st_size < 400_000  # float16, small
    from ddpm_rt.weights import read_tensors

    assert {v.dtype for v in read_tensors(weights).values()} == {torch.float16}
    assert sum(p.numel() for p in model.parameters()) < 200_000


def test_attach_classifier_command(tmp_path, capsys):
    from tests.helpers.bundles import call_main

    bundle = shutil.copytree(make_bundle(tmp_path / "b"), tmp_path / "copy")
    done = call_main(capsys, "attach-classifier", str(bundle), "--classifier", str(classifier_dir(tmp_path)),
                     "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sha256"] == file_sha256(bundle / GRAD_FILE)
    bad = call_main(capsys, "attach-classifier", str(tmp_path / "nope"))
    assert bad.returncode != 0 and "not found" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
