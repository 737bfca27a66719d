"""`export --feature-cache BRANCH`: the two graphs of U-Net feature caching (DeepCache), verified.

Beside `denoiser.onnx` the bundle gets

    denoiser.cache_full.onnx     x, t          -> out, feature   the full U-Net, also returning h at the cut
    denoiser.cache_shallow.onnx  x, t, feature -> out            levels 0..BRANCH only (`models.feature_split`)

and a manifest section `feature_cache` (branch, files + sha256, the feature's shape per sample,
MACs per sample of each graph, the parity figures). Verification: the full graph's `out` and
`feature` against the eager split at every probe t and batch; the shallow graph fed a feature
computed at a *nearby* step (x perturbed, t moved by a few respaced steps) against the eager
U-Net patched the same way (`feature_split.patched_forward`), at the same tolerance as the graph.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ddpm_rt.bundle.contract import GraphContract
from ddpm_rt.errors import ExportError, first_line
from ddpm_rt.fsutil import file_sha256
from ddpm_rt.runtime.loop import initial_noise

if TYPE_CHECKING:
    import torch

    from ddpm_rt.spec import DiffusionSpec

FULL_FILE = "denoiser.cache_full.onnx"
SHALLOW_FILE = "denoiser.cache_shallow.onnx"
FEATURE = "feature"  # the graphs' name of the cached tensor
SECTION = "feature_cache"  # the manifest section


def split_modules(module: torch.nn.Module, branch: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(full-with-feature, shallow) eager modules for a module backend (torch-cuda's device loop)."""
    from ddpm_rt.models.feature_split import split

    return split(module, branch)


def _export(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            contract: GraphContract) -> None:
    import torch

    axes = {name: {0: contract.batch_axis} for name in (*inputs, *outputs)}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=contract.opset, do_constant_folding=True,
                              dynamo=False)
    except Exception as e:  # noqa: BLE001 - any tracer failure is an export error
        raise ExportError(f"torch.onnx.export of the {path.name} graph failed: {type(e).__name__}: {first_line(e)}"
                          ) from None


def _session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("inf")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def verify(module: torch.nn.Module, branch: int, full_path: Path, shallow_path: Path, spec: DiffusionSpec,
           batches: tuple[int, ...], contract: GraphContract, seed: int = 0) -> dict[str, Any]:
    """max-abs errors of both graphs vs eager (module docstring); one row per (batch, t). The full
    graph's output is checked against the module's own forward, so a U-Net whose forward changed
    since `models.feature_split` copied it fails here instead of caching the wrong thing."""
    import torch

    from ddpm_rt.exporter.parity import verification_plan
    from ddpm_rt.models.feature_split import patched_forward, split

    full_mod, _ = split(module, branch)
    full, shallow = _session(full_path), _session(shallow_path)
    x_n, t_n = contract.x_name, contract.t_name
    ts = verification_plan(spec).timesteps
    picks = sorted({0, len(ts) // 2, max(len(ts) - 4, 0)})
    rng = np.random.default_rng(seed)
    rows = []
    for batch in batches:
        for k in picks:
            x = initial_noise((batch, *spec.sample_shape), rng)
            t = np.full((batch,), ts[k], np.float32)
            # a nearby later step: x moved a little, t a few respaced steps on
            x2 = (x + 0.05 * rng.standard_normal(x.shape, dtype=np.float32)).astype(np.float32)
            t2 = np.full((batch,), ts[min(k + 3, len(ts) - 1)], np.float32)
            with torch.inference_mode():
                # the full graph's `out` against the module's own forward (not the split's copy of it)
                ref_out = module(torch.from_numpy(x), torch.from_numpy(t)).float()
                ref_feat = full_mod(torch.from_numpy(x), torch.from_numpy(t))[1]
                with patched_forward(module, branch, ref_feat):
                    ref_shallow = module(torch.from_numpy(x2), torch.from_numpy(t2)).float().numpy()
            out, feat = full.run(None, {x_n: x, t_n: t})
            got_shallow = shallow.run(None, {x_n: x2, t_n: t2, FEATURE: ref_feat.numpy()})[0]
            rows.append({"batch": batch, "t": float(t[0]), "t_shallow": float(t2[0]),
                         "full_out": _max_abs(out, ref_out.numpy()), "feature": _max_abs(feat, ref_feat.numpy()),
                         "shallow_out": _max_abs(got_shallow, ref_shallow)})
    worst = {key: max(r[key] for r in rows) for key in ("full_out", "feature", "shallow_out")}
    return {**worst, "calls": rows}


CANDIDATE_INTERVALS = (2, 3, 5)
# The largest interval whose final DDIM-50 samples stay this close to the uncached run's (rel-RMS
# over a batch) is recorded as the bundle's recommendation (`sample --cache-interval auto`).
# Calibrated on the shipped digits U-Net (benchmarks/results/feature_cache.md): DDIM-50 at N = 2
# is 0.022 from uncached and moves the feature FD by 1.1 real-vs-real std; so below 0.02.
# Multistep solvers at ~15 steps tolerate caching far worse (digits unipc-15, N = 2: FD 7.5 -> 11.1).
RECOMMEND_REL_RMS = 0.02
RECOMMEND_SAMPLER = ("ddim", 50)


class _SessionPair:
    """The two cache graphs as ``(x, t)`` callables for `sample_loop` (full keeps the feature)."""

    def __init__(self, full_path: Path, shallow_path: Path, contract: GraphContract) -> None:
        self.full, self.shallow = _session(full_path), _session(shallow_path)
        self.x, self.t = contract.x_name, contract.t_name
        self.feature: np.ndarray | None = None

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        out, self.feature = self.full.run(None, {self.x: x, self.t: t})
        return out

    def cached(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        return self.shallow.run(None, {self.x: x, self.t: t, FEATURE: self.feature})[0]


def recommend_interval(full_path: Path, shallow_path: Path, spec: DiffusionSpec, contract: GraphContract,
                       batch: int = 4, seed: int = 0) -> dict[str, Any]:
    """Final-sample rel-RMS of cached runs vs the uncached one (DDIM-50, or the model's own sampler
    outside VP schedules) for each candidate interval, and the largest within RECOMMEND_REL_RMS."""
    from ddpm_rt.plan import with_feature_cache
    from ddpm_rt.runtime.loop import sample_loop

    pair = _SessionPair(full_path, shallow_path, contract)
    name, steps = RECOMMEND_SAMPLER
    vp = spec.schedule.family == "vp"
    sampler = spec.sampler(min(steps, spec.schedule.num_train_timesteps), sampler=name) if vp else spec.sampler()
    plan = spec.plan(sampler)
    rng = np.random.default_rng(seed)
    x = initial_noise((batch, *spec.sample_shape), rng)
    noise = rng.standard_normal((plan.steps, *x.shape), dtype=np.float32)
    ref = sample_loop(pair, plan, x, noise=noise).astype(np.float64)
    scale = float(np.sqrt(np.mean(ref ** 2))) or 1.0
    errors = {}
    for n in CANDIDATE_INTERVALS:
        got = sample_loop(pair, with_feature_cache(plan, n), x, noise=noise, shallow=pair.cached)
        errors[n] = float(np.sqrt(np.mean((got - ref) ** 2))) / scale
    ok = [n for n, e in errors.items() if e <= RECOMMEND_REL_RMS]
    return {"sampler": sampler.sampler, "steps": plan.steps, "batch": batch, "rel_rms": errors,
            "threshold": RECOMMEND_REL_RMS, "interval": max(ok) if ok else None}


def export_feature_cache(module: torch.nn.Module, spec: DiffusionSpec, branch: int, directory: Path,
                         contract: GraphContract, tolerance: float, t_trace: float, verify_graphs: bool = True,
                         status: Any = None) -> dict[str, Any]:
    """Write both graphs into `directory` (the bundle's temporary directory) and return the manifest section."""
    import onnx
    import torch

    from ddpm_rt.bundle.onnx_graph import macs_per_sample
    from ddpm_rt.exporter.onnx_export import example_inputs
    from ddpm_rt.exporter.parity import check_graph
    from ddpm_rt.models.feature_split import branches, split

    full_mod, shallow_mod = split(module, branch)  # ConfigError for a model that is not a U-Net
    x, t = example_inputs(spec.sample_shape, t_trace)
    with torch.no_grad():
        _, feat = full_mod(x, t)
    full_path, shallow_path = directory / FULL_FILE, directory / SHALLOW_FILE
    x_n, t_n, out_n = contract.x_name, contract.t_name, contract.out_name
    _export(full_mod, (x, t), full_path, [x_n, t_n], [out_n, FEATURE], contract)
    _export(shallow_mod, (x, t, feat), shallow_path, [x_n, t_n, FEATURE], [out_n], contract)
    macs = {"full": macs_per_sample(onnx.load(str(full_path))),
            "shallow": macs_per_sample(onnx.load(str(shallow_path)))}
    section: dict[str, Any] = {
        "branch": branch, "branches": branches(module),
        "full": {"file": FULL_FILE, "sha256": file_sha256(full_path)},
        "shallow": {"file": SHALLOW_FILE, "sha256": file_sha256(shallow_path)},
        "feature_name": FEATURE, "feature_shape": list(feat.shape[1:]),
        "macs_per_sample": macs, "parity": None,
    }
    if verify_graphs:
        check_graph(full_path)
        check_graph(shallow_path)
        figures = verify(module, branch, full_path, shallow_path, spec, (contract.min_batch, contract.opt_batch),
                         contract)
        worst = max(figures["full_out"], figures["feature"], figures["shallow_out"])
        if not worst <= tolerance:
            raise ExportError(f"the feature-cache graphs differ from eager PyTorch by max-abs {worst:.3g} (full out "
                              f"{figures['full_out']:.3g}, feature {figures['feature']:.3g}, shallow "
                              f"{figures['shallow_out']:.3g}) > tolerance {tolerance:g}; raise --tolerance")
        section["parity"] = {"tolerance": tolerance, **figures}
        rec = recommend_interval(full_path, shallow_path, spec, contract)
        section["recommendation"], section["recommended_interval"] = rec, rec["interval"]
        if status is not None:
            ratio = f", shallow/full MACs {macs['shallow'] / macs['full']:.2f}" if macs["full"] and macs["shallow"] else ""
            status(f"feature cache at branch {branch}: full out {figures['full_out']:.3g}, feature "
                   f"{figures['feature']:.3g}, shallow (feature from a nearby step) {figures['shallow_out']:.3g} "
                   f"max-abs vs eager{ratio}")
            errs = ", ".join(f"N={n}: {e:.3g}" for n, e in rec["rel_rms"].items())
            status(f"cached vs uncached {rec['sampler']}-{rec['steps']} final samples, rel-RMS {errs}; "
                   f"recommended --cache-interval {rec['interval']}")
    return section
