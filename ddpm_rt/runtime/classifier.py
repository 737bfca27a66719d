"""The noise-aware classifier's input gradient, for classifier guidance (Dhariwal & Nichol 2021).

A conditional bundle may carry ``classifier_grad.onnx`` beside its denoiser (manifest section
``classifier``: file, sha256, ...), a graph of its own with the denoiser's input contract and one
output::

    x float32 [B, ...], t float32 [B], class_labels int64 [B]  ->  grad float32 [B, ...]
    grad = ∇x log softmax(f(x, t))[y]

The section's ``labels`` (a class `CondInput`) names the graph's label input and its classes; a
bundle whose denoiser is unconditional may carry a classifier too: the labels then go to the
classifier only (`runtime.guidance`). It runs on ONNX Runtime's CPU backend with the same IO
binding (bound once, no allocation per call).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ddpm_rt.bundle.contract import CONTRACT
from ddpm_rt.conditioning import CondInput
from ddpm_rt.errors import BundleError, ConfigError, first_line
from ddpm_rt.fsutil import file_sha256
from ddpm_rt.runtime.backend import BackendOptions
from ddpm_rt.runtime.ort_backend import OrtCpuBackend, _import_ort

if TYPE_CHECKING:
    from ddpm_rt.bundle.load import Bundle

CLASSIFIER_SECTION = "classifier"
GRAD_CONTRACT = replace(CONTRACT, out_name="grad")


def classifier_labels(bundle: Bundle) -> CondInput:
    """The classifier graph's label input: the manifest section's ``labels``, else the denoiser's class input."""
    entry = bundle.manifest.get(CLASSIFIER_SECTION) or {}
    if entry.get("labels"):
        try:
            labels = CondInput.from_dict(entry["labels"])
        except ConfigError as e:
            raise BundleError(f"{bundle.directory}: the classifier's labels entry is invalid: {e}") from None
        if labels.kind == "class":
            return labels
        raise BundleError(f"{bundle.directory}: the classifier's labels must be a class input, got {labels.kind!r}")
    own = [c for c in bundle.spec.conditioning if c.kind == "class"]
    if not own:
        raise BundleError(f"{bundle.directory}: the classifier section names no labels and the denoiser has no "
                          "class input; re-attach the classifier (ddpm-rt attach-classifier)")
    return own[0]


def open_classifier(bundle: Bundle, batch: int, options: BackendOptions | None = None) -> OrtCpuBackend:
    """The bundle's classifier-gradient graph, callable as ``grad = g(x, t, labels)`` at up to `batch`."""
    entry = bundle.manifest.get(CLASSIFIER_SECTION)
    if not entry:
        raise BundleError(f"{bundle.directory} carries no classifier (manifest section {CLASSIFIER_SECTION!r}); "
                          "classifier guidance needs one: drop --classifier-scale, or use --guidance (CFG)")
    path = bundle.directory / str(entry["file"])
    if not path.is_file():
        raise BundleError(f"{bundle.directory} is missing its classifier graph {path.name}; re-export the bundle")
    if entry.get("sha256") and file_sha256(path) != entry["sha256"]:
        raise BundleError(f"{path} was modified after export (sha256 mismatch); re-export the bundle")
    ort = _import_ort()
    so = OrtCpuBackend.session_options(options or BackendOptions())
    try:
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT's untyped errors
        raise BundleError(f"onnxruntime cannot load {path}: {first_line(e)}") from None
    return OrtCpuBackend(session, batch, bundle.spec.sample_shape, {"onnx": str(path)}, where=str(path),
                         conditioning=(classifier_labels(bundle),), contract=GRAD_CONTRACT)
