"""Export a fused sampler graph: build it, describe it in metadata, verify it, write it atomically.

The verification runs the fused graph in ONNX Runtime and the reference Python loop
(`runtime.loop.sample_loop` driven by an ORT session on the plain denoiser) from the
same initial and per-step noise, and fails above `TOLERANCE`.

Both sides run at ORT's *basic* optimization level for the check, so that they run the
same kernels whatever rewrites a given ORT build applies at its default level (such as
the NCHWc convolution layout on x86 CPUs): kernel choices differ by ~1e-6 per call, which
an untrained 50-step trajectory can amplify past 1e-4 while the graph itself is exact.
The figure at ORT's default level is measured and reported too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ddpm_rt.errors import ConfigError, ExportError, first_line
from ddpm_rt.exporter.sampler_graph import (
    GRAPH_KINDS,
    build_loop_graph,
    build_step_graph,
    check_model,
    history_names,
)
from ddpm_rt.fsutil import atomic_write, atomic_write_text
from ddpm_rt.plan import SamplerSpec, SamplingPlan
from ddpm_rt.runtime.loop import sample_loop
from ddpm_rt.spec import DiffusionSpec

METADATA_KEY = "ddpm_rt"  # the bundle manifest (JSON), as in denoiser.onnx
SAMPLER_KEY = "ddpm_rt_sampler"  # the sampler description (JSON), see `sampler_metadata`
SAMPLER_FORMAT = 1
TOLERANCE = 1e-4  # max |fused - reference| on the verification batch
VERIFY_BATCH = 2
MAX_PROTO_BYTES = 2**31 - 1  # protobuf limit of a single .onnx file
OPT_LEVELS = {
    "disabled": lambda L: L.ORT_DISABLE_ALL,
    "basic": lambda L: L.ORT_ENABLE_BASIC,
    "extended": lambda L: L.ORT_ENABLE_EXTENDED,
    "all": lambda L: L.ORT_ENABLE_ALL,
}
CHECK_LEVEL = "basic"  # same kernels on both sides (see the module docstring)


@dataclass(frozen=True)
class SamplerExport:
    """What `export_sampler_graph` wrote and measured."""

    path: Path
    graph: str  # step | loop
    plan: SamplingPlan
    max_abs_diff: float
    description: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "out": str(self.path),
            "sidecar": str(sidecar_path(self.path)),
            "graph": self.graph,
            "sampler": self.plan.sampler.sampler,
            "steps": self.plan.steps,
            "eta": self.plan.sampler.eta,
            "history_depth": self.plan.depth,
            "max_abs_diff": self.max_abs_diff,
            "max_abs_diff_default_level": self.description["verify"]["max_abs_diff_default_level"],
            "tolerance": TOLERANCE,
        }


def resolve_graph_kind(graph: str, plan: SamplingPlan) -> str:
    """`auto` -> loop for deterministic plans, step otherwise; refuse a loop for stochastic plans."""
    if graph == "auto":
        return "step" if plan.stochastic else "loop"
    if graph not in GRAPH_KINDS:
        raise ConfigError(f"unknown graph kind {graph!r}; choose auto, {', '.join(GRAPH_KINDS)}")
    if graph != "step" and plan.stochastic:
        s = plan.sampler
        raise ConfigError(
            f"a full-loop graph needs a deterministic sampler, but {s.sampler} (eta={s.eta}) draws noise "
            "at every step; use --graph step (the host loops and supplies the noise), "
            "or --sampler ddim --eta 0"
        )
    return graph


def _io(name: str, dtype: str, shape: list[Any], doc: str) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape, "doc": doc}


def sampler_metadata(plan: SamplingPlan, spec: DiffusionSpec, graph: str) -> dict[str, Any]:
    """The `ddpm_rt_sampler` description: everything a host needs to drive the graph."""
    s = plan.sampler
    sample = ["batch", *spec.sample_shape]
    noisy = [int(i) for i in np.flatnonzero(plan.sigma > 0)]
    if graph == "step":
        inputs = [
            _io("x", "float32", sample, "the running sample; at step 0 it is x_T ~ N(0, I)"),
            _io("step", "int64", [], "index into the plan, 0 <= step < steps, called in order 0, 1, ..."),
            _io("noise", "float32", sample, "z ~ N(0, I) for this step; read only where sigma[step] > 0 "
                "(noise_steps); pass zeros elsewhere"),
        ]
        outputs = [_io("x_prev", "float32", sample, "the sample after this step (feed it back as x)")]
        h_in, h_out = history_names(plan)
        inputs += [_io(h, "float32", sample, f"d_(step-{j}), the converted output {j} step(s) back "
                       "(zeros at step 0); the previous step's output " + h_out[j - 1])
                   for j, h in enumerate(h_in, start=1)]
        outputs += [_io(h, "float32", sample, "feed back as input " + h_in[j - 1] + " at the next step")
                    for j, h in enumerate(h_out, start=1)]
    else:
        inputs = [_io("x_init", "float32", sample, "x_T ~ N(0, I)")]
        outputs = [_io("x_0", "float32", sample, "the final sample, after every step")]
    return {
        "format": SAMPLER_FORMAT,
        "graph": graph,
        "sampler": s.sampler,
        "steps": plan.steps,
        "eta": s.eta,
        "spacing": s.spacing,
        "step_scale": s.step_scale,
        "variance_type": s.variance_type,
        "deterministic": not plan.stochastic,
        "clip": None if plan.clip is None else list(plan.clip),
        "sample_shape": list(spec.sample_shape),
        "data_range": list(spec.data_range),
        "inputs": inputs,
        "outputs": outputs,
        "noise": "initial noise x_T ~ N(0, I) float32 [batch, ...]; per-step noise row i ~ N(0, I) "
                 "is used at step i only where sigma_i > 0 (noise_steps)",
        "noise_steps": noisy,
        # multistep plans (step graph): outputs fed back as inputs; zeros at step 0
        "history": {"depth": plan.depth, "converts_to": plan.meta.get("converts_to", "x0"),
                    "carry": [{"output": o, "input": i, "init": "zeros"}
                              for i, o in zip(*history_names(plan), strict=True)] if graph == "step" else []},
        "timesteps": [float(v) for v in plan.timesteps],
        "sigma": [float(v) for v in plan.sigma],
    }


def _session(model: bytes | str, threads: int | None = None, level: str = "all") -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = OPT_LEVELS[level](ort.GraphOptimizationLevel)
    if threads is not None:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise ExportError(f"ONNX Runtime cannot load the graph: {first_line(e)}") from None


def run_fused(sess: Any, graph: str, plan: SamplingPlan, x_init: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Run a fused graph: one Run for `loop`, a host loop over `step` for `step`."""
    if graph == "loop":  # one Run
        return sess.run(["x_0"], {"x_init": x_init})[0]
    h_in, h_out = history_names(plan)
    x, hist = x_init, [np.zeros_like(x_init) for _ in h_in]  # multistep: d_{i-1}..d_{i-H}
    for i in range(plan.steps):
        feed = {"x": x, "step": np.array(i, dtype=np.int64), "noise": noise[i], **dict(zip(h_in, hist, strict=True))}
        x, *hist = sess.run(["x_prev", *h_out], feed)
    return x


def reference_loop(denoiser: bytes | str, plan: SamplingPlan, x_init: np.ndarray, noise: np.ndarray,
                   level: str = "all") -> np.ndarray:
    """The Python reference: `sample_loop` driven by an ORT session on the plain denoiser."""
    sess = _session(denoiser, level=level)
    return sample_loop(lambda x, t: sess.run(None, {"x": x, "t": t})[0], plan, x_init, noise=noise)


def verify(model: onnx.ModelProto, denoiser: onnx.ModelProto, graph: str, plan: SamplingPlan,
           sample_shape: tuple[int, ...], seed: int = 0) -> dict[str, Any]:
    """Fused graph vs the Python loop on a seeded batch; raises ExportError above TOLERANCE.

    Returns ``max_abs_diff`` (both at CHECK_LEVEL, the checked figure) and
    ``max_abs_diff_default_level`` (both at ORT's default level, for information).
    """
    rng = np.random.default_rng(seed)
    x_init = rng.standard_normal((VERIFY_BATCH, *sample_shape), dtype=np.float32)
    noise = rng.standard_normal((plan.steps, VERIFY_BATCH, *sample_shape), dtype=np.float32)
    fused_bytes, den_bytes = model.SerializeToString(), denoiser.SerializeToString()
    figures = {}
    for key, level in (("max_abs_diff", CHECK_LEVEL), ("max_abs_diff_default_level", "all")):
        fused = run_fused(_session(fused_bytes, level=level), graph, plan, x_init, noise)
        ref = reference_loop(den_bytes, plan, x_init, noise, level=level)
        if fused.shape != ref.shape or not np.all(np.isfinite(fused)):
            raise ExportError(f"the fused {graph} graph returned shape {fused.shape} or non-finite values; "
                              f"expected finite {ref.shape}")
        figures[key] = float(np.max(np.abs(fused - ref)))
        if key == "max_abs_diff" and not figures[key] <= TOLERANCE:
            raise ExportError(
                f"the fused {graph} graph differs from the Python loop by {figures[key]:.3g} "
                f"(tolerance {TOLERANCE:g}); the graph was not written"
            )
    return figures


def sidecar_path(graph: Path) -> Path:
    """Where `export_sampler_graph` writes the description beside the graph: X.onnx -> X.json."""
    return Path(graph).with_suffix(".json")


def is_sampler_graph(path: Path) -> bool:
    """True for an .onnx written by `export_sampler_graph` (it has the SAMPLER_KEY metadata)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not readable: let the bundle loader report it
        return False
    return any(p.key == SAMPLER_KEY for p in model.metadata_props)


def load_denoiser(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf / IO errors
        raise ExportError(f"cannot read the denoiser graph {path}: {e}") from None


def export_sampler_graph(
    denoiser: onnx.ModelProto,
    manifest: dict[str, Any],
    spec: DiffusionSpec,
    sampler: SamplerSpec,
    out: Path,
    graph: str = "auto",
) -> SamplerExport:
    """Build, verify and atomically write the fused sampler graph for `sampler`."""
    plan = spec.plan(sampler)
    kind = resolve_graph_kind(graph, plan)
    description = sampler_metadata(plan, spec, kind)
    build = build_loop_graph if kind == "loop" else build_step_graph
    props = {METADATA_KEY: json.dumps(manifest, sort_keys=True)}
    model = build(denoiser, plan, tuple(spec.sample_shape), props)
    check_model(model)
    description["verify"] = {
        **verify(model, denoiser, kind, plan, tuple(spec.sample_shape)),
        "tolerance": TOLERANCE, "batch": VERIFY_BATCH, "steps": plan.steps, "check_level": CHECK_LEVEL,
        "against": "runtime.loop.sample_loop driven by ONNX Runtime on the plain denoiser, same noise",
    }
    onnx.helper.set_model_props(model, {**props, SAMPLER_KEY: json.dumps(description)})
    if model.ByteSize() > MAX_PROTO_BYTES:
        raise ExportError("the fused graph is over 2 GiB, the limit of one .onnx file; "
                          "use the plain bundle with a host loop instead")
    atomic_write(Path(out), lambda p: onnx.save(model, str(p)))
    # the same description beside the graph, for hosts that cannot read ONNX metadata (browsers);
    # written second, so a sidecar on disk means its graph is complete
    atomic_write_text(sidecar_path(Path(out)), json.dumps(description, indent=1) + "\n")
    return SamplerExport(Path(out), kind, plan, description["verify"]["max_abs_diff"], description)
