"""From a model source to an open backend: the one explicit preparation step of the command layer.

    ModelSource ──bundle_for──▶ Bundle     (its own / shipped, else exported once into the cache)
                └─module_for──▶ nn.Module  (torch backends only)
    choose_backend("auto") ──▶ the fastest backend that can run here *and has proven itself*
    open_for ──▶ Backend.open(artifact, batch, options)

Sampling a bundle with a CPU runtime touches neither torch nor the exporter: both are
imported only when a source has no ready bundle or a torch backend is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddpm_rt.bundle.load import Bundle, load_bundle
from ddpm_rt.errors import BackendUnavailable
from ddpm_rt.fsutil import LogFn
from ddpm_rt.registry import REGISTRY, available_backends, check_backend, open_backend
from ddpm_rt.runtime.backend import Backend, BackendOptions
from ddpm_rt.sources.source import ModelSource

if TYPE_CHECKING:
    import torch


def bundle_for(source: ModelSource, cache_dir: Path | None = None, log: LogFn | None = None) -> Bundle:
    """The source's bundle: its own (or a built-in's shipped one), else exported once into the cache."""
    if source.bundle is not None:
        return load_bundle(source.bundle)
    try:
        from ddpm_rt.exporter.cache import cached_bundle
    except ImportError as e:  # torch / onnx missing: say which extra brings them
        raise BackendUnavailable(
            f"{source.label} has no ready bundle and exporting one needs the export extra ({e.name} is "
            "missing): pip install 'ddpm-rt[torch]', or sample a bundle made by `ddpm-rt export`"
        ) from None
    return cached_bundle(source, cache_dir, log)


def module_for(source: ModelSource) -> torch.nn.Module:
    """The source's PyTorch module (torch backends)."""
    if source.load_module is None:
        raise BackendUnavailable(
            f"{source.label} has no PyTorch module (an ONNX-only bundle); use --backend ort, or sample "
            "its original source (built-in name, checkpoint or diffusers folder)"
        )
    try:
        return source.load_module()
    except ImportError as e:
        raise BackendUnavailable(f"loading {source.label} needs {e.name}: pip install 'ddpm-rt[torch]'") from None


_REFERENCE = "ort"  # the CPU backend every GPU backend is first checked against


@dataclass(frozen=True)
class Choice:
    """The backend (and precision) to open and why (shown by `sample`)."""

    name: str
    reason: str
    precision: str = "fp32"
    bundle: Bundle | None = None  # the graph to open when not the source's own (an int8 bundle's fp32 graph)


def _runnable(name: str, source: ModelSource) -> bool:
    """Whether `name` can get its artifact for this source without failing."""
    if REGISTRY[name].artifact == "module":
        return source.load_module is not None
    return source.bundle is not None or source.load_module is not None


def _gpu_verdict(name: str, source: ModelSource, cache_dir: Path | None, log: LogFn | None) -> dict[str, Any]:
    """The cached first-use parity verdict of GPU backend `name`, probing it now if there is none."""
    from ddpm_rt.gpu import probe

    verdict = probe.proven(name)
    if verdict is not None:
        return verdict
    if log is not None:
        log(f"{name}: first use on this machine, checking it against ONNX Runtime on the CPU")
    plan = source.spec.plan(source.spec.sampler(probe.PROBE_STEPS, sampler="ddim")) \
        if source.spec.schedule.family == "vp" else source.spec.plan(source.spec.sampler())
    bundle = bundle_for(source, cache_dir, log)
    return probe.run_probe(
        name, lambda b: open_backend(name, artifact_for(name, source, cache_dir, log), b),
        lambda b: open_backend(_REFERENCE, bundle, b), plan, source.spec.sample_shape)


def choose_backend(name: str, source: ModelSource, cache_dir: Path | None = None,
                   log: LogFn | None = None, *, batch: int = 1, precision: str | None = None,
                   threads: int | None = None, allow_inexact: bool = False, calls: int | None = None) -> Choice:
    """The backend and precision to run `source` with.

    An explicit `name` is checked and kept; a reduced `precision` on a CPU backend must pass the
    quality guard first (`runtime.quality_guard`), unless `allow_inexact`. `auto` takes a GPU backend
    only after its first-use parity probe passed here (`gpu.probe`); on the CPU it ranks the
    candidates by measured speed and takes the fastest that passes the quality guard, once per
    (bundle, batch, CPU, versions) (`runtime.ranking`) — a reduced precision included, unless
    `precision` forces one; an int8 bundle's fp32 graph competes with its int8 graph.
    """
    from ddpm_rt.precision import Precision

    wanted = None if precision is None else Precision.parse(precision)
    if name != "auto":
        check_backend(name)
        return _explicit(name, source, wanted or Precision.FP32, cache_dir, log, threads, allow_inexact)
    skipped: list[str] = []
    cpu: list[str] = []
    for candidate in available_backends():
        if not _runnable(candidate, source):
            continue
        if not REGISTRY[candidate].gpu:
            cpu.append(candidate)
            continue
        if wanted not in (None, Precision.FP32):
            continue
        verdict = _gpu_verdict(candidate, source, cache_dir, log)
        if verdict.get("ok"):
            why = "fastest usable backend, its parity probe passed here"
            return Choice(candidate, why + (f"; skipped {', '.join(skipped)}" if skipped else ""))
        failure = verdict.get("error") or f"rel. error {verdict.get('rel_rms', 0.0):.2g}"
        skipped.append(f"{candidate} (failed its first-use parity probe here: {failure})")
    if not cpu:
        raise BackendUnavailable("no backend can run this model here; see `ddpm-rt doctor`")
    note = f"; skipped {', '.join(skipped)}" if skipped else ""
    bundle_backends = [c for c in cpu if REGISTRY[c].artifact == "bundle"]
    if len(bundle_backends) < 2 and wanted in (None, Precision.FP32):
        return Choice(cpu[0], "fastest usable backend" + note)
    from ddpm_rt.runtime import ranking

    bundle = bundle_for(source, cache_dir, log)
    fp32, int8 = bundle, None
    if bundle.precision == Precision.INT8.value:
        fp32, int8 = bundle.fp32_variant(), bundle
        if fp32 is None:  # made before int8 bundles carried their fp32 graph: nothing to guard against
            name = "openvino" if "openvino" in bundle_backends else bundle_backends[0]
            return Choice(name, "an int8 bundle without its fp32 graph (re-export it to let auto compare "
                          "precisions)" + note, Precision.INT8.value)
    candidates = [c for c in ranking.default_candidates(int8)
                  if c.backend in bundle_backends and (wanted is None or c.precision is wanted)]
    if not candidates:
        raise BackendUnavailable(f"no CPU backend here runs --precision {wanted}; see `ddpm-rt doctor`")
    ranked = ranking.rank(fp32, batch, candidates, budget_s=RANK_BUDGET_S, threads=threads, log=log)
    if log is not None and not ranked.cached:
        log(f"auto: {ranked.backend} {ranked.precision} (cached: the next run starts right away)")
    backend, prec, short = ranked.for_calls(calls)  # a short run may not repay opening the fastest
    chosen = int8 if prec == Precision.INT8.value else fp32
    return Choice(backend, ranked.reason + short + note, prec, chosen)


RANK_BUDGET_S = 2.0  # seconds of timed calls shared by the candidates, once per machine and batch


def _explicit(name: str, source: ModelSource, precision: object, cache_dir: Path | None, log: LogFn | None,
              threads: int | None, allow_inexact: bool) -> Choice:
    """An explicit backend; a reduced precision on a CPU backend is guarded first."""
    from ddpm_rt.precision import Precision

    if REGISTRY[name].gpu or REGISTRY[name].artifact != "bundle":
        return Choice(name, "asked for", precision.value)
    bundle = bundle_for(source, cache_dir, log)
    fp32 = bundle.fp32_variant() if bundle.precision == Precision.INT8.value else bundle
    int8 = bundle if bundle.precision == Precision.INT8.value else None
    if precision is Precision.FP32:
        return Choice(name, "asked for", precision.value, fp32 or bundle)
    if fp32 is None:  # an int8 bundle without its fp32 graph: it is what the user made
        return Choice(name, f"asked for ({bundle.precision} bundle)", precision.value)
    from ddpm_rt.runtime import quality_guard

    candidate = int8 if precision is Precision.INT8 else None
    verdict = quality_guard.guard(fp32, name, precision, candidate_bundle=candidate, threads=threads, log=log)
    quality_guard.require_ok(verdict, allow_inexact)
    return Choice(name, f"asked for; quality guard: {verdict.summary()}", precision.value, candidate or fp32)


def artifact_for(name: str, source: ModelSource, cache_dir: Path | None = None,
                 log: LogFn | None = None) -> Any:
    """What backend `name` opens on: a Bundle or an nn.Module."""
    if REGISTRY[name].artifact == "module":
        return module_for(source)
    return bundle_for(source, cache_dir, log)


def open_for(name: str, source: ModelSource, batch: int, options: BackendOptions | None = None,
             log: LogFn | None = None) -> Backend:
    """Open the concrete backend `name` for `source` (artifact prepared here)."""
    options = options or BackendOptions()
    cache = Path(options.cache_dir) / "bundles" if options.cache_dir else None
    return open_backend(name, artifact_for(name, source, cache, log), batch, options)
