"""load_bundle: every way a bundle can be wrong is named; the export cache reuses only on a key match."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch

from ddpm_rt.bundle.load import load_bundle
from ddpm_rt.errors import BundleError
from ddpm_rt.exporter.cache import cached_bundle
from ddpm_rt.exporter.export import ExportOptions, export_bundle
from ddpm_rt.registry import open_backend
from ddpm_rt.schedule import ScheduleSpec
from ddpm_rt.sources import SourceKind, resolve_source
from ddpm_rt.spec import DiffusionSpec
from tests.helpers.sources import module_source
from tests.helpers.tiny import make_mlp

SPEC = DiffusionSpec(ScheduleSpec(kind="cosine", num_train_timesteps=40), "epsilon", (2,), clip=(-1.0, 1.0))
QUIET = ExportOptions(trajectory_steps=0)


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def master(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "mlp"
    export_bundle(module_source(make_mlp(), SPEC), out, QUIET, _quiet)
    return out


@pytest.fixture
def bundle(master: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(master, tmp_path / "bundle"))


def _manifest(b: Path) -> dict:
    return json.loads((b / "ddpm_rt.json").read_text())


def test_good_bundle_loads(bundle: Path) -> None:
    b = load_bundle(bundle)
    assert b.spec == SPEC and b.hash_checked and b.onnx_path == bundle / "denoiser.onnx"
    assert b.manifest["source"] == {"kind": "module", "ref": "tests.helpers.tiny:make_mlp"}
    src = resolve_source(str(bundle))  # ddpm_rt.sources reads it the same way
    assert src.kind is SourceKind.BUNDLE and src.spec == SPEC and src.bundle == bundle.resolve()
    assert src.content_key == b.manifest["onnx_sha256"]


def test_edited_onnx_is_named(bundle: Path) -> None:
    with open(bundle / "denoiser.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="modified after export"):
        load_bundle(bundle)


def test_wrong_format_version_is_named(bundle: Path) -> None:
    m = _manifest(bundle)
    m["format_version"] = 99
    (bundle / "ddpm_rt.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format version 99, newer than.*upgrade ddpm-rt"):
        load_bundle(bundle)
    m["format_version"] = 0
    (bundle / "ddpm_rt.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format version 0, older than.*re-export"):
        load_bundle(bundle)


@pytest.mark.parametrize(("missing", "needle"), [("denoiser.onnx", "missing its graph"), ("ddpm_rt.json", "no ddpm_rt.json")])
def test_missing_file_is_named(bundle: Path, missing: str, needle: str) -> None:
    (bundle / missing).unlink()
    with pytest.raises(BundleError, match=needle):
        load_bundle(bundle)


def test_missing_bundle_path(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nothing")


def test_manifest_and_graph_shapes_must_agree(bundle: Path) -> None:
    m = _manifest(bundle)
    m["spec"]["sample_shape"] = [3]
    (bundle / "ddpm_rt.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="inconsistent"):  # found when a runtime opens the graph
        open_backend("ort", load_bundle(bundle), 2)


def test_bare_onnx_carries_its_manifest(bundle: Path, tmp_path: Path) -> None:
    bare = tmp_path / "elsewhere" / "model.onnx"
    bare.parent.mkdir()
    shutil.copy(bundle / "denoiser.onnx", bare)
    b = load_bundle(bare)
    assert b.spec == SPEC and not b.hash_checked and b.onnx_path == bare
    model = onnx.load(str(bare))
    del model.metadata_props[:]
    onnx.save(model, str(bare))
    with pytest.raises(BundleError, match="no ddpm-rt manifest"):
        load_bundle(bare)


def test_cache_exports_once_and_rekeys_on_new_weights(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DDPM_RT_CACHE", str(tmp_path / "cache"))
    module = make_mlp()
    source = module_source(module, SPEC, ref="swissroll", kind=SourceKind.BUILTIN)
    first = cached_bundle(source).directory
    assert first.parent == tmp_path / "cache" / "bundles"
    stamp = (first / "denoiser.onnx").stat().st_mtime_ns
    assert cached_bundle(source).directory == first
    assert (first / "denoiser.onnx").stat().st_mtime_ns == stamp  # reused, not re-exported
    assert load_bundle(first).manifest["source"] == {"kind": "builtin", "ref": "swissroll"}

    with torch.no_grad():
        module.net[0].bias.add_(1.0)
    source = module_source(module, SPEC, ref="swissroll", kind=SourceKind.BUILTIN)
    second = cached_bundle(source).directory
    assert second != first and load_bundle(second).manifest["cache_key"] != load_bundle(first).manifest["cache_key"]

    (second / "denoiser.onnx").write_bytes(b"broken")  # a damaged entry is exported again
    assert cached_bundle(source).directory == second
    load_bundle(second)
    (second / "ddpm_rt.json").unlink()  # a lost manifest, too
    assert cached_bundle(source).directory == second
    shutil.rmtree(second)
    second.write_text("not a directory")  # and a file where the entry belongs
    assert cached_bundle(source).directory == second and second.is_dir()
