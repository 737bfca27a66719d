"""Exporting diffusers folders (pipeline + scheduler config, bare UNet2DModel + flags) through the CLI."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import assert_one_line_error
from tests.helpers.bundles import (
    assert_nothing_written,
    call_main,
    make_diffusers_folders,
    read_manifest,
)

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    return make_diffusers_folders(tmp_path_factory.mktemp("diffusers"))


def test_pipeline_folder_takes_its_scheduler_config(folders, tmp_path: Path, capsys) -> None:
    _, pipe = folders
    out = tmp_path / "b"
    proc = call_main(capsys, "export", str(pipe), "--out", str(out), "--trajectory-steps", "10")
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(out)
    assert m["source"] == {"kind": "diffusers", "ref": str(pipe.resolve())}
    spec = m["spec"]
    assert spec["schedule"]["kind"] == "cosine" and len(spec["schedule"]["betas"]) == 1000
    assert spec["clip"] == [-1.0, 1.0] and spec["prediction_type"] == "epsilon"
    assert spec["sampler_defaults"] == {"sampler": "ddpm", "variance_type": "fixed_small", "spacing": "leading"}
    assert spec["sample_shape"] == [3, 8, 8]
    assert m["parity"]["max_abs"] <= 1e-4
    assert m["parity"]["trajectory"]["fp32"]["sampler"] == "ddpm"


def test_bare_unet_with_schedule_flags(folders, tmp_path: Path, capsys) -> None:
    bare, _ = folders
    out = tmp_path / "b"
    proc = call_main(capsys, "export", str(bare), "--out", str(out), "--schedule", "scaled_linear",
                     "--num-train-timesteps", "500", "--beta-end", "0.012", "--prediction-type",
                     "v_prediction", "--clip", "none", "--trajectory-steps", "0")
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(out)
    sched = m["spec"]["schedule"]
    assert (sched["kind"], sched["num_train_timesteps"], sched["beta_end"]) == ("scaled_linear", 500, 0.012)
    assert m["spec"]["prediction_type"] == "v_prediction" and m["spec"]["clip"] is None
    assert m["parity"]["max_abs"] <= 1e-4


def test_mismatched_unet_weights(folders, tmp_path: Path, capsys) -> None:
    bare, _ = folders
    broken = Path(shutil.copytree(bare, tmp_path / "broken"))
    cfg = json.loads((broken / "config.json").read_text())
    cfg["block_out_channels"] = [16, 48]
    (broken / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "b"
    proc = call_main(capsys, "export", str(broken), "--out", str(out))
    assert_one_line_error(proc, str(broken))
    assert_nothing_written(out)


def test_pickle_unet_refused(folders, tmp_path: Path, capsys) -> None:
    bare, _ = folders
    pickled = Path(shutil.copytree(bare, tmp_path / "pickled"))
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(pickled / "diffusion_pytorch_model.safetensors")), pickled / "diffusion_pytorch_model.bin")
    (pickled / "diffusion_pytorch_model.safetensors").unlink()
    out = tmp_path / "b"
    proc = call_main(capsys, "export", str(pickled), "--out", str(out))
    assert_one_line_error(proc, "pickle", "--allow-pickle")
    assert_nothing_written(out)
    ok = call_main(capsys, "export", str(pickled), "--out", str(out), "--allow-pickle", "--no-verify")
    assert ok.returncode == 0, ok.stderr
    assert read_manifest(out)["parity"] is None


def test_diffusers_missing_is_a_clear_error(folders, tmp_path: Path, capsys, monkeypatch) -> None:
    bare, _ = folders
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers → ImportError
    out = tmp_path / "b"
    proc = call_main(capsys, "export", str(bare), "--out", str(out))
    assert_one_line_error(proc, "needs the diffusers package", "pip install")
    assert_nothing_written(out)


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_sample_reads_a_diffusers_pipeline(folders, backend: str, tmp_path: Path, capsys, monkeypatch) -> None:
    import numpy as np

    _, pipe = folders
    monkeypatch.setenv("DDPM_RT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "s.npy"
    proc = call_main(capsys, "sample", str(pipe), "--backend", backend, "--steps", "3", "--batch", "2",
                     "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    samples = np.load(out)
    assert samples.shape == (2, 3, 8, 8) and np.all(np.abs(samples) <= 1.0 + 1e-6)  # clip_sample
