"""Every built-in seed model exports through the CLI with fp32 parity <= 1e-4."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddpm_rt.models.registry import BUILTIN
from tests.helpers.bundles import call_main, read_manifest


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_exports_with_parity(name: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / name
    proc = call_main(capsys, "export", name, "--out", str(out), "--trajectory-steps", "8")
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(out)
    assert m["source"] == {"kind": "builtin", "ref": name}
    assert m["parity"]["max_abs"] <= 1e-4
    assert m["spec"] == BUILTIN[name].spec.to_dict()
    assert m["parity"]["trajectory"]["fp32"]["max_rel"] <= 1e-4
