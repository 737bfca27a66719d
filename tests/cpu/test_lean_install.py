"""The core install is the runtime: in a fresh venv without torch, `ddpm-rt sample` works (README
command 1), sampling a bundle imports neither torch nor the exporter, and commands that need an
extra say which one in one line. This is the CI job "in a venv with the core install only"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    proc = subprocess.run([*pip, str(ROOT)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"core install failed:\n{proc.stderr[-2000:]}")
    return venv


def _run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["DDPM_RT_CACHE"] = str(cwd / "cache")
    return subprocess.run([str(venv / "bin" / "python"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_core_install_has_no_torch_and_samples(core_venv: Path, tmp_path: Path) -> None:
    assert _run(core_venv, "-c", "import torch", cwd=tmp_path).returncode != 0
    proc = _run(core_venv, "-m", "ddpm_rt.cli", "sample", "--steps", "5", "--batch", "4", "--out", "s.png",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "s.png").stat().st_size > 0 and "auto chose ort" in proc.stderr


def test_sampling_a_bundle_imports_no_torch_and_no_exporter(core_venv: Path, tmp_path: Path) -> None:
    code = ("import sys; from ddpm_rt.cli import main\n"
            "try:\n    main(['sample', 'swissroll', '--steps', '3', '--batch', '2', '--out', 'x.npy'])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'diffusers')"
            " or m.startswith(('ddpm_rt.exporter', 'ddpm_rt.sources.module', 'ddpm_rt.train', 'ddpm_rt.models.unet')))\n"
            "print('LOADED', bad)")
    proc = _run(core_venv, "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout, proc.stdout


@pytest.mark.parametrize(("args", "extra"), [
    (["sample", "swissroll", "--backend", "torch", "--out", "x.npy"], "ddpm-rt[torch]"),
    (["export", "digits", "--out", "b"], "ddpm-rt[torch]"),
    (["train", "swissroll", "--out", "c"], "ddpm-rt[train]"),
    (["web", "--port", "0"], "ddpm-rt[web]"),  # builds sampler graphs with onnx (no torch)
])
def test_a_command_that_needs_an_extra_names_it(core_venv: Path, tmp_path: Path, args: list[str],
                                                extra: str) -> None:
    proc = _run(core_venv, "-m", "ddpm_rt.cli", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and extra in errors[0] and "Traceback" not in proc.stderr, proc.stderr
