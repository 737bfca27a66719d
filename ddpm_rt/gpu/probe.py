"""GPU backends are fenced until proven: a first-use parity probe against the CPU reference.

Before `auto` picks a GPU backend on a machine, the backend runs a short deterministic
trajectory (DDIM, `PROBE_STEPS` steps, batch 2, fixed noise) of the model at hand, and
ONNX Runtime on the CPU runs the same one on the same bundle. The verdict (ok, the error,
the tolerance) is cached per (backend, GPU, driver, library versions) in
``<cache root>/gpu_probe/`` and shown by `ddpm-rt doctor`; a failed or crashed probe is
cached as failed, and `auto` then keeps to the CPU. Explicit `--backend` is never fenced.

No GPU has run this code in this project's CI: it is tested with a fake GPU backend.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_rt.errors import first_line
from ddpm_rt.fsutil import atomic_write_text, cache_root, json_key
from ddpm_rt.runtime.agreement import agreement
from ddpm_rt.runtime.loop import initial_noise

PROBE_STEPS = 10
PROBE_BATCH = 2
TOLERANCE = 1e-3  # relative RMS of the final sample vs the CPU reference (fp32 paths)
PROBE_DIR = "gpu_probe"
_LIBS = ("torch", "onnxruntime-gpu", "onnxruntime", "tensorrt", "ddpm-rt")


def _gpu_facts() -> dict[str, str]:
    """GPU name and driver from nvidia-smi (no torch needed); empty where there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        name, _, driver = out.strip().splitlines()[0].partition(",")
        return {"gpu": name.strip(), "driver": driver.strip()}
    return {}


def probe_key(backend: str) -> dict[str, Any]:
    versions = {}
    for lib in _LIBS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[lib] = importlib.metadata.version(lib)
    return {"backend": backend, **_gpu_facts(), "versions": versions}


def _path(key: dict[str, Any]) -> Path:

    digest = json_key(key, 20)
    return cache_root() / PROBE_DIR / f"{key['backend']}-{digest}.json"


def proven(backend: str) -> dict[str, Any] | None:
    """The cached verdict for `backend` on this machine and these versions, or None (never probed)."""
    try:
        verdict = json.loads(_path(probe_key(backend)).read_text())
    except (OSError, ValueError):
        return None
    return verdict if isinstance(verdict, dict) else None


def record(backend: str, verdict: dict[str, Any]) -> dict[str, Any]:
    key = probe_key(backend)
    verdict = {**verdict, "key": key}
    atomic_write_text(_path(key), json.dumps(verdict, indent=2) + "\n", what="cache directory")
    return verdict


def compare(candidate: Any, reference: Any, plan: Any, sample_shape: tuple[int, ...]) -> dict[str, Any]:
    """Run both (`Backend`s) on the same plan and noise; relative RMS error of the final sample."""
    x_init = initial_noise((PROBE_BATCH, *sample_shape), np.random.default_rng(0))
    ref = reference.sample(plan, x_init)
    got = candidate.sample(plan, x_init)
    a = agreement(got, ref)  # the comparison every check shares (runtime.agreement)
    return {"rel_rms": a.rel_rms, "max_abs": a.max_abs, "tolerance": TOLERANCE,
            "ok": bool(a.rel_rms <= TOLERANCE), "steps": plan.steps}


def run_probe(backend: str, open_candidate: Any, open_reference: Any, plan: Any,
              sample_shape: tuple[int, ...]) -> dict[str, Any]:
    """Probe `backend` (opened by `open_candidate(batch)`) against the CPU reference and cache the verdict."""
    try:
        with open_candidate(PROBE_BATCH) as cand, open_reference(PROBE_BATCH) as ref:
            verdict = compare(cand, ref, plan, sample_shape)
    except Exception as e:  # noqa: BLE001 - any failure of an unproven GPU path fences it
        verdict = {"ok": False, "error": f"{type(e).__name__}: {first_line(e)}"}
    return record(backend, verdict)
