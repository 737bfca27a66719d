"""Guided and edit sampler graphs: CFG and the edit inputs inside the fused step and full-loop graphs,
against the Python loop (runtime.guidance, ddpm_rt.editing) on inputs the export check never saw."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ddpm_rt.conditioning import CondInput
from ddpm_rt.errors import ConfigError
from ddpm_rt.exporter import sampler_export as SE
from ddpm_rt.plan import SamplerSpec
from ddpm_rt.schedule import ScheduleSpec
from ddpm_rt.spec import DiffusionSpec
from tests.helpers.graphs import tiny_denoiser

LABELS = (CondInput("class_labels", "class", num_classes=3, null=3),)
COND = DiffusionSpec(ScheduleSpec(kind="linear", num_train_timesteps=100), "epsilon", (1, 4, 4), clip=(-1.0, 1.0),
                     conditioning=LABELS)
PLAIN = DiffusionSpec(ScheduleSpec(kind="linear", num_train_timesteps=100), "epsilon", (1, 4, 4), clip=(-1.0, 1.0))
B = 3


def _check(tmp_path, spec, sampler, graph, edit, extras_list):
    den = tiny_denoiser(spec.sample_shape, num_classes=3 if spec.conditioning else None)
    out = tmp_path / "g.onnx"
    res = SE.export_sampler_graph(den, {}, spec, sampler, out, graph=graph, edit=edit)
    assert res.graph == graph and res.max_abs_diff <= SE.TOLERANCE
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    options = SE.graph_options(spec, sampler, edit)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((B, *spec.sample_shape), dtype=np.float32)
    z = rng.standard_normal((res.plan.steps, B, *spec.sample_shape), dtype=np.float32)
    results = []
    for extras in extras_list:
        fused = SE.run_fused(sess, graph, res.plan, x, z, extras)
        ref = SE.reference_loop(den.SerializeToString(), res.plan, x, z, extras=extras, options=options)
        assert np.max(np.abs(fused - ref)) <= 1e-5, extras.keys()
        results.append(fused)
    return res, results


def _guided(scale: float, rescale: float = 0.0) -> dict[str, np.ndarray]:
    return {"class_labels": np.array([0, 2, 3], np.int64), "guidance_scale": np.array(scale, np.float32),
            "guidance_rescale": np.array(rescale, np.float32)}


@pytest.mark.parametrize("sampler,graph", [(SamplerSpec("ddim", 10), "loop"), (SamplerSpec("ddim", 10), "step"),
                                           (SamplerSpec("dpmpp-2m", 8), "loop"), (SamplerSpec("unipc", 8), "step"),
                                           (SamplerSpec("ddpm", 8), "step")])
def test_guided_graphs_match_the_python_loop(tmp_path, sampler, graph):
    _, (w0, w1, w4, w4r) = _check(tmp_path, COND, sampler, graph, False,
                                  [_guided(0.0), _guided(1.0), _guided(4.0), _guided(4.0, 0.7)])
    assert np.max(np.abs(w4 - w1)) > 1e-3 and np.max(np.abs(w4r - w4)) > 1e-4  # w and φ change the result
    assert np.max(np.abs(w0 - w1)) > 1e-3


def test_guided_graph_metadata_lists_the_new_inputs(tmp_path):
    SE.export_sampler_graph(tiny_denoiser((1, 4, 4), num_classes=3), {}, COND, SamplerSpec("ddim", 5),
                            tmp_path / "g.onnx", graph="step")
    desc = json.loads({p.key: p.value for p in onnx.load(str(tmp_path / "g.onnx")).metadata_props}[SE.SAMPLER_KEY])
    assert [(i["name"], i["dtype"]) for i in desc["inputs"]][3:] == [
        ("class_labels", "int64"), ("guidance_scale", "float32"), ("guidance_rescale", "float32")]
    assert desc["guided"] and desc["conditioning"][0]["null"] == 3


def _edit(start: int, mask_half: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(start + 11)
    mask = np.zeros((B, 1, 4, 4), np.float32)
    if mask_half:
        mask[..., :2] = 1.0
    return {"start": np.array(start, np.int64), "image": rng.uniform(-1, 1, (B, 1, 4, 4)).astype(np.float32),
            "mask": mask}


@pytest.mark.parametrize("sampler,graph", [(SamplerSpec("ddim", 12), "step"), (SamplerSpec("ddim", 12), "loop"),
                                           (SamplerSpec("ddpm", 12), "loop"), (SamplerSpec("unipc", 10), "step"),
                                           (SamplerSpec("dpmpp-3m", 10), "loop")])
def test_edit_graphs_match_the_python_loop(tmp_path, sampler, graph):
    res, runs = _check(tmp_path, PLAIN, sampler, graph, True, [_edit(0), _edit(4), _edit(4, mask_half=False)])
    known = _edit(4)["image"][..., :2]
    np.testing.assert_allclose(runs[1][..., :2], known, rtol=0, atol=1e-6)  # the known region, exactly
    assert np.max(np.abs(runs[2][..., :2] - known)) > 1e-2  # without a mask it is generated


def test_repaint_graph_runs_undo_rows_without_the_denoiser(tmp_path):
    res, (run,) = _check(tmp_path, PLAIN, SamplerSpec("ddim", 10, eta=1.0, repaint=(2, 2)), "loop", True, [_edit(0)])
    assert res.plan.model_calls < res.plan.steps
    np.testing.assert_allclose(run[..., :2], _edit(0)["image"][..., :2], rtol=0, atol=1e-6)


def test_guided_edit_graph(tmp_path):
    _check(tmp_path, COND, SamplerSpec("unipc", 8), "loop", True, [{**_guided(3.0), **_edit(2)}])


def test_what_a_graph_cannot_take_is_refused(tmp_path):
    den = tiny_denoiser((1, 4, 4))
    with pytest.raises(ConfigError, match="export it with --edit"):
        SE.export_sampler_graph(den, {}, PLAIN, SamplerSpec("ddim", 10, repaint=(2, 2)), tmp_path / "r.onnx")
    no_null = DiffusionSpec(PLAIN.schedule, "epsilon", (1, 4, 4), conditioning=(
        CondInput("class_labels", "class", num_classes=3),))
    with pytest.raises(ConfigError, match="learned no unconditional input"):
        SE.export_sampler_graph(tiny_denoiser((1, 4, 4), num_classes=3), {}, no_null, SamplerSpec("ddim", 5),
                                tmp_path / "n.onnx")
