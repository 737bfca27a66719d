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
    CacheGraphs,
    GraphOptions,
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


def resolve_graph_kind(graph: str, plan: SamplingPlan, edit: bool = False) -> str:
    """`auto` -> loop for deterministic plans (and edit graphs, which take the noise), step otherwise;
    refuse a plain loop for stochastic plans."""
    if plan.cached_calls:  # feature caching: the full-loop graph only, so far
        if edit or graph == "step" or plan.stochastic:
            raise ConfigError("feature caching runs in the full-loop graph (--graph loop) of a deterministic "
                              "sampler without --edit so far; the step graph, stochastic samplers and edit graphs "
                              "do not run it yet")
        return "loop"
    if graph == "auto":
        return "loop" if edit or not plan.stochastic else "step"
    if graph not in GRAPH_KINDS:
        raise ConfigError(f"unknown graph kind {graph!r}; choose auto, {', '.join(GRAPH_KINDS)}")
    if graph != "step" and plan.stochastic and not edit:
        s = plan.sampler
        raise ConfigError(
            f"a full-loop graph needs a deterministic sampler, but {s.sampler} (eta={s.eta}) draws noise "
            "at every step; use --graph step (the host loops and supplies the noise), "
            "or --sampler ddim --eta 0"
        )
    return graph


def _io(name: str, dtype: str, shape: list[Any], doc: str) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape, "doc": doc}


def _extra_io(options: GraphOptions, spec: DiffusionSpec, graph: str) -> list[dict[str, Any]]:
    """The inputs a guided or edit graph adds, described for hosts (same order as the graph)."""
    sample = ["batch", *spec.sample_shape]
    ios = [_io(c.name, c.dtype, ["batch", *c.shape],
               f"the conditioning of each sample ({c.describe()}); the graph adds the null half itself")
           for c in options.cond]
    if options.guided:
        ios += [_io("guidance_scale", "float32", [], "classifier-free guidance w: u + w·(c − u); 1 = conditional, "
                    "0 = unconditional"),
                _io("guidance_rescale", "float32", [], "guidance rescale φ in [0, 1] (0 = off)")]
    if options.edit:
        ios += [_io("start", "int64", [], "the first step run (0 = the whole schedule; strength s: "
                    "N − min(int(N·s), N)); the step graph is called with step = start .. steps − 1"),
                _io("image", "float32", sample, "the image to start from and to keep, in data_range"),
                _io("mask", "float32", sample, "1 = known (kept), 0 = generated; zeros for a plain edit")]
        if graph == "loop":
            ios.append(_io("noise", "float32", ["steps", *sample], "per-step noise: row i ~ N(0, I) at step i"))
    return ios


def sampler_metadata(plan: SamplingPlan, spec: DiffusionSpec, graph: str,
                     options: GraphOptions | None = None) -> dict[str, Any]:
    """The `ddpm_rt_sampler` description: everything a host needs to drive the graph."""
    options = options or GraphOptions()
    s = plan.sampler
    sample = ["batch", *spec.sample_shape]
    noisy = [int(i) for i in np.flatnonzero(plan.noise_rows(masked=options.edit))]
    first = ("at step == start it is the noise z (the graph noises the image)" if options.edit
             else "at step 0 it is x_T ~ N(0, I)")
    if graph == "step":
        inputs = [
            _io("x", "float32", sample, f"the running sample; {first}"),
            _io("step", "int64", [], "index into the plan, 0 <= step < steps, called in order 0, 1, ..."),
            _io("noise", "float32", sample, "z ~ N(0, I) for this step; read only at noise_steps; "
                "pass zeros elsewhere"),
        ]
        outputs = [_io("x_prev", "float32", sample, "the sample after this step (feed it back as x)")]
        h_in, h_out = history_names(plan)
        inputs += [_io(h, "float32", sample, f"d_(step-{j}), the converted output {j} step(s) back "
                       "(zeros at step 0); the previous step's output " + h_out[j - 1])
                   for j, h in enumerate(h_in, start=1)]
        outputs += [_io(h, "float32", sample, "feed back as input " + h_in[j - 1] + " at the next step")
                    for j, h in enumerate(h_out, start=1)]
    else:
        inputs = [_io("x_init", "float32", sample, "the noise z of x_start = qx·image + qn·z" if options.edit
                      else "x_T ~ N(0, I)")]
        outputs = [_io("x_0", "float32", sample, "the final sample, after every step")]
    inputs += _extra_io(options, spec, graph)
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
                 "is used at step i only at noise_steps",
        "noise_steps": noisy,
        "conditioning": [c.to_dict() for c in options.cond],
        "guided": options.guided,
        "default_guidance": spec.default_guidance if options.guided else None,
        "edit": options.edit,
        "model_calls": plan.model_calls,
        "calls": [int(v) for v in plan.calls] if not plan.uniform else None,
        # feature caching: calls 2 = the shallow graph on the kept deep feature (inside the loop graph)
        "feature_cache": plan.meta.get("feature_cache"),
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


def run_fused(sess: Any, graph: str, plan: SamplingPlan, x_init: np.ndarray, noise: np.ndarray,
              extras: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Run a fused graph: one Run for `loop`, a host loop over `step` for `step`.

    `extras`: the guided / edit inputs by name; an edit step graph runs steps start..N-1, and
    `noise` is always the full [N, B, ...] (row i at step i)."""
    extras = dict(extras or {})
    if graph == "loop":  # one Run
        feed = {"x_init": x_init, **extras, **({"noise": noise} if "start" in extras else {})}
        return sess.run(["x_0"], feed)[0]
    h_in, h_out = history_names(plan)
    x, hist = x_init, [np.zeros_like(x_init) for _ in h_in]  # multistep: d_{i-1}..d_{i-H}
    for i in range(int(extras.get("start", 0)), plan.steps):
        feed = {"x": x, "step": np.array(i, dtype=np.int64), "noise": noise[i], **dict(zip(h_in, hist, strict=True)),
                **extras}
        x, *hist = sess.run(["x_prev", *h_out], feed)
    return x


def reference_loop(denoiser: bytes | str, plan: SamplingPlan, x_init: np.ndarray, noise: np.ndarray,
                   level: str = "all", extras: dict[str, np.ndarray] | None = None,
                   options: GraphOptions | None = None) -> np.ndarray:
    """The Python reference: `sample_loop` driven by an ORT session on the plain denoiser (with
    `runtime.guidance` and `ddpm_rt.editing` for the guided / edit inputs)."""
    from ddpm_rt.editing import Edit
    from ddpm_rt.runtime.guidance import GuidedModel, make_guidance

    options, extras = options or GraphOptions(), dict(extras or {})
    if options.cache is not None:  # feature caching: the two cache graphs, the feature kept between calls
        full = _session(options.cache.full.SerializeToString(), level=level)
        shallow = _session(options.cache.shallow.SerializeToString(), level=level)
        kept: dict[str, np.ndarray] = {}

        def full_call(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            out, kept["feature"] = full.run(None, {"x": x, "t": t})
            return out

        def cached_call(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            return shallow.run(None, {"x": x, "t": t, options.cache.feature_name: kept["feature"]})[0]

        return sample_loop(full_call, plan, x_init, noise=noise, shallow=cached_call)
    sess = _session(denoiser, level=level)
    names = [i.name for i in sess.get_inputs()]

    def call(x: np.ndarray, t: np.ndarray, *cond: np.ndarray) -> np.ndarray:
        return sess.run(None, dict(zip(names, (x, t, *cond), strict=True)))[0]

    model: Any = call
    if options.guided:
        g = make_guidance(options.cond, {c.name: extras[c.name] for c in options.cond}, x_init.shape[0],
                          scale=float(extras["guidance_scale"]), rescale=float(extras["guidance_rescale"]))
        model = GuidedModel(call, g, x_init.shape[0], tuple(x_init.shape[1:]))
    edit, start = None, int(extras.get("start", 0))
    if options.edit:
        assert options.plan_for_start is not None
        plan = options.plan_for_start(start)
        edit = Edit(extras["image"], extras["mask"] > 0.5)
        noise = noise[start:]
    return sample_loop(model, plan, x_init, noise=noise, edit=edit)


def verification_inputs(options: GraphOptions, plan: SamplingPlan, sample_shape: tuple[int, ...],
                        rng: np.random.Generator, batch: int = VERIFY_BATCH) -> list[dict[str, np.ndarray]]:
    """The extra inputs the check runs with: conditioning drawn over its range (null included), a
    guidance scale of 3 with rescale, and for edits two starts (0 and a third of the way), a random
    image and a half-known mask."""
    base: dict[str, np.ndarray] = {}
    for c in options.cond:
        if c.kind == "class":
            base[c.name] = np.array([c.num_classes - 1, int(c.null)] + [0] * (batch - 2), np.int64)[:batch]
        else:
            lo, hi = c.range or (-1.0, 1.0)
            base[c.name] = rng.uniform(lo, hi, (batch, *c.shape)).astype(np.float32)
    if options.guided:
        base.update(guidance_scale=np.array(3.0, np.float32), guidance_rescale=np.array(0.5, np.float32))
    if not options.edit:
        return [base]
    image = rng.uniform(-1.0, 1.0, (batch, *sample_shape)).astype(np.float32)
    mask = (rng.uniform(size=(batch, *sample_shape)) < 0.5).astype(np.float32)
    starts = [0] if np.any(plan.calls == 0) else sorted({0, plan.steps // 3})
    return [{**base, "start": np.array(s, np.int64), "image": image, "mask": mask} for s in starts]


def verify(model: onnx.ModelProto, denoiser: onnx.ModelProto, graph: str, plan: SamplingPlan,
           sample_shape: tuple[int, ...], seed: int = 0, options: GraphOptions | None = None) -> dict[str, Any]:
    """Fused graph vs the Python loop on a seeded batch; raises ExportError above TOLERANCE.

    Returns ``max_abs_diff`` (both at CHECK_LEVEL, the checked figure; the worst over the
    guided / edit input sets) and ``max_abs_diff_default_level`` (both at ORT's default level).
    """
    options = options or GraphOptions()
    rng = np.random.default_rng(seed)
    x_init = rng.standard_normal((VERIFY_BATCH, *sample_shape), dtype=np.float32)
    noise = rng.standard_normal((plan.steps, VERIFY_BATCH, *sample_shape), dtype=np.float32)
    fused_bytes, den_bytes = model.SerializeToString(), denoiser.SerializeToString()
    figures: dict[str, Any] = {}
    for key, level in (("max_abs_diff", CHECK_LEVEL), ("max_abs_diff_default_level", "all")):
        fused_sess = _session(fused_bytes, level=level)
        worst = 0.0
        for extras in verification_inputs(options, plan, sample_shape, rng):
            fused = run_fused(fused_sess, graph, plan, x_init, noise, extras)
            ref = reference_loop(den_bytes, plan, x_init, noise, level=level, extras=extras, options=options)
            if fused.shape != ref.shape or not np.all(np.isfinite(fused)):
                raise ExportError(f"the fused {graph} graph returned shape {fused.shape} or non-finite values; "
                                  f"expected finite {ref.shape}")
            worst = max(worst, float(np.max(np.abs(fused - ref))))
        figures[key] = worst
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


def graph_options(spec: DiffusionSpec, sampler: SamplerSpec, edit: bool) -> GraphOptions:
    """What the graph takes for this model: its conditioning (guided, when the model has any) and edits."""
    for c in spec.conditioning:
        if c.null is None:
            raise ConfigError(f"{c.name}: this model learned no unconditional input, so a guided sampler graph "
                              "cannot form the null half; sample it with the Python loop (`ddpm-rt sample`)")
    if sampler.repaint is not None and not edit:
        raise ConfigError("a RePaint sampler inpaints: export it with --edit (inputs start, image, mask)")
    if edit and sampler.start:
        raise ConfigError("an edit graph takes the start as an input; drop --strength from export-sampler")
    from dataclasses import replace

    def plan_for_start(start: int) -> SamplingPlan:
        return spec.plan(replace(sampler, start=start))

    return GraphOptions(cond=tuple(spec.conditioning), edit=edit, plan_for_start=plan_for_start if edit else None)


def export_sampler_graph(
    denoiser: onnx.ModelProto,
    manifest: dict[str, Any],
    spec: DiffusionSpec,
    sampler: SamplerSpec,
    out: Path,
    graph: str = "auto",
    edit: bool = False,
    cache: tuple[CacheGraphs, int, str] | None = None,
) -> SamplerExport:
    """Build, verify and atomically write the fused sampler graph for `sampler`.

    A conditional model gets a guided graph (its conditioning, guidance_scale, guidance_rescale as
    inputs); `edit` adds start, image and mask (a full-loop edit graph also takes the noise).
    `cache` = (the bundle's feature-cache graphs, interval, schedule): feature caching in the loop graph.
    """
    options = graph_options(spec, sampler, edit)
    plan = spec.plan(sampler)
    if cache is not None:
        from dataclasses import replace

        from ddpm_rt.plan import with_feature_cache

        if options.guided:
            raise ConfigError("feature caching does not run in guided sampler graphs yet; drop --cache-interval")
        plan = with_feature_cache(plan, cache[1], cache[2])
        options = replace(options, cache=cache[0])
    kind = resolve_graph_kind(graph, plan, edit)
    description = sampler_metadata(plan, spec, kind, options)
    build = build_loop_graph if kind == "loop" else build_step_graph
    props = {METADATA_KEY: json.dumps(manifest, sort_keys=True)}
    model = build(denoiser, plan, tuple(spec.sample_shape), props, options)
    check_model(model)
    description["verify"] = {
        **verify(model, denoiser, kind, plan, tuple(spec.sample_shape), options=options),
        "tolerance": TOLERANCE, "batch": VERIFY_BATCH, "steps": plan.steps, "check_level": CHECK_LEVEL,
        "against": "runtime.loop.sample_loop driven by ONNX Runtime on the plain denoiser, same noise"
                   + (" (the feature-cache graphs on cached rows)" if cache is not None else "")
                   + (" (runtime.guidance for CFG)" if options.guided else "")
                   + (" (ddpm_rt.editing: starts 0 and N/3, a half-known mask)" if edit else ""),
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
