"""Exporting conditional denoisers: diffusers UNet2DModel class embeddings (every `class_embed_type`),
`--model` modules with `--conditioning`, the project's own conditional checkpoints. Each graph takes
its conditioning inputs after (x, t) and is verified against eager with labels drawn over their
range, the null label included; what cannot be expressed is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ddpm_rt.bundle.load import load_bundle
from ddpm_rt.exporter.parity import OrtModel, TorchModel
from ddpm_rt.sources import resolve_source
from tests.cli_helpers import assert_one_line_error
from tests.helpers.bundles import assert_nothing_written, call_main, make_class_unet, read_manifest

COND_JSON = json.dumps([{"name": "class_labels", "kind": "class", "num_classes": 4, "null": 4},
                        {"name": "style", "kind": "tensor", "shape": [3], "range": [-2, 2], "null": 0.0}])


def _inputs(manifest: dict) -> list[tuple[str, str, list]]:
    return [(i["name"], i["dtype"], i["shape"]) for i in manifest["io"]["inputs"]]


def _labels_checked(manifest: dict, name: str, null: int) -> set[int]:
    """Every label value the export's parity calls fed (they must include the null)."""
    seen = {v for c in manifest["parity"]["calls"] for v in c["cond"][name]}
    assert null in seen and len(seen) > 2, seen
    return seen


@pytest.mark.parametrize(("embed_type", "null", "want"), [
    (None, "10", ("class_labels", "int64", ["batch"])),
    ("timestep", "0", ("class_labels", "float32", ["batch"])),
    ("identity", "0", ("class_labels", "float32", ["batch", 64])),
])
def test_diffusers_class_embeddings_export_with_parity(embed_type, null: str, want, tmp_path: Path, capsys) -> None:
    pytest.importorskip("diffusers")
    folder = make_class_unet(tmp_path, embed_type)
    out = tmp_path / "b"
    proc = call_main(capsys, "export", str(folder), "--out", str(out), "--null-label", null,
                     "--trajectory-steps", "4")
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(out)
    assert _inputs(m)[2] == want and len(_inputs(m)) == 3
    assert m["parity"]["max_abs"] <= 1e-4 and m["parity"]["trajectory"]["fp32"]["max_abs"] <= 1e-4
    cond = m["spec"]["conditioning"][0]
    if embed_type is None:  # 11 rows, the last the null: classes 0..9
        assert (cond["kind"], cond["num_classes"], cond["null"]) == ("class", 10, 10)
        _labels_checked(m, "class_labels", 10)
        # the label reaches the graph: two labels give two outputs, as in eager
        bundle = load_bundle(out)
        ort = OrtModel(bundle.onnx_path)
        eager = TorchModel(resolve_source(str(out)).load_module())
        x = np.random.default_rng(0).standard_normal((2, 3, 8, 8), dtype=np.float32)
        t = np.full(2, 500.0, np.float32)
        outs = [ort(x, t, np.array([y, y])) for y in (1, 10)]
        assert np.abs(outs[0] - outs[1]).max() > 1e-3
        np.testing.assert_allclose(outs[1], eager(x, t, np.array([10, 10])), atol=1e-4)
    else:
        assert cond["kind"] == "tensor" and cond["null"] == 0.0


def test_diffusers_class_unet_without_null_refuses_cfg(tmp_path: Path, capsys) -> None:
    pytest.importorskip("diffusers")
    folder = make_class_unet(tmp_path, None, 6)
    out = tmp_path / "b"
    proc = call_main(capsys, "export", str(folder), "--out", str(out), "--trajectory-steps", "0")
    assert proc.returncode == 0, proc.stderr
    assert "records no null label" in proc.stderr and "--null-label" in proc.stderr
    cond = read_manifest(out)["spec"]["conditioning"][0]
    assert (cond["num_classes"], cond["null"]) == (6, None)
    png = tmp_path / "s.png"
    proc = call_main(capsys, "sample", str(out), "--class", "2", "--guidance", "3", "--steps", "2",
                     "--backend", "ort", "--out", str(png))
    assert_one_line_error(proc, "no unconditional (null) input")
    assert not png.exists()
    proc = call_main(capsys, "sample", str(out), "--class", "2", "--guidance", "1", "--steps", "2",
                     "--backend", "ort", "--out", str(png))
    assert proc.returncode == 0, proc.stderr  # plain conditional sampling needs no null


@pytest.mark.parametrize(("args", "needles"), [
    (("--null-label", "11"), ("--null-label", "0..10")),
    (("--null-label", "2.5"), ("--null-label",)),
    (("--conditioning", COND_JSON), ("--conditioning goes with --model",)),
])
def test_diffusers_conditioning_errors(args, needles, tmp_path: Path, capsys) -> None:
    pytest.importorskip("diffusers")
    folder = make_class_unet(tmp_path, None)
    out = tmp_path / "b"
    proc = call_main(capsys, "export", str(folder), "--out", str(out), *args)
    assert_one_line_error(proc, *needles)
    assert_nothing_written(out)


def test_unsupported_class_embed_type_is_one_line(tmp_path: Path, capsys) -> None:
    pytest.importorskip("diffusers")
    folder = make_class_unet(tmp_path, None)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["class_embed_type"] = "projection"  # UNet2DConditionModel's; UNet2DModel would ignore the labels
    (folder / "config.json").write_text(json.dumps(cfg))
    proc = call_main(capsys, "export", str(folder), "--out", str(tmp_path / "b"))
    assert_one_line_error(proc, "class_embed_type 'projection'")


def test_module_with_conditioning_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "b"
    proc = call_main(capsys, "export", "--model", "tests.helpers.tiny:make_cond_mlp", "--sample-shape", "2",
                     "--conditioning", COND_JSON, "--out", str(out), "--trajectory-steps", "4")
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(out)
    assert _inputs(m) == [("x", "float32", ["batch", 2]), ("t", "float32", ["batch"]),
                          ("class_labels", "int64", ["batch"]), ("style", "float32", ["batch", 3])]
    assert m["parity"]["max_abs"] <= 1e-4
    _labels_checked(m, "class_labels", 4)
    # the bundle samples with CFG on ORT, both inputs (and their nulls) reaching the graph
    from ddpm_rt.sampling import open_run

    src = resolve_source(str(out))
    plan = src.spec.plan(src.spec.sampler(4, sampler="ddim"))
    cond = {"class_labels": np.array([0, 1, 2]), "style": np.full((3, 3), 1.5, np.float32)}
    x_T = np.random.default_rng(0).standard_normal((3, 2), dtype=np.float32)
    got = {}
    for w in (1.0, 2.0):
        with open_run(src, "ort", chunk=3, threads=1, cond=cond, guidance_scale=w, guidance_mode="batched") as run:
            got[w] = run.sample(plan, x_T.copy())
    assert np.all(np.isfinite(got[2.0])) and np.abs(got[2.0] - got[1.0]).max() > 1e-3


@pytest.mark.parametrize(("extra", "needles"), [
    ((), ("TypeError",)),  # forward needs the conditioning the command line did not declare
    (("--conditioning", "{not json"), ("--conditioning is not valid JSON",)),
    (("--conditioning", '[{"name": "y", "kind": "image"}]'), ("unknown kind 'image'",)),
    (("--conditioning", COND_JSON, "--null-label", "1"), ("--null-label goes with a diffusers",)),
])
def test_module_conditioning_errors(extra, needles, tmp_path: Path, capsys) -> None:
    out = tmp_path / "b"
    proc = call_main(capsys, "export", "--model", "tests.helpers.tiny:make_cond_mlp", "--sample-shape", "2",
                     *extra, "--out", str(out))
    assert_one_line_error(proc, *needles)
    assert_nothing_written(out)


def test_conditional_checkpoint_exports(tmp_path: Path, capsys) -> None:
    from ddpm_rt.train.trainer import TrainConfig, train

    ck = tmp_path / "ck"
    train("cond-digits", ck, TrainConfig(steps=2, batch_size=4, label_dropout=0.2), progress=False,
          model_config={"base_channels": 8, "channel_mult": [1, 2], "attn_levels": [1]})
    out = tmp_path / "b"
    proc = call_main(capsys, "export", str(ck), "--out", str(out), "--trajectory-steps", "4")
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(out)
    assert m["spec"]["conditioning"][0] == {"name": "class_labels", "kind": "class", "dtype": "int64",
                                            "shape": [], "num_classes": 10, "null": 10}
    assert m["parity"]["max_abs"] <= 1e-4
    _labels_checked(m, "class_labels", 10)
    # int8 calibration runs the graph on labels too, the null among them
    from ddpm_rt.exporter.int8 import Int8Options, record_trajectories

    spec = load_bundle(out).spec
    records = record_trajectories(out / "denoiser.onnx", spec, Int8Options(trajectories=2, steps=2, batch=3))
    labels = {int(v) for r in records for v in r["class_labels"]}
    assert 10 in labels and len(labels) > 2 and all(r["class_labels"].shape == (3,) for r in records)
    proc = call_main(capsys, "export", "cond-digits", "--null-label", "3", "--out", str(tmp_path / "c"))
    assert_one_line_error(proc, "carries its own conditioning")
