"""Fault injection: concurrent first runs, kill -9 at random points, signals, and every bad input
a script could hit, each with its exit code and first line (issue #14).

Everything runs the real console entry point in subprocesses, as a user or a CI job would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import assert_one_line_error, assert_usage_error, run_cli
from tests.helpers.processes import kill_at_random, popen, temps


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A `ddpm-rt train` checkpoint: a source with no ready bundle, so sampling it on ORT exports."""
    out = tmp_path_factory.mktemp("ckpt") / "swissroll"
    proc = run_cli("train", "swissroll", "--out", str(out), "--steps", "20", "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    return out


def test_concurrent_first_runs_export_once_and_all_succeed(checkpoint: Path, tmp_path: Path) -> None:
    env = {"DDPM_RT_CACHE": str(tmp_path / "cache")}
    procs = [popen("sample", str(checkpoint), "--backend", "ort", "--steps", "8", "--batch", "16",
                    "--threads", "1", "--out", str(tmp_path / f"s{i}.npy"), env=env) for i in range(4)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert [code for code, _ in results] == [0, 0, 0, 0], results
    exports = sum(err.count("export: tracing") for _, err in results)
    assert exports == 1, [err for _, err in results]
    first = np.load(tmp_path / "s0.npy")
    for i in range(1, 4):
        np.testing.assert_array_equal(np.load(tmp_path / f"s{i}.npy"), first)
    assert temps(tmp_path / "cache", tmp_path) == []


@pytest.mark.parametrize("trial", range(3))
def test_kill_9_during_export_leaves_no_bundle_and_the_next_run_heals(checkpoint: Path, tmp_path: Path,
                                                                     trial: int) -> None:
    env = {"DDPM_RT_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "bundle"
    kill_at_random(["export", str(checkpoint), "--out", str(out)], env, 0.5, 4.0)
    assert not out.exists() or (out / "ddpm_rt.json").is_file()  # nothing half-written under --out
    proc = run_cli("export", str(checkpoint), "--out", str(out), "--trajectory-steps", "0", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (out / "ddpm_rt.json").is_file() and temps(tmp_path) == []


@pytest.mark.parametrize("trial", range(3))
def test_kill_9_during_first_sample_then_the_next_run_heals(checkpoint: Path, tmp_path: Path, trial: int) -> None:
    env = {"DDPM_RT_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "s.npy"
    args = ["sample", str(checkpoint), "--backend", "ort", "--steps", "40", "--batch", "256", "--threads", "1",
            "--out", str(out)]
    kill_at_random(args, env, 0.5, 5.0)
    if out.exists():  # only ever a complete file
        assert np.load(out).shape == (256, 2)
    proc = run_cli(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert np.load(out).shape == (256, 2)
    assert temps(tmp_path) == [], "temporaries of the killed run were not cleaned up"


def test_kill_9_during_train_resumes_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    args = ["train", "swissroll", "--out", str(out), "--steps", "3000", "--threads", "1"]
    kill_at_random(args, {}, 3.0, 6.0)
    proc = run_cli(*args[:-4], "--steps", "3100", "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["step"] == 3100
    assert temps(out) == []


def _interrupt(args: list[str], sig: int, env: dict[str, str], marker: str, tmp: Path) -> tuple[int, str]:
    """Start the command, wait until its stderr shows `marker` (real work has begun), then signal it."""
    err_path = tmp / "stderr.txt"
    with err_path.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "ddpm_rt.cli", *args], env={**os.environ, **env},
                                stdout=subprocess.DEVNULL, stderr=err, text=True)
        deadline = time.monotonic() + 120
        while marker not in err_path.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
    return code, err_path.read_text()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_exit_128_plus_signum_and_write_nothing(tmp_path: Path, sig: int, code: int) -> None:
    out = tmp_path / "s.npy"
    got, err = _interrupt(["sample", "digits", "--steps", "1000", "--sampler", "ddpm", "--batch", "64",
                           "--out", str(out)], sig, {"DDPM_RT_CACHE": str(tmp_path / "c")}, "backend:", tmp_path)
    assert got == code, err
    assert err.strip().splitlines()[-1].startswith(f"interrupted ({signal.Signals(sig).name})")
    assert not out.exists() and temps(tmp_path) == []


def test_train_interrupt_saves_a_checkpoint_and_says_where_it_resumes(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    code, err = _interrupt(["train", "swissroll", "--out", str(out), "--steps", "100000", "--threads", "1"],
                           signal.SIGINT, {}, "step", tmp_path)
    assert code == 130, err
    step = json.loads((out / "config.json").read_text())["step"]
    assert step > 0
    assert f"saved a checkpoint at step {step} in {out}" in err.strip().splitlines()[-1]


# -- every bad input of the issue: exit code and first line ----------------------------------------------


@pytest.mark.parametrize(("args", "option"), [
    (["sample", "--steps", "abc"], "--steps"),
    (["sample", "--stepz", "5"], "--stepz"),
    (["sample", "--seed", "-1"], "--seed"),
    (["sample", "--threads", "-2"], "--threads"),
    (["sample", "--eta", "5"], "--eta"),
    (["export-sampler", "digits"], "--out"),
    (["nope"], "nope"),
])
def test_usage_errors(tmp_path: Path, args: list[str], option: str) -> None:
    assert_usage_error(run_cli(*args, cwd=tmp_path), option)


def test_bare_command_prints_help_and_version_exits_0() -> None:
    bare = run_cli()
    assert bare.returncode == 0 and bare.stdout.startswith("Usage: ") and "sample" in bare.stdout
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("ddpm-rt ")


@pytest.fixture(scope="module")
def nonfinite_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nf") / "bundle"
    proc = run_cli("export", "--model", "tests.helpers.tiny:make_nonfinite", "--sample-shape", "2",
                   "--schedule", "cosine", "--num-train-timesteps", "40", "--no-verify", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_nonfinite_samples_exit_3_and_write_nothing(nonfinite_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "bad.npy"
    proc = run_cli("sample", str(nonfinite_bundle), "--out", str(out))
    assert proc.returncode == 3, proc.stderr
    assert_one_line_error(proc, "NaN/inf", "at step 7 of 15", "--allow-nonfinite")  # unipc-15: t < 20 from step 7
    assert "RuntimeWarning" not in proc.stderr and not out.exists()
    proc = run_cli("sample", str(nonfinite_bundle), "--out", str(out), "--allow-nonfinite")
    assert proc.returncode == 0 and out.exists(), proc.stderr


def test_export_names_a_nonfinite_model(tmp_path: Path) -> None:
    proc = run_cli("export", "--model", "tests.helpers.tiny:make_nonfinite", "--sample-shape", "2",
                   "--schedule", "cosine", "--num-train-timesteps", "40", "--tolerance", "1e30",
                   "--out", str(tmp_path / "b"))
    assert_one_line_error(proc, "not finite", "the model itself")
    assert "control flow" not in proc.stderr


@pytest.mark.parametrize(("args", "needles"), [
    (["sample", "--out", "{tmp}"], ["is a directory"]),
    (["sample", "--out", "{tmp}/file.txt/x.png"], ["is a file"]),
    (["sample", "--batch", "100000000", "--out", "{tmp}/x.npy"], ["MB", "lower --batch"]),
    (["sample", "--batch", "100000000", "--out", "{tmp}/x.png"], ["megapixels", ".npy"]),
    (["export", "digits", "--schedule", "cosine", "--out", "{tmp}/b"], ["carries its own schedule"]),
    (["export", "digits", "--clip", "3,1", "--out", "{tmp}/b"], ["carries its own schedule"]),
    (["export", "--model", "tests.helpers.tiny:make_mlp", "--sample-shape", "2", "--clip", "3,1",
      "--out", "{tmp}/b"], ["--clip"]),
    (["export", "digits", "--opset", "99", "--out", "{tmp}/b"], ["--opset", "17..21"]),
])
def test_bad_values_are_one_line_before_any_work(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    (tmp_path / "file.txt").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    repo = str(Path(__file__).resolve().parents[2])  # --model tests.helpers... from another cwd
    proc = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args], cwd=tmp_path,
                   env={"DDPM_RT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": repo}, timeout=120)
    assert_one_line_error(proc, *needles)
    assert proc.returncode == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == before


def test_newer_bundle_format_says_upgrade(tmp_path: Path) -> None:
    import shutil

    from ddpm_rt.models.catalog import shipped_bundle

    bundle = Path(shutil.copytree(shipped_bundle("swissroll"), tmp_path / "b"))
    manifest = json.loads((bundle / "ddpm_rt.json").read_text())
    manifest["format_version"] += 1
    (bundle / "ddpm_rt.json").write_text(json.dumps(manifest))
    assert_one_line_error(run_cli("sample", str(bundle), "--out", str(tmp_path / "s.npy")), "upgrade ddpm-rt")


def test_model_factory_is_found_in_the_working_directory(tmp_path: Path) -> None:
    pkg = tmp_path / "mynet"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from tests.helpers.tiny import make_mlp as make\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # for tests.helpers only
    script = Path(sys.executable).parent / "ddpm-rt"  # the console script: its sys.path has no cwd of its own
    proc = subprocess.run([str(script), "export", "--model", "mynet:make", "--sample-shape", "2",
                           "--trajectory-steps", "0", "--out", str(tmp_path / "b")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
