"""Every built-in seed model exports through the CLI with fp32 parity <= 1e-4."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddpm_rt.models.catalog import BUILTIN
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


def test_checkpoint_dir_exports_and_bundle_points_back(tmp_path: Path, capsys) -> None:
    import json

    import numpy as np

    from ddpm_rt.sources import resolve_source
    from ddpm_rt.train.checkpoint import FORMAT, FORMAT_VERSION
    from tests.helpers.bundles import save_weights

    model = BUILTIN["swissroll"]
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    config = {**model.config, "hidden": 16}
    module = model.build(config)
    save_weights(module, ckpt / "model.safetensors")
    (ckpt / "config.json").write_text(json.dumps({
        "format": FORMAT, "format_version": FORMAT_VERSION, "kind": "swissroll",
        "model_config": config, "spec": model.spec.to_dict(),
    }))
    out = tmp_path / "bundle"
    proc = call_main(capsys, "export", str(ckpt), "--out", str(out), "--trajectory-steps", "0")
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(out)
    assert m["source"] == {"kind": "checkpoint", "ref": str(ckpt.resolve())}
    assert m["graph"]["parameters"] == sum(p.numel() for p in module.parameters())
    src = resolve_source(str(out))  # the bundle knows its torch module again
    assert src.load_module is not None
    x, t = np.zeros((1, 2), np.float32), np.ones((1,), np.float32)
    import torch

    with torch.no_grad():
        np.testing.assert_allclose(src.load_module()(torch.from_numpy(x), torch.from_numpy(t)).numpy(),
                                   module(torch.from_numpy(x), torch.from_numpy(t)).numpy())


def test_inspect_of_a_non_bundle_is_one_line(tmp_path: Path, capsys) -> None:
    from tests.cli_helpers import assert_one_line_error

    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    assert_one_line_error(call_main(capsys, "inspect", str(tmp_path / "x.onnx")), "not a readable onnx")
    assert_one_line_error(call_main(capsys, "inspect", str(tmp_path / "missing")), "not found")
