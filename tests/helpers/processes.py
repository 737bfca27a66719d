"""The real `ddpm-rt` entry point in child processes: started together, killed at random points, and the
temporaries a killed writer may leave behind."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

RNG = random.Random(int(os.environ.get("DDPM_RT_FAULT_SEED", "14")))


def popen(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ddpm_rt.cli", *args], cwd=cwd, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def temps(*dirs: Path) -> list[str]:
    """Temporaries (`.tmp` in the name) anywhere under `dirs`."""
    return [p.name for d in dirs if d.is_dir() for p in d.rglob("*") if ".tmp" in p.name]


def kill_at_random(args: list[str], env: dict[str, str], lo: float, hi: float) -> int:
    """Start the command, SIGKILL it after a random delay in [lo, hi] seconds; its exit code."""
    proc = popen(*args, env=env)
    time.sleep(RNG.uniform(lo, hi))
    proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=60)
