"""Reference denoisers: the (x, t) -> same-shape contract, ONNX export parity, the registry API."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ddpm_rt.errors import SourceError
from ddpm_rt.models import catalog
from ddpm_rt.models.catalog import BUILTIN, DEFAULT_MODEL, get_builtin
from ddpm_rt.models.embeddings import SinusoidalEmbedding
from ddpm_rt.sources.builtin import load_shipped

NAMES = sorted(BUILTIN)


def _inputs(name: str, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(x, t, *conditioning): class labels drawn over 0..num_classes, the null label included."""
    g = torch.Generator().manual_seed(seed)
    spec = BUILTIN[name].spec
    x = torch.randn((batch, *spec.sample_shape), generator=g)
    if spec.timestep_meaning == "noise_level":
        t = torch.rand(batch, generator=g) * 0.99 + 0.005  # alpha^n in (0, 1)
    else:
        t = torch.randint(0, spec.schedule.num_train_timesteps, (batch,), generator=g).float()
    cond = tuple(torch.randint(0, c.num_classes + 1, (batch,), generator=g) for c in spec.conditioning)
    return (x, t, *cond)


@pytest.mark.parametrize("name", NAMES)
def test_forward_keeps_shape_and_dtype(name: str) -> None:
    torch.manual_seed(0)
    model = BUILTIN[name].build().eval()
    for batch in (1, 3):
        x, *rest = _inputs(name, batch)
        with torch.inference_mode():
            out = model(x, *rest)
        assert out.shape == x.shape and out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_output_depends_on_t(name: str) -> None:
    torch.manual_seed(0)
    model = BUILTIN[name].build().eval()
    x, t, *cond = _inputs(name, 2)
    with torch.inference_mode():
        a = model(x, t, *cond)
        b = model(x, t * 0.5 + 0.25, *cond)
    assert not torch.allclose(a, b)


def test_class_conditional_unet_uses_its_labels_and_the_null() -> None:
    torch.manual_seed(0)
    model = get_builtin("cond-digits").build().eval()
    with torch.no_grad():  # an untrained embedding table starts random; make the classes differ clearly
        model.class_embed.weight.normal_(0, 1)
    x, t = _inputs("cond-digits", 2)[:2]
    with torch.inference_mode():
        outs = [model(x, t, torch.full((2,), y)) for y in (0, 3, 10)]  # 10 = the null label
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])
    with pytest.raises(ValueError, match="pass class_labels"):
        model(x, t)
    assert "class_embed.weight" not in get_builtin("digits").build().state_dict()  # unconditional: unchanged


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_matches_eager(name: str) -> None:
    torch.manual_seed(0)
    model = BUILTIN[name].build().eval()
    args = _inputs(name, 2)
    names = ["x", "t", *(c.name for c in BUILTIN[name].spec.conditioning)]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, args, buf, input_names=names, output_names=["out"], opset_version=17,
            dynamic_axes={n: {0: "batch"} for n in [*names, "out"]}, dynamo=False,
        )
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    args5 = _inputs(name, 5, seed=1)  # another batch size than the one traced
    got = sess.run(None, {n: a.numpy() for n, a in zip(names, args5, strict=True)})[0]
    with torch.inference_mode():
        want = model(*args5).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_sinusoidal_embedding_values() -> None:
    emb = SinusoidalEmbedding(8)
    t = torch.tensor([0.0, 5.0])
    e = emb(t)
    assert e.shape == (2, 8)
    np.testing.assert_allclose(e[0].numpy(), [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)
    np.testing.assert_allclose(e[1, 0].item(), np.sin(5.0), atol=1e-6)  # frequency 1 first
    with pytest.raises(ValueError):
        SinusoidalEmbedding(7)


def test_registry_contract() -> None:
    assert DEFAULT_MODEL == "digits" and set(BUILTIN) == {"digits", "swissroll", "interp-digits", "vit-digits",
                                                   "cond-digits"}
    for name, m in BUILTIN.items():
        assert m.name == name and m.dataset in ("digits16", "swissroll") and m.description
    assert BUILTIN["swissroll"].spec.clip == (-1.0, 1.0)
    assert BUILTIN["swissroll"].spec.sampler(steps=40).sampler == "ddpm"
    assert BUILTIN["vit-digits"].spec.sampler().step_scale == 1.0  # seed 004 used 1.5; measured worse for this model (model card)
    assert BUILTIN["interp-digits"].spec.prediction_type == "next_sample"
    cond = BUILTIN["cond-digits"].spec
    assert [c.to_dict() for c in cond.conditioning] == [
        {"name": "class_labels", "kind": "class", "dtype": "int64", "shape": [], "num_classes": 10, "null": 10}]
    assert cond.schedule == BUILTIN["digits"].spec.schedule
    shipped = json.loads((catalog.shipped_dir("cond-digits") / catalog.CONFIG_FILE).read_text())
    assert cond.default_guidance == shipped["guidance_default_measured"]  # the measured default (MODEL_CARD.md)
    # a config override reaches the constructor
    small = get_builtin("swissroll").build({"hidden": 16})
    assert small.out.in_features == 16


def test_get_builtin_unknown_names_the_choices() -> None:
    with pytest.raises(SourceError, match="digits, swissroll"):
        get_builtin("cifar")


def test_load_shipped_without_weights_is_a_source_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(catalog, "ASSETS", tmp_path)
    assert not catalog.has_shipped_weights("digits") and catalog.shipped_bundle("digits") is None
    with pytest.raises(SourceError, match="no shipped weights for 'digits'"):
        load_shipped("digits")
    with pytest.raises(SourceError, match="unknown built-in model"):
        load_shipped("nope")


def test_shipped_weights_load_in_eval_mode() -> None:
    assert catalog.has_shipped_weights(DEFAULT_MODEL) and catalog.has_shipped_weights("swissroll")
    model = load_shipped(DEFAULT_MODEL)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
