"""Manifest, graph contract and source-flag parsing: pure Python, no torch."""

from __future__ import annotations

import pytest

from ddpm_rt.bundle.contract import CONTRACT, check_io
from ddpm_rt.bundle.manifest import FORMAT_VERSION, build_manifest, with_hash, without_hash
from ddpm_rt.errors import BundleError, ConfigError, SourceError
from ddpm_rt.schedule import ScheduleSpec, make_betas
from ddpm_rt.sources.diffusers import spec_from_scheduler
from ddpm_rt.sources.flags import ScheduleFlags, parse_clip, parse_shape
from ddpm_rt.spec import DiffusionSpec

SPEC = DiffusionSpec(ScheduleSpec(kind="linear", num_train_timesteps=10), "epsilon", (1, 8, 8))


def test_contract_shapes_and_io_section() -> None:
    assert CONTRACT.shapes((3, 4, 4), 2) == {"x": (2, 3, 4, 4), "t": (2,), "out": (2, 3, 4, 4)}
    assert CONTRACT.dynamic_axes() == {"x": {0: "batch"}, "t": {0: "batch"}, "out": {0: "batch"}}
    io = CONTRACT.to_dict((2,))
    assert [i["name"] for i in io["inputs"]] == ["x", "t"]
    assert io["inputs"][1] == {"name": "t", "dtype": "float32", "shape": ["batch"]}
    assert io["outputs"][0]["shape"] == ["batch", 2]
    assert CONTRACT.opset >= 17


def _io(x_shape, t_shape, out_shape, dtype="float32"):
    return ({"x": (dtype, x_shape), "t": ("float32", t_shape)}, {"out": ("float32", out_shape)})


def test_check_io_accepts_the_contract_and_reports_a_static_batch() -> None:
    assert check_io(*_io(["batch", 1, 8, 8], ["batch"], ["batch", 1, 8, 8]), (1, 8, 8), "g") is None
    assert check_io(*_io([None, 1, 8, 8], [-1], ["n", 1, 8, 8]), (1, 8, 8), "g") is None  # any dynamic marker
    assert check_io(*_io([1, 1, 8, 8], [1], [1, 1, 8, 8]), (1, 8, 8), "g") == 1


@pytest.mark.parametrize(("io", "match"), [
    (({"x": ("float32", ["b", 1, 8, 8])}, {"out": ("float32", ["b", 1, 8, 8])}), "contract is inputs"),
    (_io(["b", 1, 8, 8], ["b"], ["b", 1, 8, 8], dtype="float16"), "is float16"),
    (_io(["b", 1, 8, 8], ["b"], ["b", 1, 4, 4]), "inconsistent"),
    (_io([2, 1, 8, 8], [2], [3, 1, 8, 8]), "disagree on the batch"),
])
def test_check_io_names_each_problem(io, match) -> None:
    with pytest.raises(BundleError, match=match):
        check_io(*io, (1, 8, 8), "g")


def test_manifest_carries_spec_and_hash_only_in_json() -> None:
    m = build_manifest(source={"kind": "module", "ref": "a.b:c"}, spec=SPEC.to_dict(),
                       io=CONTRACT.to_dict(SPEC.sample_shape), opset=17, precision="fp32",
                       graph={"parameters": 5}, parity=None, exporter="torchscript",
                       versions={"ddpm_rt": "0"})
    assert m["format_version"] == FORMAT_VERSION
    assert m["spec"]["timestep_meaning"] == "train_index"
    assert len(m["spec"]["schedule"]["betas"]) == 10
    assert "onnx_sha256" not in m
    hashed = with_hash(m, "ab" * 32)
    assert hashed["onnx_sha256"] == "ab" * 32 and without_hash(hashed) == m
    assert DiffusionSpec.from_dict(m["spec"]) == SPEC


@pytest.mark.parametrize(("text", "want"), [("none", None), (None, None), ("1", (-1.0, 1.0)), ("-2,3", (-2.0, 3.0))])
def test_parse_clip(text, want) -> None:
    assert parse_clip(text) == want


@pytest.mark.parametrize("text", ["3,1", "0", "a,b", "1,2,3"])
def test_parse_clip_rejects(text) -> None:
    with pytest.raises(ConfigError, match="--clip"):
        parse_clip(text)


def test_parse_shape() -> None:
    assert parse_shape("3,32,32") == (3, 32, 32)
    assert parse_shape("2") == (2,)
    for bad in ("3,32", "0,1,1", "x"):
        with pytest.raises(ConfigError, match="--sample-shape"):
            parse_shape(bad)


def test_flags_need_a_sample_shape() -> None:
    with pytest.raises(ConfigError, match="--sample-shape"):
        ScheduleFlags().diffusion_spec()
    spec = ScheduleFlags(schedule="cosine", num_train_timesteps=40, sample_shape="2", clip="1").diffusion_spec()
    assert spec.schedule.kind == "cosine" and spec.clip == (-1.0, 1.0) and spec.sample_shape == (2,)


def test_scheduler_config_mapping(tmp_path) -> None:
    cfg = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
           "clip_sample": True, "clip_sample_range": 2.0, "prediction_type": "v_prediction",
           "timestep_spacing": "trailing", "steps_offset": 1, "set_alpha_to_one": False}
    spec, notes = spec_from_scheduler(cfg, (3, 8, 8), tmp_path / "scheduler_config.json")
    assert spec.schedule.kind == "cosine" and spec.prediction_type == "v_prediction"
    assert spec.clip == (-2.0, 2.0)
    assert spec.sampler_defaults == {"sampler": "ddim", "spacing": "trailing", "steps_offset": 1,
                                     "set_alpha_to_one": False}
    assert notes == []
    sampler = spec.sampler(10)
    assert (sampler.sampler, sampler.spacing, sampler.set_alpha_to_one) == ("ddim", "trailing", False)


def test_scheduler_trained_betas_and_variance(tmp_path) -> None:
    betas = list(make_betas(ScheduleSpec(kind="linear", num_train_timesteps=20)))
    cfg = {"_class_name": "DDPMScheduler", "num_train_timesteps": 20, "trained_betas": betas,
           "clip_sample": False, "variance_type": "fixed_large_log"}
    spec, _ = spec_from_scheduler(cfg, (1, 4, 4), tmp_path / "s.json")
    assert spec.schedule.kind == "betas" and spec.clip is None
    assert spec.sampler_defaults == {"sampler": "ddpm", "variance_type": "fixed_large"}
    for bad in ({"beta_schedule": "sigmoid"}, {"variance_type": "learned_range"},
                {"prediction_type": "flow"}):
        with pytest.raises(SourceError):
            spec_from_scheduler({"_class_name": "DDPMScheduler", **bad}, (1, 4, 4), tmp_path / "s.json")
