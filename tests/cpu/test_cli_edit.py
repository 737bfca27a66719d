"""`ddpm-rt sample` with --init / --strength / --mask / --repaint-*: the README's editing commands as
written, the picture they write, and one-line errors for bad editing input before any model work."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.cli_helpers import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit")
    cache = root / "cache"
    proc = run_cli("sample", "digits", "--batch", "4", "--steps", "5", "--backend", "ort", "--out",
                   str(root / "digits.npy"), env={"DDPM_RT_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr
    m = np.zeros((1, 16, 16), np.uint8)
    m[:, :8] = 1
    np.save(root / "top.npy", m)
    return root


def _sample(inputs, *args):
    return run_cli("sample", "digits", "--batch", "4", "--backend", "ort", *args,
                   env={"DDPM_RT_CACHE": str(inputs / "cache")})


def test_sdedit_and_inpainting_commands_run_as_written(inputs):
    proc = _sample(inputs, "--init", str(inputs / "digits.npy"), "--strength", "0.5", "--out", str(inputs / "s.png"))
    assert proc.returncode == 0, proc.stderr
    w = Image.open(inputs / "s.png").size[0]
    plain = _sample(inputs, "--steps", "5", "--out", str(inputs / "p.png"))
    assert plain.returncode == 0 and w > 1.9 * Image.open(inputs / "p.png").size[0]  # input | result
    proc = _sample(inputs, "--init", str(inputs / "digits.npy"), "--mask", str(inputs / "top.npy"), "--sampler", "ddim",
                   "--steps", "20", "--eta", "1", "--repaint-jump", "2", "--repaint-resample", "2",
                   "--out", str(inputs / "r.npy"), "--json")
    assert proc.returncode == 0, proc.stderr
    out, digits = np.load(inputs / "r.npy"), np.load(inputs / "digits.npy")
    np.testing.assert_array_equal(out[..., :8, :], digits[..., :8, :])  # the known half, exactly
    assert np.max(np.abs(out[..., 8:, :] - digits[..., 8:, :])) > 0.05


@pytest.mark.parametrize("args,needle", [
    (["--strength", "0.5"], "--init"),  # a strength with nothing to start from
    (["--init", "{root}/missing.npy"], "file not found"),
    (["--init", "{root}/wrong.npy"], "never resized silently"),
    (["--init", "{root}/range.npy"], "outside the model's data range"),
    (["--init", "{root}/digits.npy", "--mask", "{root}/grey.npy"], "must be binary"),
    (["--mask", "{root}/top.npy"], "--mask needs --init"),
    (["--init", "{root}/digits.npy", "--strength", "0.01"], "runs no step"),
    (["--init", "{root}/digits.npy", "--strength", "0"], "--strength must be in (0, 1]"),
    (["--init", "{root}/digits.npy", "--mask", "{root}/top.npy", "--repaint-jump", "3"], "both --repaint-jump"),
    (["--init", "{root}/digits.npy", "--mask", "{root}/top.npy", "--repaint-jump", "2", "--repaint-resample", "2"],
     "--sampler ddim"),
    (["--init", "{root}/digits.npy", "--mask-means", "maybe", "--mask", "{root}/top.npy"], "--mask-means"),
])
def test_bad_editing_input_is_one_line(inputs, args, needle, tmp_path):
    np.save(inputs / "wrong.npy", np.zeros((1, 8, 8), np.float32))
    np.save(inputs / "range.npy", np.full((1, 16, 16), 3.0, np.float32))
    np.save(inputs / "grey.npy", np.full((1, 16, 16), 0.5, np.float32))
    proc = _sample(inputs, *(a.format(root=inputs) for a in args), "--out", str(tmp_path / "x.png"))
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "x.png").exists()
