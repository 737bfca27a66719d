"""The bundle manifest (`ddpm_rt.json`): what a host needs besides the graph itself.

The same JSON, minus `onnx_sha256` (a file cannot contain its own hash), is stored in
the ONNX `metadata_props` under the key `ddpm_rt`, so a bare .onnx is self-describing.
Plain data: the runtime reads it, the exporter writes it, neither needs the other.
"""

from __future__ import annotations

import json
from typing import Any

from ddpm_rt.precision import Precision

FORMAT = "ddpm-rt-bundle"
FORMAT_VERSION = 1
SAMPLER_GRAPH_VERSION = 2  # bump when fused sampler graphs change for the same plan (their caches key on it)
EXPORTER_VERSION = "1"  # bump when the exported graph changes for the same weights (invalidates caches)
ONNX_FILE = "denoiser.onnx"
MANIFEST_FILE = "ddpm_rt.json"
FP32_GRAPH = "fp32_graph"  # an int8 bundle's section naming the fp32 graph it carries: {file, sha256}
FP32_GRAPH_FILE = "denoiser_fp32.onnx"
METADATA_KEY = "ddpm_rt"
SOURCE_KINDS = ("builtin", "checkpoint", "diffusers", "module")
PRECISIONS = tuple(p.value for p in Precision)


def build_manifest(
    *,
    source: dict[str, str],
    spec: dict[str, Any],
    io: dict[str, Any],
    opset: int,
    precision: str,
    graph: dict[str, Any],
    parity: dict[str, Any] | None,
    exporter: str,
    versions: dict[str, str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest without its hash (add it with `with_hash` once the .onnx is final)."""
    assert source.get("kind") in SOURCE_KINDS, source
    assert precision in PRECISIONS, precision
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": dict(source),
        "spec": spec,
        "io": io,
        "onnx_file": ONNX_FILE,
        "opset": opset,
        "precision": precision,
        "graph": graph,  # parameter count, MACs per sample, ...
        "parity": parity,  # None when exported with --no-verify
        "exporter": exporter,  # "torchscript" | "dynamo"
        "versions": dict(versions),
        **(extra or {}),
    }


def with_hash(manifest: dict[str, Any], sha256: str) -> dict[str, Any]:
    return {**manifest, "onnx_sha256": sha256}


def without_hash(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k != "onnx_sha256"}


def dumps(manifest: dict[str, Any], indent: int | None = 2) -> str:
    return json.dumps(manifest, indent=indent, sort_keys=False) + ("\n" if indent else "")
