"""Run the real `ddpm-rt` entry point in a subprocess (exit codes and stderr as a user sees them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("DDPM_RT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "ddpm_rt.cli", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit code != 0, no traceback, a single `error:` line naming the problem."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])


def assert_usage_error(proc: subprocess.CompletedProcess[str], option: str) -> None:
    """Exit code 2, click's usage text, and an `Error:` line naming `option`; no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout + proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("Usage: "), proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and option in errors[0], proc.stderr
