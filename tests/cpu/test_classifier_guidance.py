"""Classifier guidance end to end: eps ← eps − s·sqrt(1 − abar_t)·∇x log p(y | x_t, t).

On tiny bundles (hand-built denoiser graphs) with an attached classifier, the guided model output
equals a torch reference (the denoiser on ONNX Runtime, the gradient by torch.autograd.grad) to
<= 1e-5 for one step, with CFG around it on a conditional bundle and with the labels going to the
classifier only on an unconditional one; `ddpm-rt sample --classifier-scale` runs it and refuses
what it cannot do in one line. On the shipped digits model with the shipped classifier, guidance
moves samples to the class asked for.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ddpm_rt.errors import ConfigError
from ddpm_rt.exporter.classifier_export import attach_classifier, load_noisy_classifier
from ddpm_rt.models.noisy_classifier import ASSET_DIR, autograd_input_gradient
from ddpm_rt.plan import SamplerSpec
from ddpm_rt.runtime.guidance import GuidedModel
from ddpm_rt.runtime.loop import sample_loop
from ddpm_rt.sampling import open_run
from ddpm_rt.schedule import alphas_cumprod
from ddpm_rt.sources import resolve_source
from tests.cpu.test_classifier_grad import SHAPE, classifier_dir, make_bundle
from tests.helpers.bundles import call_main

B = 4
LABELS = np.array([1, 4, 7, 9], np.int64)


@pytest.fixture()
def bundles(tmp_path):
    """(conditional, unconditional) tiny bundles, each with the same small classifier attached."""
    clf = classifier_dir(tmp_path)
    out = []
    for conditional in (True, False):
        b = make_bundle(tmp_path / ("cond" if conditional else "uncond"), conditional)
        attach_classifier(b, clf)
        out.append(b)
    model, _ = load_noisy_classifier(clf)
    return (*out, model)


def reference(bundle, model, x, t, labels, s, w=1.0, conditional=True):
    """The guided eps computed directly: the denoiser's graph on ORT, CFG, minus s·sqrt(1 − abar_t)·autograd grad."""
    sess = ort.InferenceSession(str(bundle / "denoiser.onnx"), providers=["CPUExecutionProvider"])
    if conditional:
        c = sess.run(None, {"x": x, "t": t, "class_labels": labels})[0].astype(np.float64)
        u = sess.run(None, {"x": x, "t": t, "class_labels": np.full_like(labels, 10)})[0].astype(np.float64)
        eps = u + w * (c - u)
    else:
        eps = sess.run(None, {"x": x, "t": t})[0].astype(np.float64)
    abar = alphas_cumprod(resolve_source(str(bundle)).spec.schedule)
    grad = autograd_input_gradient(model.double(), torch.from_numpy(x).double(), torch.from_numpy(t).double(),
                                   torch.from_numpy(labels)).numpy()
    model.float()
    return eps - s * np.sqrt(1.0 - abar[t.astype(np.int64)])[:, None, None, None] * grad


@pytest.mark.parametrize("conditional,w,mode", [(True, 1.0, "batched"), (True, 3.0, "batched"),
                                                (True, 3.0, "split"), (False, 1.0, "batched")])
@pytest.mark.parametrize("s", [0.5, 4.0])
def test_guided_eps_equals_the_reference_for_one_step(bundles, conditional, w, mode, s):
    bundle, model = (bundles[0] if conditional else bundles[1]), bundles[2]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((B, *SHAPE)).astype(np.float32)
    t = np.full(B, 640.0, np.float32)
    with open_run(resolve_source(str(bundle)), "ort", chunk=B, cond={"class_labels": LABELS}, guidance_scale=w,
                  classifier_scale=s, guidance_mode=mode) as run:
        got = GuidedModel(run.backend, run.guidance, B, SHAPE)(x, t).copy()
    want = reference(bundle, model, x, t, LABELS, s, w, conditional)
    unguided = reference(bundle, model, x, t, LABELS, 0.0, w, conditional)
    assert np.abs(want - unguided).max() > 1e-4  # the classifier term matters at this t
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("conditional", [True, False])
def test_guided_sampling_equals_the_loop_over_the_reference(bundles, conditional):
    bundle, model = (bundles[0] if conditional else bundles[1]), bundles[2]
    src = resolve_source(str(bundle))
    sampler = SamplerSpec("ddim", 5, eta=1.0)
    plan = src.spec.plan(sampler)
    rng = np.random.default_rng(0)
    x_init = rng.standard_normal((B, *SHAPE)).astype(np.float32)
    noise = rng.standard_normal((plan.steps, B, *SHAPE)).astype(np.float32)
    w = 2.0 if conditional else 1.0
    with open_run(src, "ort", chunk=B, cond={"class_labels": LABELS}, guidance_scale=w, classifier_scale=3.0) as run:
        assert src.spec.clip is not None and run.spec.clip is None  # the guided x̂0 is not clipped
        assert run.notes["x0_clip"] == "off (classifier guidance)"
        plan = run.spec.plan(sampler)
        got = run.sample(plan, x_init, noise=noise)
    want = sample_loop(lambda x, t: reference(bundle, model, x, t, LABELS, 3.0, w, conditional).astype(np.float32),
                       plan, x_init, noise=noise)
    with open_run(src, "ort", chunk=B, cond={"class_labels": LABELS} if conditional else None,
                  guidance_scale=w) as run:
        plain = run.sample(plan, x_init, noise=noise)  # the same unclipped plan, no classifier
    assert np.abs(got - plain).max() > 1e-3  # guidance changed the samples
    # unclipped, the tiny random denoiser grows samples to tens: relative to their scale
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, float(np.abs(want).max())))


def test_unconditional_classifier_guidance_refusals(bundles, tmp_path):
    uncond = resolve_source(str(bundles[1]))
    with pytest.raises(ConfigError, match="steers toward a class"):
        open_run(uncond, "ort", chunk=B, classifier_scale=2.0)
    with pytest.raises(ConfigError, match="this model is unconditional"):
        open_run(uncond, "ort", chunk=B, cond={"class_labels": LABELS}, guidance_scale=3.0, classifier_scale=2.0)
    with pytest.raises(ConfigError, match="this model is unconditional"):
        open_run(uncond, "ort", chunk=B, cond={"class_labels": LABELS})  # labels without classifier guidance
    with pytest.raises(ConfigError, match=r"out of range"):
        open_run(uncond, "ort", chunk=B, cond={"class_labels": [0, 1, 2, 10]}, classifier_scale=2.0)
    plain = make_bundle(tmp_path / "plain", conditional=False)
    from ddpm_rt.errors import BundleError

    with pytest.raises(BundleError, match="carries no classifier"):
        open_run(resolve_source(str(plain)), "ort", chunk=B, cond={"class_labels": LABELS}, classifier_scale=2.0)


def test_sample_command_with_classifier_scale(bundles, tmp_path, capsys):
    uncond = bundles[1]
    runs = {}
    for s in ("0", "4"):
        out = tmp_path / f"s{s}.npy"
        args = ["sample", str(uncond), "--steps", "5", "--sampler", "ddim", "--batch", "6", "--backend", "ort",
                "--out", str(out)]
        done = call_main(capsys, *args, *(["--class", "3", "--classifier-scale", s] if s != "0" else []))
        assert done.returncode == 0, done.stderr
        runs[s] = np.load(out)
    assert runs["0"].shape == runs["4"].shape == (6, *SHAPE)
    assert np.abs(runs["0"] - runs["4"]).max() > 1e-3
    # --classes without --class: one row per class, labels to the classifier
    done = call_main(capsys, "sample", str(uncond), "--steps", "3", "--batch", "4", "--backend", "ort",
                     "--classes", "0,5", "--classifier-scale", "2", "--out", str(tmp_path / "c.npy"))
    assert done.returncode == 0, done.stderr
    plain = make_bundle(tmp_path / "plain", conditional=False)
    for args, message in (([str(plain), "--class", "3", "--classifier-scale", "2"], "carries no classifier"),
                          ([str(uncond), "--class", "3"], "this model is unconditional"),
                          ([str(uncond), "--class", "3", "--classifier-scale", "2", "--guidance", "3"],
                           "this model is unconditional"),
                          ([str(uncond), "--class", "3", "--classifier-scale", "2", "--num", "4"],
                           "sharded --num runs do not carry the classifier")):
        bad = call_main(capsys, "sample", *args, "--steps", "2", "--batch", "2", "--backend", "ort",
                        "--out", str(tmp_path / "bad.npy"))
        assert bad.returncode != 0 and message in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_guidance_steers_the_shipped_digits_model_to_the_class(tmp_path):
    """The shipped unconditional digits bundle + the shipped noisy classifier: the judge agrees more often."""
    import shutil

    from ddpm_rt.quality.digits_classifier import features_and_probs

    if not (ASSET_DIR / "model.safetensors").is_file():
        pytest.fail("the shipped noisy digits classifier is missing (assets/noisy_digits_classifier)")
    bundle = shutil.copytree(resolve_source("digits").bundle, tmp_path / "digits")
    attach_classifier(bundle, ASSET_DIR)
    src = resolve_source(str(bundle))
    n = 30
    labels = (np.arange(n) % 10).astype(np.int64)
    sampler = SamplerSpec("ddim", 20)
    x_init = np.random.default_rng(0).standard_normal((n, *src.spec.sample_shape)).astype(np.float32)
    hit = {}
    for s in (0.0, 4.0):
        with open_run(src, "ort", chunk=n, threads=1, cond={"class_labels": labels} if s else None,
                      classifier_scale=s) as run:
            out = np.clip(run.sample(run.spec.plan(sampler), x_init, rng=np.random.default_rng(1)), -1, 1)
        hit[s] = float(np.mean(features_and_probs(out)[1].argmax(1) == labels))
    assert hit[0.0] <= 0.3  # unguided: about chance
    assert hit[4.0] >= 0.8, hit  # guided: most samples are the class asked for
