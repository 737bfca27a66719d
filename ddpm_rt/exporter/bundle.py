"""Reading a bundle: `denoiser.onnx` + `ddpm_rt.json`, or a bare .onnx whose metadata holds the manifest.

`load_bundle` checks, in order: the files exist, the manifest is ours and of a version we
read, the ONNX file is the one the manifest hashed, and the graph's inputs and outputs
match the manifest's contract. Each failure names the problem and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddpm_rt.errors import BundleError
from ddpm_rt.exporter.contract import CONTRACT
from ddpm_rt.exporter.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    METADATA_KEY,
    ONNX_FILE,
    sha256_file,
)
from ddpm_rt.spec import DiffusionSpec

_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 11: "float64", 16: "bfloat16"}


@dataclass
class Bundle:
    """A checked bundle. `onnx_path` is the graph to load (it need not be named denoiser.onnx)."""

    directory: Path
    manifest: dict[str, Any]
    spec: DiffusionSpec
    onnx_path: Path
    hash_checked: bool = True  # False for a bare .onnx (a file cannot hold its own hash)


def _parse_manifest(text: str, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise BundleError(f"{where} is not valid JSON ({e}); re-export the bundle with `ddpm-rt export`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{where} is not a ddpm-rt bundle manifest (format != {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{where} has bundle format version {version}, this ddpm-rt reads version {FORMAT_VERSION}; "
            "re-export it with this version of `ddpm-rt export`"
        )
    return manifest


def graph_io(model) -> dict[str, dict[str, Any]]:
    """{name: {"dtype", "shape"}} of the graph's inputs and outputs (symbolic dims as names)."""
    init = {i.name for i in model.graph.initializer}
    io: dict[str, dict[str, Any]] = {}
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for v in values:
            if v.name in init:
                continue
            tt = v.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
            io[v.name] = {"kind": kind, "dtype": _DTYPES.get(tt.elem_type, str(tt.elem_type)), "shape": shape}
    return io


def check_graph_matches(model, spec: DiffusionSpec, where: Path) -> None:
    """The graph's x / t / out names, dtypes and shapes agree with the manifest's spec."""
    io = graph_io(model)
    want = CONTRACT.symbolic_shapes(spec.sample_shape)
    for name, shape in want.items():
        if name not in io:
            raise BundleError(
                f"{where}: the graph has no {name!r} tensor (has {', '.join(io)}); it does not follow "
                "the ddpm-rt graph contract x, t -> out"
            )
        got = io[name]
        if got["dtype"] != CONTRACT.dtype:
            raise BundleError(f"{where}: graph tensor {name!r} is {got['dtype']}, the contract says {CONTRACT.dtype}")
        fixed_got = [d if isinstance(d, int) else None for d in got["shape"][1:]]
        if len(got["shape"]) != len(shape) or fixed_got != list(shape[1:]):
            raise BundleError(
                f"{where}: graph tensor {name!r} has shape {got['shape']} but the manifest's sample shape "
                f"{list(spec.sample_shape)} needs {shape}; the manifest and graph are inconsistent, re-export"
            )


def load_bundle(path: Path) -> Bundle:
    """Load and check a bundle directory or a self-describing .onnx file."""
    import onnx

    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle {path} not found")
    if path.is_file() and path.suffix == ".onnx" and (path.parent / MANIFEST_FILE).is_file() \
            and path.name == ONNX_FILE:
        path = path.parent  # the graph of a bundle directory: check it with its manifest
    if path.is_dir():
        manifest_path = path / MANIFEST_FILE
        if not manifest_path.is_file():
            raise BundleError(f"{path} has no {MANIFEST_FILE}: not a bundle (create one with `ddpm-rt export`)")
        manifest = _parse_manifest(manifest_path.read_text(), str(manifest_path))
        onnx_path = path / manifest.get("onnx_file", ONNX_FILE)
        if not onnx_path.is_file():
            raise BundleError(f"{path} is missing its graph {onnx_path.name}; re-export the bundle")
        want = manifest.get("onnx_sha256")
        if not want:
            raise BundleError(f"{manifest_path} lacks onnx_sha256; re-export the bundle")
        got = sha256_file(onnx_path)
        if got != want:
            raise BundleError(
                f"{onnx_path} was modified after export (sha256 {got[:12]}… != manifest {want[:12]}…); "
                "re-export the bundle"
            )
        directory, hash_checked = path, True
    elif path.suffix == ".onnx":
        onnx_path, directory, hash_checked = path, path.parent, False
        manifest = None
    else:
        raise BundleError(f"{path} is neither a bundle directory nor an .onnx file")
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf decode errors
        raise BundleError(f"{onnx_path} is not a readable ONNX file: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if manifest is None:
        text = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
        if text is None:
            raise BundleError(
                f"{onnx_path} has no ddpm-rt manifest in its metadata (key {METADATA_KEY!r}); "
                "export it with `ddpm-rt export`"
            )
        manifest = _parse_manifest(text, f"{onnx_path} metadata")
    try:
        spec = DiffusionSpec.from_dict(manifest["spec"])
    except Exception as e:  # noqa: BLE001 - KeyError / ConfigError alike
        raise BundleError(f"the manifest of {path} has an invalid diffusion spec: {e}") from None
    check_graph_matches(model, spec, onnx_path)
    return Bundle(directory, manifest, spec, onnx_path, hash_checked)
