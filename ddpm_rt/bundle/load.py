"""Reading a bundle: `denoiser.onnx` + `ddpm_rt.json`, or a bare .onnx whose metadata holds the manifest.

`load_bundle` checks, in order: the files exist, the manifest is ours and of a version we
read, the ONNX file is the one the manifest hashed, and the spec is valid. It needs neither
torch nor the `onnx` package: the graph's own inputs and outputs are checked against the
contract by the runtime that opens it (`bundle.contract.check_io`), where a session exists
anyway. Each failure names the problem and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddpm_rt.bundle.manifest import (
    FORMAT,
    FORMAT_VERSION,
    FP32_GRAPH,
    MANIFEST_FILE,
    METADATA_KEY,
    ONNX_FILE,
)
from ddpm_rt.errors import BundleError, ConfigError, first_line
from ddpm_rt.fsutil import file_sha256
from ddpm_rt.spec import DiffusionSpec


@dataclass(frozen=True)
class FeatureCacheGraphs:
    """A bundle's feature-caching pair: full (x, t -> out, feature) and shallow (x, t, feature -> out)."""

    full: Path
    shallow: Path
    feature_name: str
    feature_shape: tuple[int, ...]  # one sample's cached feature (C, H, W)
    branch: int
    recommended_interval: int | None = None  # measured on the model at export, if it was


@dataclass(frozen=True)
class Bundle:
    """A checked bundle. `onnx_path` is the graph to load (it need not be named denoiser.onnx)."""

    directory: Path
    manifest: dict[str, Any]
    spec: DiffusionSpec
    onnx_path: Path
    hash_checked: bool = True  # False for a bare .onnx (a file cannot hold its own hash)

    @property
    def onnx_sha256(self) -> str:
        """The graph's content hash (from the manifest when it was checked, else computed)."""
        return self.manifest.get("onnx_sha256") or file_sha256(self.onnx_path)

    @property
    def precision(self) -> str:
        return str(self.manifest.get("precision", "fp32"))

    def fp32_variant(self) -> Bundle | None:
        """An int8 bundle's fp32 graph (carried beside it, manifest `fp32_graph`), as a bundle of its own;
        None when the bundle carries none. `auto` ranks fp32/bf16/fp16 on it and int8 on this graph."""
        entry = self.manifest.get(FP32_GRAPH)
        if not entry:
            return None
        path = self.directory / str(entry["file"])
        if not path.is_file():
            raise BundleError(f"{self.directory} is missing its fp32 graph {path.name}; re-export the int8 bundle")
        if self.hash_checked and file_sha256(path) != entry["sha256"]:
            raise BundleError(f"{path} was modified after export (sha256 mismatch); re-export the int8 bundle")
        manifest = {**self.manifest, "precision": "fp32", "onnx_file": path.name, "onnx_sha256": entry["sha256"]}
        manifest.pop(FP32_GRAPH)
        return Bundle(self.directory, manifest, self.spec, path, self.hash_checked)

    def feature_cache(self) -> FeatureCacheGraphs:
        """The feature-caching graphs (`export --feature-cache`), hash-checked; BundleError naming the fix."""
        entry = self.manifest.get("feature_cache")
        if not entry:
            raise BundleError(f"{self.directory} has no feature-cache graphs; re-export it with "
                              "`ddpm-rt export ... --feature-cache 0` (U-Nets only), or drop --cache-interval")
        paths = []
        for role in ("full", "shallow"):
            path = self.directory / str(entry[role]["file"])
            if not path.is_file():
                raise BundleError(f"{self.directory} is missing its feature-cache graph {path.name}; re-export it")
            if self.hash_checked and file_sha256(path) != entry[role]["sha256"]:
                raise BundleError(f"{path} was modified after export (sha256 mismatch); re-export the bundle")
            paths.append(path)
        return FeatureCacheGraphs(paths[0], paths[1], str(entry["feature_name"]),
                                  tuple(int(d) for d in entry["feature_shape"]), int(entry["branch"]),
                                  entry.get("recommended_interval"))

    def graphs_to_open(self, feature_cache: bool) -> tuple[Path, Path | None, tuple[str, tuple[int, ...]] | None]:
        """(the graph a backend opens, the shallow graph, (feature name, shape)): the plain denoiser, or
        with `feature_cache` the full graph that also outputs the feature and the shallow one."""
        if not feature_cache:
            return self.onnx_path, None, None
        if self.precision != "fp32":
            raise ConfigError(f"feature caching runs the fp32 cache graphs; this bundle is {self.precision} "
                              "(open it without --cache-interval)")
        graphs = self.feature_cache()
        return graphs.full, graphs.shallow, (graphs.feature_name, graphs.feature_shape)

    @property
    def fixed_batch(self) -> int | None:
        """The batch a graph exported with a static batch accepts (None: any batch)."""
        value = self.manifest.get("fixed_batch")
        return None if value is None else int(value)


def parse_manifest(text: str, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise BundleError(f"{where} is not valid JSON ({e}); re-export the bundle with `ddpm-rt export`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{where} is not a ddpm-rt bundle manifest (format != {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{where} has no valid format_version; re-export the bundle with `ddpm-rt export`")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{where} has bundle format version {version}, newer than this ddpm-rt reads ({FORMAT_VERSION}); "
            "upgrade ddpm-rt (pip install -U ddpm-rt)"
        )
    if version < FORMAT_VERSION:
        raise BundleError(
            f"{where} has bundle format version {version}, older than this ddpm-rt reads ({FORMAT_VERSION}); "
            "re-export it with `ddpm-rt export`"
        )
    return manifest


def _embedded_manifest(onnx_path: Path) -> str | None:
    """The manifest JSON stored in a .onnx file's metadata_props (via onnx if present, else ORT)."""
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            model = onnx.load(str(onnx_path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - protobuf decode errors
            raise BundleError(f"{onnx_path} is not a readable ONNX file: {first_line(e)}") from None
        return next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4
    try:
        session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises untyped errors
        raise BundleError(f"{onnx_path} is not a readable ONNX file: {first_line(e)}") from None
    return session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)


def load_bundle(path: Path) -> Bundle:
    """Load and check a bundle directory or a self-describing .onnx file."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle {path} not found")
    if path.is_file() and path.name == ONNX_FILE and (path.parent / MANIFEST_FILE).is_file():
        path = path.parent  # the graph of a bundle directory: check it with its manifest
    if path.is_dir():
        manifest_path = path / MANIFEST_FILE
        if not manifest_path.is_file():
            raise BundleError(f"{path} has no {MANIFEST_FILE}: not a bundle (create one with `ddpm-rt export`)")
        try:
            text = manifest_path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise BundleError(f"cannot read {manifest_path}: {e}; re-export the bundle") from None
        manifest = parse_manifest(text, str(manifest_path))
        onnx_path = path / str(manifest.get("onnx_file", ONNX_FILE))
        if not onnx_path.is_file():
            raise BundleError(f"{path} is missing its graph {onnx_path.name}; re-export the bundle")
        want = manifest.get("onnx_sha256")
        if not want:
            raise BundleError(f"{manifest_path} lacks onnx_sha256; re-export the bundle")
        got = file_sha256(onnx_path)
        if got != want:
            raise BundleError(
                f"{onnx_path} was modified after export (sha256 {got[:12]}… != manifest {want[:12]}…); "
                "re-export the bundle"
            )
        directory, hash_checked = path, True
    elif path.suffix == ".onnx":
        onnx_path, directory, hash_checked = path, path.parent, False
        text = _embedded_manifest(onnx_path)
        if text is None:
            raise BundleError(
                f"{onnx_path} has no ddpm-rt manifest in its metadata (key {METADATA_KEY!r}); "
                "export it with `ddpm-rt export`"
            )
        manifest = parse_manifest(text, f"{onnx_path} metadata")
    else:
        raise BundleError(f"{path} is neither a bundle directory nor an .onnx file")
    try:
        spec = DiffusionSpec.from_dict(manifest["spec"])
    except Exception as e:  # noqa: BLE001 - KeyError / ConfigError alike
        raise BundleError(f"the manifest of {path} has an invalid diffusion spec: {e}") from None
    return Bundle(directory, manifest, spec, onnx_path, hash_checked)
