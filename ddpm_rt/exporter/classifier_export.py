"""Exporting a noise-aware classifier's input gradient and attaching it to a bundle (classifier guidance).

`export_classifier_grad` writes the graph the runtime reads (`runtime.classifier`)::

    x float32 [B, C, H, W], t float32 [B], class_labels int64 [B]  ->  grad float32 [B, C, H, W]
    grad = ∇x log softmax(f(x, t))[y]

Neither torch.onnx exporter traces autograd (torch 2.13, measured: ``torch.func.grad`` fails in
``torch.export`` strict=False with "attempted to apply meta conversion to view functorch tensor",
strict=True and the TorchScript exporter with "Cannot access data pointer of Tensor that doesn't
have storage"; ``torch.autograd.grad`` inside forward fails with "We found a fake tensor in the
exported program constant's list"), so the graph is `models.noisy_classifier.InputGradient`: the
chain rule written out as forward ops, exported by the TorchScript exporter and checked against
``torch.autograd.grad`` on random inputs.

`attach_classifier` puts that graph beside a bundle's denoiser (`classifier_grad.onnx`) and adds the
manifest section ``classifier`` {file, sha256, labels, trained_on, accuracy, parity, ...}. The
denoiser graph and its hash are untouched (so every cache keyed on it stays valid); each file is
written atomically, the graph before the manifest that names it. The manifest copy inside
denoiser.onnx's metadata is not rewritten (that would change the denoiser's hash): a bare .onnx
carries no classifier; classifier_grad.onnx describes itself in its own metadata (`ddpm_rt_classifier`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm_rt.bundle.contract import MIN_OPSET
from ddpm_rt.bundle.load import load_bundle
from ddpm_rt.bundle.manifest import MANIFEST_FILE, dumps
from ddpm_rt.conditioning import CLASS_LABELS, CondInput
from ddpm_rt.errors import BundleError, ConfigError, ExportError, first_line
from ddpm_rt.fsutil import atomic_write, atomic_write_text, file_sha256
from ddpm_rt.models.noisy_classifier import (
    ASSET_DIR,
    WEIGHTS_FILE,
    InputGradient,
    NoisyDigitsClassifier,
    autograd_input_gradient,
    from_config,
    read_config,
)
from ddpm_rt.runtime.classifier import CLASSIFIER_SECTION
from ddpm_rt.schedule import ScheduleSpec, alphas_cumprod

GRAD_FILE = "classifier_grad.onnx"
GRAD_TOLERANCE = 1e-4  # max |onnx − autograd| / max |autograd|, per check batch
METADATA_KEY = "ddpm_rt_classifier"


def load_noisy_classifier(directory: Path = ASSET_DIR) -> tuple[NoisyDigitsClassifier, dict[str, Any]]:
    """(the classifier saved in `directory` in float32 eval mode, its config.json)."""
    from ddpm_rt.weights import load_state_checked, read_tensors

    info = read_config(directory)
    model = from_config(info["config"])
    path = Path(directory) / WEIGHTS_FILE
    load_state_checked(model, {k: v.float() for k, v in read_tensors(path).items()}, path)
    return model.eval(), info


def _inputs(shape: tuple[int, ...], batch: int, num_classes: int, T: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *shape), generator=g)
    t = torch.randint(0, T, (batch,), generator=g).float()
    y = torch.randint(0, num_classes, (batch,), generator=g)
    return x, t, y


def check_grad_graph(path: Path, model: NoisyDigitsClassifier, shape: tuple[int, ...], T: int,
                     batches: tuple[int, ...] = (1, 5), seed: int = 0) -> dict[str, Any]:
    """The graph at `path` against torch.autograd.grad on random x ~ N(0, 1), t in 0..T-1 and labels."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst_rel, worst_abs = 0.0, 0.0
    for i, b in enumerate(batches):
        x, t, y = _inputs(shape, b, model.config["num_classes"], T, seed + i)
        want = autograd_input_gradient(model, x, t, y).numpy()
        got = session.run(["grad"], {"x": x.numpy(), "t": t.numpy(), CLASS_LABELS: y.numpy()})[0]
        err = float(np.max(np.abs(got - want)))
        worst_abs = max(worst_abs, err)
        worst_rel = max(worst_rel, err / max(float(np.max(np.abs(want))), 1e-30))
    if worst_rel > GRAD_TOLERANCE:
        raise ExportError(f"the exported classifier gradient differs from torch.autograd.grad by {worst_rel:.2e} "
                          f"(relative; allowed {GRAD_TOLERANCE:g})")
    return {"reference": "torch.autograd.grad, float32", "batches": list(batches),
            "max_rel_err": float(f"{worst_rel:.3g}"), "max_abs_err": float(f"{worst_abs:.3g}"),
            "tolerance_rel": GRAD_TOLERANCE}


def export_classifier_grad(model: NoisyDigitsClassifier, path: Path, shape: tuple[int, ...],
                           num_train_timesteps: int, description: dict[str, Any] | None = None,
                           opset: int = MIN_OPSET) -> dict[str, Any]:
    """Write the input-gradient graph to `path` (atomically, after it matched autograd); its parity figures."""
    import onnx

    module = InputGradient(model).eval()
    x, t, y = _inputs(shape, 2, model.config["num_classes"], num_train_timesteps, 99)
    names = ["x", "t", CLASS_LABELS]

    def write(tmp: Path) -> None:
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                # the spatial mean's 1/(H·W) is a constant of the graph: the sample shape is fixed
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                torch.onnx.export(module, (x, t, y), str(tmp), input_names=names, output_names=["grad"],
                                  dynamic_axes={n: {0: "batch"} for n in (*names, "grad")}, opset_version=opset,
                                  dynamo=False)
        except Exception as e:  # noqa: BLE001 - the exporter raises many types
            raise ExportError(f"torch.onnx.export of the classifier gradient failed: {first_line(e)}") from None
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(description or {})
        onnx.save(proto, str(tmp))
        parity.update(check_grad_graph(tmp, model, shape, num_train_timesteps))

    parity: dict[str, Any] = {}
    atomic_write(Path(path), write, what="bundle directory")
    return parity


def _check_fits(bundle_spec: Any, info: dict[str, Any], model: NoisyDigitsClassifier, where: Path) -> None:
    """One-line errors when the classifier was not trained for this bundle's samples and schedule."""
    if bundle_spec.prediction_type != "epsilon" or bundle_spec.schedule.family != "vp":
        raise ConfigError(f"{where}: classifier guidance needs an epsilon-prediction VP model "
                          f"(this one: {bundle_spec.prediction_type}, {bundle_spec.schedule.kind})")
    shape = tuple(bundle_spec.sample_shape)
    if len(shape) != 3 or shape[0] != model.config["in_channels"] or shape[1] % 4 or shape[2] % 4:
        raise ConfigError(f"{where}: the classifier takes [B, {model.config['in_channels']}, H, W] with H, W "
                          f"multiples of 4; this bundle samples {list(shape)}")
    s = info.get("schedule") or {}
    try:
        own = ScheduleSpec(kind=s["kind"], num_train_timesteps=int(s["num_train_timesteps"]),
                           beta_start=float(s["beta_start"]), beta_end=float(s["beta_end"]))
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"the classifier's config.json records no valid schedule ({s!r})") from None
    theirs = bundle_spec.schedule
    if (own.num_train_timesteps != theirs.num_train_timesteps
            or not np.allclose(alphas_cumprod(own), alphas_cumprod(theirs), rtol=1e-9, atol=0)):
        raise ConfigError(f"{where}: the classifier was trained on the {own.kind} schedule "
                          f"(T={own.num_train_timesteps}, betas {own.beta_start:g}..{own.beta_end:g}), "
                          f"not this bundle's ({theirs.kind}, T={theirs.num_train_timesteps})")
    labels = [c for c in bundle_spec.conditioning if c.kind == "class"]
    if labels and labels[0].num_classes != model.config["num_classes"]:
        raise ConfigError(f"{where}: the bundle's {labels[0].name} has {labels[0].num_classes} classes, "
                          f"the classifier {model.config['num_classes']}")


def attach_classifier(bundle_dir: Path, classifier_dir: Path = ASSET_DIR) -> dict[str, Any]:
    """Write `classifier_grad.onnx` into `bundle_dir` and the manifest section ``classifier``; returns the section."""
    bundle_dir = Path(bundle_dir)
    if bundle_dir.is_file():
        raise BundleError(f"{bundle_dir} is a file; attach a classifier to a bundle directory (from ddpm-rt export)")
    bundle = load_bundle(bundle_dir)  # checks the denoiser's hash first: never attach to a broken bundle
    model, info = load_noisy_classifier(classifier_dir)
    _check_fits(bundle.spec, info, model, bundle_dir)
    labels = CondInput(CLASS_LABELS, "class", num_classes=int(model.config["num_classes"]))
    weights = Path(classifier_dir) / WEIGHTS_FILE
    section: dict[str, Any] = {
        "file": GRAD_FILE,
        "graph": "grad = ∇x log softmax(f(x, t))[y]; inputs x, t (the denoiser's), class_labels int64 [B]",
        "labels": labels.to_dict(),
        "classifier": {"architecture": "models.noisy_classifier.NoisyDigitsClassifier", **model.config,
                       "weights_sha256": file_sha256(weights)},
        "trained_on": info.get("trained_on"),
        "schedule": info.get("schedule"),
        "accuracy": {"heldout_vs_t": info.get("heldout_accuracy_vs_t"), "heldout": info.get("heldout")},
    }
    path = bundle.directory / GRAD_FILE
    section["parity"] = export_classifier_grad(model, path, tuple(bundle.spec.sample_shape),
                                               bundle.spec.schedule.num_train_timesteps,
                                               description={k: v for k, v in section.items() if k != "file"})
    section["sha256"] = file_sha256(path)
    manifest = {**bundle.manifest, CLASSIFIER_SECTION: section}
    atomic_write_text(bundle.directory / MANIFEST_FILE, dumps(manifest), what="bundle directory")
    load_bundle(bundle.directory)  # the bundle still loads, its denoiser hash unchanged
    return section
