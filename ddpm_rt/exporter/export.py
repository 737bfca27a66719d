"""Export one resolved source to a verified bundle directory, atomically.

    trace (TorchScript exporter) → denoiser.onnx (fp32)
    → onnx.checker → ORT vs eager at batch 1 and 4, early/middle/late t → trajectory error
    → [fp16: convert, check and measure again]
    → manifest into metadata_props → sha256 of the final file → ddpm_rt.json

Everything is written in a temporary sibling directory that replaces `out` only at the
end, so an interrupted or failed export leaves no bundle that looks valid.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ddpm_rt.bundle.contract import CONTRACT, MIN_OPSET
from ddpm_rt.bundle.manifest import (
    EXPORTER_VERSION,
    MANIFEST_FILE,
    METADATA_KEY,
    ONNX_FILE,
    build_manifest,
    dumps,
    with_hash,
)
from ddpm_rt.errors import ConfigError
from ddpm_rt.exporter.parity import DEFAULT_TOLERANCE, TRAJECTORY_STEPS
from ddpm_rt.fsutil import file_sha256
from ddpm_rt.sources.source import ModelSource

MAX_OPSET = 21  # the newest opset the TorchScript exporter of torch 2.x writes

StatusFn = Callable[[str], None]


def stderr_status(message: str) -> None:
    sys.stderr.write(f"export: {message}\n")
    sys.stderr.flush()


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "fp32"  # fp32 | fp16 (graph precision; I/O stays float32)
    opset: int = MIN_OPSET
    verify: bool = True
    tolerance: float | None = None  # single-call max-abs; None = per-precision default
    trajectory_steps: int = TRAJECTORY_STEPS  # 0 = skip the trajectory comparison
    trajectory_batch: int = 1
    feature_cache: int | None = None  # U-Nets: also write the DeepCache graphs cut at this branch

    def __post_init__(self) -> None:
        if self.feature_cache is not None and self.precision != "fp32":
            raise ConfigError("--feature-cache writes fp32 graphs; export with --precision fp32 "
                              "(bf16 is chosen at run time: `sample --backend openvino --precision bf16`)")
        if self.precision not in ("fp32", "fp16"):
            raise ConfigError(f"export writes fp32 or fp16 graphs, got {self.precision!r}; int8 goes through "
                              "`export --precision int8` (a quantized variant), bf16 is a runtime precision "
                              "(`sample --backend openvino --precision bf16`)")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(f"--opset must be in {MIN_OPSET}..{MAX_OPSET}, got {self.opset}")
        if self.tolerance is not None and not self.tolerance > 0:
            raise ConfigError(f"--tolerance must be > 0, got {self.tolerance}")
        if self.trajectory_steps < 0:
            raise ConfigError(f"--trajectory-steps must be >= 0, got {self.trajectory_steps}")

    @property
    def effective_tolerance(self) -> float:
        return self.tolerance if self.tolerance is not None else DEFAULT_TOLERANCE[self.precision]


def versions() -> dict[str, str]:
    """Versions of the tools that produced a bundle."""
    import onnx
    import onnxruntime
    import torch

    import ddpm_rt

    return {
        "ddpm_rt": ddpm_rt.__version__,
        "exporter": EXPORTER_VERSION,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def check_out_dir(out: Path) -> None:
    """Refuse to replace anything that is not an earlier bundle (or an empty folder)."""
    if out.is_file():
        raise ConfigError(f"--out {out} is a file; give a directory path for the bundle")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise ConfigError(f"--out {out} exists and is not a bundle; choose a new or empty directory")


def _fmt(figures: dict[str, Any]) -> str:
    return f"max-abs {figures['max_abs']:.3g}, max-rel {figures['max_rel']:.3g}"


def export_bundle(
    src: ModelSource,
    out: Path,
    options: ExportOptions | None = None,
    status: StatusFn = stderr_status,
    extra_manifest: dict[str, Any] | None = None,
    replace_damaged: bool = False,
) -> dict[str, Any]:
    """Write the bundle for `src` to `out` and return its manifest (with hash).

    `replace_damaged` (the bundle cache) replaces whatever stands at `out`; a user's
    `--out` that holds something other than a bundle is refused instead.
    """
    import onnx

    from ddpm_rt.bundle.onnx_graph import macs_per_sample, parameter_count, set_metadata
    from ddpm_rt.errors import SourceError
    from ddpm_rt.exporter import parity as P
    from ddpm_rt.exporter.onnx_export import export_onnx, restore_unused_inputs
    from ddpm_rt.fsutil import atomic_directory

    options = options or ExportOptions()
    out = Path(out)
    if not replace_damaged:
        check_out_dir(out)
    if src.load_module is None:
        raise SourceError(f"{src.label} has no PyTorch module to export")
    module = src.load_module().float().eval()
    if options.feature_cache is not None:  # refuse a model that is not a U-Net before any work
        from ddpm_rt.models.feature_split import check_branch

        check_branch(module, options.feature_cache)
    spec = src.spec
    contract = replace(CONTRACT, opset=options.opset).for_spec(spec)  # x, t and the conditioning inputs
    tol = options.effective_tolerance
    batches = (contract.min_batch, contract.opt_batch)
    params = int(sum(p.numel() for p in module.parameters()))
    probes = P.probe_timesteps(spec)
    t_trace = probes[len(probes) // 2]

    with atomic_directory(out, what="bundle directory") as tmp:
        t0 = time.perf_counter()
        status(f"tracing {src.label} ({params / 1e6:.2f}M parameters, opset {contract.opset}, torchscript exporter)")
        fp32_path = tmp / (ONNX_FILE if options.precision == "fp32" else "denoiser.fp32.onnx")
        export_onnx(module, spec.sample_shape, t_trace, fp32_path, contract)
        model = onnx.load(str(fp32_path))
        notes = []
        restored = restore_unused_inputs(model, contract)
        if restored:
            onnx.save(model, str(fp32_path))
            if contract.t_name in restored:
                notes.append("the traced graph does not read t (the model ignores its timestep, or tracing "
                             "fixed a branch on it); t is kept as an unused input")
            ignored = [n for n in restored if n != contract.t_name]
            if ignored:
                notes.append(f"the traced graph does not read {', '.join(ignored)} (the model ignores its "
                             "conditioning); kept as unused input(s)")
            for note in notes:
                status(f"warning: {note}")
        graph = {"parameters": params, "onnx_parameters": parameter_count(model),
                 "macs_per_sample": macs_per_sample(model), "nodes": len(model.graph.node)}
        status(f"exported in {time.perf_counter() - t0:.1f}s ({len(model.graph.node)} nodes)")
        reference = P.TorchModel(module)
        parity: dict[str, Any] | None = None
        if options.verify:
            t1 = time.perf_counter()
            P.check_graph(fp32_path)
            ort32 = P.OrtModel(fp32_path)
            calls32 = P.call_parity(reference, ort32, spec, batches)
            status(f"fp32 graph vs eager, batch {batches}, t {[float(f'{t:.4g}') for t in probes]}: {_fmt(calls32)}")
            if options.precision == "fp32":
                P.check_tolerance(calls32, tol, "the ONNX graph")
            parity = {"precision": options.precision, "tolerance": tol, "max_abs": calls32["max_abs"],
                      "max_rel": calls32["max_rel"], "calls": calls32["calls"], "trajectory": {}}
            if options.trajectory_steps:
                traj = P.trajectory_parity(reference, ort32, spec, options.trajectory_steps, options.trajectory_batch)
                parity["trajectory"]["fp32"] = traj
                status(f"fp32 graph {traj['sampler']}-{traj['steps']} trajectory vs eager: {_fmt(traj)}")
            del ort32
            status(f"verified in {time.perf_counter() - t1:.1f}s")
        if options.precision == "fp16":
            from ddpm_rt.exporter.fp16 import to_fp16

            model = to_fp16(model, contract.t_name)
            onnx.save(model, str(tmp / ONNX_FILE))
            fp32_path.unlink()
            if options.verify:
                assert parity is not None
                P.check_graph(tmp / ONNX_FILE)
                ort16 = P.OrtModel(tmp / ONNX_FILE)
                calls16 = P.call_parity(reference, ort16, spec, batches)
                status(f"fp16 graph vs eager fp32: {_fmt(calls16)}")
                P.check_tolerance(calls16, tol, "the fp16 ONNX graph")
                parity |= {"fp32_graph": {k: calls32[k] for k in ("max_abs", "max_rel")},
                           "max_abs": calls16["max_abs"], "max_rel": calls16["max_rel"],
                           "calls": calls16["calls"]}
                if options.trajectory_steps:
                    traj = P.trajectory_parity(reference, ort16, spec, options.trajectory_steps,
                                               options.trajectory_batch)
                    parity["trajectory"]["fp16"] = traj
                    status(f"fp16 graph {traj['sampler']}-{traj['steps']} trajectory vs eager fp32: {_fmt(traj)}")
                del ort16
        if notes:
            extra_manifest = {**(extra_manifest or {}), "notes": notes}
        if options.feature_cache is not None:  # U-Net feature caching (exporter.feature_cache)
            from ddpm_rt.exporter.feature_cache import SECTION, export_feature_cache

            section = export_feature_cache(module, spec, options.feature_cache, tmp, contract, tol, t_trace,
                                           options.verify, status)
            extra_manifest = {**(extra_manifest or {}), SECTION: section}
        recommended = spec.sampler()  # the model's default sampler and step count (plan.default_sampler)
        extra_manifest = {"recommended": {"sampler": recommended.sampler, "steps": recommended.steps},
                          **(extra_manifest or {})}
        manifest = build_manifest(
            source=src.manifest_entry, spec=spec.to_dict(), io=contract.to_dict(spec.sample_shape),
            opset=contract.opset, precision=options.precision, graph=graph, parity=parity,
            exporter="torchscript", versions=versions(), extra=extra_manifest,
        )
        set_metadata(model, METADATA_KEY, dumps(manifest, indent=None))
        onnx.save(model, str(tmp / ONNX_FILE))
        manifest = with_hash(manifest, file_sha256(tmp / ONNX_FILE))
        (tmp / MANIFEST_FILE).write_text(dumps(manifest))
    status(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    return manifest
