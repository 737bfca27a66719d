"""A summary of a bundle or self-describing .onnx: manifest, graph I/O, size, FLOPs, parity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddpm_rt.bundle.contract import ORT_DTYPES
from ddpm_rt.bundle.load import Bundle, load_bundle


def _io_and_stats(bundle: Bundle) -> tuple[dict[str, Any], dict[str, Any]]:
    """Graph I/O and size figures: from the onnx package when installed, else from ONNX Runtime."""
    graph = dict(bundle.manifest.get("graph") or {})
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        from ddpm_rt.bundle.onnx_graph import graph_io, macs_per_sample, parameter_count

        model = onnx.load(str(bundle.onnx_path))
        if "onnx_parameters" not in graph:
            graph["onnx_parameters"] = parameter_count(model)
        if graph.get("macs_per_sample") is None:
            graph["macs_per_sample"] = macs_per_sample(model)
        return graph_io(model), graph
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4
    sess = ort.InferenceSession(str(bundle.onnx_path), so, providers=["CPUExecutionProvider"])
    io = {v.name: {"kind": kind, "dtype": ORT_DTYPES.get(v.type, v.type), "shape": list(v.shape)}
          for kind, vs in (("input", sess.get_inputs()), ("output", sess.get_outputs())) for v in vs}
    return io, graph


def _feature_cache(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """The manifest's feature-cache section without file hashes (`export --feature-cache`)."""
    if not entry:
        return None
    keep = ("branch", "branches", "feature_shape", "macs_per_sample", "recommended_interval")
    return {k: entry.get(k) for k in keep}


def describe(path: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything `ddpm-rt inspect` prints, as plain JSON-able data (`extra` adds sections)."""
    bundle = load_bundle(path)
    io, graph = _io_and_stats(bundle)
    m = bundle.manifest
    spec = m["spec"]
    return {
        "path": str(bundle.onnx_path),
        "hash_checked": bundle.hash_checked,
        "format_version": m["format_version"],
        "source": m.get("source"),
        "precision": bundle.precision,
        "opset": m.get("opset"),
        "exporter": m.get("exporter"),
        "versions": m.get("versions"),
        "schedule": {k: v for k, v in spec["schedule"].items() if k != "betas"},
        "prediction_type": spec["prediction_type"],
        "timestep_meaning": spec["timestep_meaning"],
        "sample_shape": spec["sample_shape"],
        "data_range": spec.get("data_range"),
        "clip": spec.get("clip"),
        "sampler_defaults": spec.get("sampler_defaults"),
        "recommended": m.get("recommended"),
        "io": io,
        "graph": {**graph, "file_bytes": bundle.onnx_path.stat().st_size},
        "parity": m.get("parity"),
        "feature_cache": _feature_cache(m.get("feature_cache")),
        **(extra or {}),
    }


def _human(n: float | None, unit: str = "") -> str:
    if n is None:
        return "unknown"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:g}{unit}"


def format_text(d: dict[str, Any]) -> str:
    """The human-readable form."""
    src = d["source"] or {}
    sched = d["schedule"]
    params = ", ".join(f"{k}={v}" for k, v in sched.items() if k != "kind")
    lines = [
        f"bundle    {d['path']}{'' if d['hash_checked'] else '  (bare .onnx: hash not checked)'}",
        f"source    {src.get('kind')}: {src.get('ref')}",
        f"format    v{d['format_version']}, opset {d['opset']}, {d['precision']} graph, {d['exporter']} exporter",
        f"schedule  {sched['kind']} ({params})",
        f"model     predicts {d['prediction_type']}; t = {d['timestep_meaning']}; sample {d['sample_shape']}, "
        f"data range {d['data_range']}, clip {d['clip']}",
    ]
    if d["sampler_defaults"]:
        lines.append(f"sampler   defaults {d['sampler_defaults']}")
    if d.get("recommended"):
        lines.append(f"recommends {d['recommended']['sampler']}, {d['recommended']['steps']} steps")
    lines.append("graph I/O")
    for name, io in d["io"].items():
        lines.append(f"  {io['kind']:<6} {name:<4} {io['dtype']:<8} {io['shape']}")
    g = d["graph"]
    macs = g.get("macs_per_sample")
    lines.append(
        f"size      {_human(g.get('parameters') or g.get('onnx_parameters'))} parameters, "
        f"{_human(g['file_bytes'], 'B')} file, {_human(macs, 'MAC')} per sample "
        f"(~{_human(None if macs is None else 2 * macs, 'FLOP')})"
    )
    fc = d.get("feature_cache")
    if fc:
        m = fc["macs_per_sample"]
        lines.append(f"cache     feature caching at branch {fc['branch']} of {fc['branches']}: shallow graph "
                     f"{_human(m['shallow'], 'MAC')} vs full {_human(m['full'], 'MAC')} per sample "
                     f"({m['shallow'] / m['full']:.2f}x); feature {fc['feature_shape']}; "
                     + ("no recommended interval" if fc["recommended_interval"] is None
                        else f"recommended --cache-interval {fc['recommended_interval']}"))
    for line in d.get("quality_guard") or []:
        lines.append(f"guard     {line}")
    p = d["parity"]
    if p is None:
        lines.append("parity    not verified (exported with --no-verify)")
    else:
        lines.append(f"parity    vs eager PyTorch: max-abs {p['max_abs']:.3g}, max-rel {p['max_rel']:.3g} "
                     f"(tolerance {p['tolerance']:g}, {len(p.get('calls', []))} calls)")
        for name, tr in (p.get("trajectory") or {}).items():
            lines.append(f"  {name} graph {tr['sampler']}-{tr['steps']} trajectory (batch {tr['batch']}): "
                         f"max-abs {tr['max_abs']:.3g}, max-rel {tr['max_rel']:.3g}, rms {tr['rms']:.3g}")
    return "\n".join(lines)
