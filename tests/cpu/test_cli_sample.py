"""`ddpm-rt sample` end to end through the real entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cli_helpers import assert_one_line_error, assert_usage_error, run_cli


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_sample_swissroll_npy(tmp_path, backend):
    out = tmp_path / "s.npy"
    proc = run_cli("sample", "swissroll", "--steps", "10", "--batch", "32", "--seed", "3",
                   "--backend", backend, "--out", str(out), "--json",
                   env={"DDPM_RT_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["backend"] == backend and summary["steps"] == 10 and summary["finite"]
    x = np.load(out)
    assert x.shape == (32, 2) and x.dtype == np.float32
    assert np.all(np.isfinite(x))


def test_sample_same_seed_same_samples_across_backends(tmp_path):
    env = {"DDPM_RT_CACHE": str(tmp_path / "cache")}
    outs = []
    for backend in ("torch", "ort"):
        out = tmp_path / f"{backend}.npy"
        proc = run_cli("sample", "digits", "--steps", "8", "--batch", "4", "--sampler", "ddpm",
                       "--backend", backend, "--out", str(out), env=env)
        assert proc.returncode == 0, proc.stderr
        outs.append(np.load(out))
    assert outs[0].shape == (4, 1, 16, 16)
    assert np.max(np.abs(outs[0] - outs[1])) < 1e-3


def test_sample_default_writes_png(tmp_path):
    out = tmp_path / "grid.png"
    proc = run_cli("sample", "--steps", "5", "--batch", "9", "--backend", "torch", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    img = Image.open(out)
    assert img.size[0] > 16 * 3 and img.size[1] > 16 * 3
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--steps", "5000"], ["steps", "1000"]),
        (["--backend", "nope"], ["backend", "ort"]),
        (["--sampler", "euler"], ["sampler", "ddim"]),
        (["--spacing", "weird"], ["spacing", "leading"]),
        (["--out", "x.jpg"], [".png", ".npy"]),
        (["--backend", "trt"], ["trt"]),
        (["no/such/model"], ["not found"]),
    ],
)
def test_sample_bad_input_is_one_line(tmp_path, args, needles):
    extra = [] if "--backend" in args else ["--backend", "torch"]
    proc = run_cli("sample", *args, *extra, cwd=tmp_path)
    assert_one_line_error(proc, *needles)
    assert not list(tmp_path.iterdir()), "nothing may be written on error"


@pytest.mark.parametrize(("args", "option"), [
    (["--steps", "0"], "--steps"), (["--batch", "0"], "--batch"), (["--steps", "abc"], "--steps"),
    (["--seed", "-1"], "--seed"), (["--threads", "-2"], "--threads"), (["--eta", "5"], "--eta"),
    (["--stepz", "5"], "--stepz"),
])
def test_sample_usage_errors_exit_2_naming_the_option(tmp_path, args, option):
    proc = run_cli("sample", *args, cwd=tmp_path)
    assert_usage_error(proc, option)
    assert not list(tmp_path.iterdir()), "nothing may be written on error"
