"""The lean start holds in a full install: with torch (and every extra) installed, sampling a bundle
imports neither torch nor the exporter — checked on `sys.modules` of the real command in a subprocess
(the import-graph test cannot see what a registry imports by name at run time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the point: torch is installed, and still not imported

PROBE = """
import json, sys
from ddpm_rt.cli import main
sys.argv = ["ddpm-rt", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
heavy = sorted(m for m in sys.modules if m in ("torch", "diffusers", "sklearn", "tensorrt")
               or m.startswith(("ddpm_rt.exporter", "ddpm_rt.gpu.trt", "ddpm_rt.gpu.torch", "ddpm_rt.gpu.ort")))
print("LEAN-START " + json.dumps({"code": code, "heavy": heavy}))
"""

SHIPPED = Path(__file__).resolve().parents[2] / "ddpm_rt" / "assets"


def _run(args: list[str], cache: Path) -> dict:
    env = {"DDPM_RT_CACHE": str(cache), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                          timeout=300, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("LEAN-START ")), None)
    assert line is not None, proc.stdout + proc.stderr
    return json.loads(line.removeprefix("LEAN-START "))


@pytest.mark.parametrize("source", ["digits", str(SHIPPED / "swissroll" / "bundle")])
def test_sampling_a_bundle_imports_neither_torch_nor_the_exporter(source, tmp_path):
    args = ["sample", source, "--steps", "1", "--batch", "2", "--out", str(tmp_path / "x.npy")]
    first = _run(args, tmp_path / "cache")  # first use: auto guards and ranks the CPU candidates
    again = _run(args, tmp_path / "cache")  # warm cache
    for result in (first, again):
        assert result == {"code": 0, "heavy": []}
    assert (tmp_path / "x.npy").is_file()
