"""The sampler inside the graph: the denoiser plus the plan's update fused into one ONNX model.

Two graphs are built from a bundle's denoiser (its nodes copied under a ``den/`` prefix)
and a `SamplingPlan` (its tables stored as initializers, indexed with ``Gather``):

* **step graph** — one reverse step; the host loops ``step = 0 .. N-1``::

      inputs   x      float32 [B, ...]   the running sample (x_T ~ N(0, I) at step 0)
               step   int64   []         index into the plan (0 = first, noisiest step)
               noise  float32 [B, ...]   z ~ N(0, I); read only where sigma[step] > 0
               hist_j float32 [B, ...]   multistep plans only, j = 1..H: d_{step-j}, the
                                         converted output j steps back (zeros at step 0)
      outputs  x_prev      float32 [B, ...]
               hist_j_next float32 [B, ...]   multistep only: feed back as hist_j next step
                                              (hist_1_next = d_step, hist_j_next = hist_{j-1})

* **full-loop graph** (deterministic plans only) — every step in one ONNX ``Loop``::

      input    x_init float32 [B, ...]   x_T ~ N(0, I)
      output   x_0    float32 [B, ...]

  Multistep plans carry hist_1..hist_H as loop state too (zeros before the first step).

Extensions (`GraphOptions`; inputs added after the ones above, in this order):

* **guided** (a conditional bundle): each conditioning input of the denoiser (e.g. ``class_labels``
  int64 [B]), ``guidance_scale`` float32 [] and ``guidance_rescale`` float32 []. The step doubles
  the batch (x, t repeated; conditioning = [given; null]), calls the denoiser once on 2B, splits
  and combines ``out = u + w·(c − u)`` (then rescale φ, per sample), as `runtime.guidance`.
* **edit**: ``start`` int64 [] (the first step run), ``image`` float32 [B, ...] (the image to start
  from and to keep) and ``mask`` float32 [B, ...] (1 = known). The step graph noises the image at
  step == start (x is then z: x = qx·image + qn·z); after every calling row the known region is
  ``kx·image + kn·noise`` (so pass the step's noise everywhere the metadata's ``noise_steps`` say).
  The full-loop graph takes ``x_init`` (z), ``image``, ``mask``, ``start`` and ``noise``
  [N, B, ...] and runs steps start..N-1. Multistep coefficients depend on the steps run since the
  start: the table holds N·(H + 1) rows, row i·(H + 1) + min(i − start, H). RePaint's undo rows
  (plan column ``calls`` = 0) skip the denoiser inside an ``If``.

Per step, with the plan's row i (see `ddpm_rt.plan`)::

    t      = Expand(timesteps[i], [B])                               # (B,)
    out    = denoiser(x, t)                                          # (B, ...)
    d      = [clip](cx_i·x + co_i·out)                               # plans that convert
    x_prev = a_i·x + b_i·out [+ p0_i·d + Σ_j hist_i,j·hist_j] + sigma_i·z

The term order matches `runtime.loop.sample_loop`, so both agree to float rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ddpm_rt.bundle.contract import CONTRACT
from ddpm_rt.conditioning import CondInput
from ddpm_rt.errors import ExportError
from ddpm_rt.plan import SamplingPlan

PREFIX = "den/"  # every copied denoiser name lives under this prefix
MIN_OPSET = 13  # Clip with tensor bounds, Loop with a scalar condition
GRAPH_KINDS = ("step", "loop")
# The denoiser contract (bundle.contract): inputs x, t, then the conditioning inputs; one output.
DENOISER_INPUTS = CONTRACT.input_names  # (x, t): the unconditional inputs
EDIT_INPUTS = ("start", "image", "mask")
GUIDANCE_INPUTS = ("guidance_scale", "guidance_rescale")
_ONNX_TYPE = {"int64": TensorProto.INT64, "float32": TensorProto.FLOAT}


@dataclass(frozen=True)
class CacheGraphs:
    """Feature caching's two graphs (`exporter.feature_cache`): full (x, t -> out, feature) and shallow
    (x, t, feature -> out). In a full-loop graph the feature is loop-carried state and each step runs
    one of them inside an ``If`` on the plan column ``full`` (1 = full, 0 = a cached row)."""

    full: onnx.ModelProto
    shallow: onnx.ModelProto
    feature_name: str
    feature_shape: tuple[int, ...]


@dataclass(frozen=True)
class GraphOptions:
    """What a sampler graph takes besides the sample: the denoiser's conditioning (a guided graph),
    and whether it edits (start, image, mask). `plan_for_start` gives the plan of a run that starts
    at step s (edit graphs of multistep plans: their coefficients depend on the start)."""

    cond: tuple[CondInput, ...] = ()
    edit: bool = False
    plan_for_start: Callable[[int], SamplingPlan] | None = None
    cache: CacheGraphs | None = None  # feature caching (a plan with cached rows; full-loop graphs only)

    @property
    def guided(self) -> bool:
        return bool(self.cond)


def _rename_graph(graph: onnx.GraphProto, mapping: dict[str, str], prefix: str = PREFIX) -> None:
    """Rename every value in `graph` (and its subgraphs) in place: mapped names, else prefix+name."""

    def name(n: str) -> str:
        if not n:  # an omitted optional input stays omitted
            return n
        return mapping.get(n, prefix + n)

    for vi in (*graph.input, *graph.output, *graph.value_info):
        vi.name = name(vi.name)
    for init in graph.initializer:
        init.name = name(init.name)
    for node in graph.node:
        node.input[:] = [name(n) for n in node.input]
        node.output[:] = [name(n) for n in node.output]
        if node.name:
            node.name = prefix + node.name
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename_graph(attr.g, mapping, prefix)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _rename_graph(g, mapping, prefix)


def _check_denoiser(model: onnx.ModelProto, cond: tuple[CondInput, ...] = ()) -> int:
    """Check the denoiser contract; return its default-domain opset."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i.name for i in g.input if i.name not in inits]
    want = (*DENOISER_INPUTS, *(c.name for c in cond))
    if tuple(inputs) != want or len(g.output) != 1:
        raise ExportError(
            f"the denoiser graph must have inputs ({', '.join(want)}) and one output, got inputs {inputs} "
            f"and outputs {[o.name for o in g.output]}; re-export the bundle with `ddpm-rt export`"
        )
    if len(g.sparse_initializer):
        raise ExportError("the denoiser graph has sparse initializers, which cannot be fused; re-export it dense")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ExportError(
            f"the denoiser uses opset {opset}; sampler graphs need opset >= {MIN_OPSET} "
            "(re-export the bundle with a newer opset)"
        )
    return opset


def _denoiser_parts(
    denoiser: onnx.ModelProto, x: str, t: str, out: str, cond: dict[str, str] | None = None
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The denoiser's nodes and initializers, renamed so they read `x`, `t` (and the conditioning
    inputs `cond` maps) and write `out`."""
    g = copy.deepcopy(denoiser.graph)
    _rename_graph(g, {CONTRACT.x_name: x, CONTRACT.t_name: t, g.output[0].name: out, **(cond or {})})
    return list(g.node), list(g.initializer)


def _scalar(name: str, value: float, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def history_names(plan: SamplingPlan) -> tuple[list[str], list[str]]:
    """Step-graph names of the history inputs (hist_1..hist_H) and of their next values."""
    ins = [f"hist_{j}" for j in range(1, plan.depth + 1)]
    return ins, [f"{n}_next" for n in ins]


def _columns(plan: SamplingPlan, noise: bool, edit: bool = False) -> tuple[str, ...]:
    """The plan columns a step reads, in table order (hist_j: column j-1 of plan.hist; edit graphs add
    the known-region and forward coefficients and `called`, 1 where the row calls the denoiser)."""
    return (("timesteps", "a", "b") + (("sigma",) if noise else ())
            + (("cx", "co", "p0") if plan.converts else ()) + tuple(history_names(plan)[0])
            + (("kx", "kn", "qx", "qn", "called") if edit else ()) + (("full",) if plan.cached_calls else ()))


def _column(plan: SamplingPlan, name: str) -> np.ndarray:
    if name.startswith("hist_"):
        return plan.hist[:, int(name.split("_")[1]) - 1]
    if name == "called":
        return (plan.calls != 0).astype(np.float32)
    if name == "full":  # feature caching: 1 = the full U-Net, 0 = the shallow graph on the carried feature
        return (plan.calls == 1).astype(np.float32)
    return getattr(plan, name)


def _rows(plan: SamplingPlan, noise: bool, options: GraphOptions) -> np.ndarray:
    """float32 [N, K], or for an edit graph [N·(H + 1), K]: row i·(H + 1) + j holds step i's
    coefficients when it is the j-th step run since the start (j = H: H or more)."""
    cols = _columns(plan, noise, options.edit)

    def table(p: SamplingPlan) -> np.ndarray:
        return np.stack([_column(p, c) for c in cols], axis=1).astype(np.float32)  # (rows of p, K)

    full = table(plan)  # the run from step 0
    h = plan.depth
    if not options.edit or h == 0:
        return full
    assert options.plan_for_start is not None, "an edit graph of a multistep plan needs plan_for_start"
    rows = np.repeat(full, h + 1, axis=0)  # j = H (steady state): the full run's rows
    for i in range(plan.steps):
        for j in range(min(h, i + 1)):  # step i as the j-th step of a run that starts at i - j
            rows[i * (h + 1) + j] = table(options.plan_for_start(i - j))[j]
    return rows


SPLIT_WIDTH = 6  # outputs per Split: WebGPU kernels bind input + outputs, and 8 storage buffers per stage is its default limit


def _split_row(row: str, outputs: list[str], name: str) -> list[onnx.NodeProto]:
    """Split the (K,) row into K tensors of shape (1,), at most SPLIT_WIDTH outputs per Split node
    (a Split of the row into groups, then of each group), so every kernel fits WebGPU's limits."""
    if len(outputs) <= SPLIT_WIDTH:
        return [helper.make_node("Split", [row, f"plan/split{len(outputs)}"], outputs, axis=0, name=name)]
    groups = [outputs[i:i + SPLIT_WIDTH] for i in range(0, len(outputs), SPLIT_WIDTH)]
    if len(groups) > SPLIT_WIDTH:
        raise ValueError(f"{len(outputs)} plan columns exceed two levels of {SPLIT_WIDTH}-way splits")
    names = [f"{name}/group{g}" for g in range(len(groups))]
    nodes = [helper.make_node("Split", [row, "plan/split_groups"], names, axis=0, name=name)]
    nodes += [helper.make_node("Split", [grp, f"plan/split{len(outs)}"], outs, axis=0, name=grp)
              for grp, outs in zip(names, groups, strict=True)]
    return nodes


def _split_tables(k: int) -> list[onnx.TensorProto]:
    """The split-size constants `_split_row` uses for a row of `k` columns."""
    sizes = {min(SPLIT_WIDTH, k - i) for i in range(0, k, SPLIT_WIDTH)}
    tabs = [numpy_helper.from_array(np.ones(s, dtype=np.int64), f"plan/split{s}") for s in sorted(sizes)]
    if k > SPLIT_WIDTH:
        groups = [min(SPLIT_WIDTH, k - i) for i in range(0, k, SPLIT_WIDTH)]
        tabs.append(numpy_helper.from_array(np.array(groups, dtype=np.int64), "plan/split_groups"))
    return tabs


def _plan_tables(plan: SamplingPlan, noise: bool, options: GraphOptions | None = None) -> list[onnx.TensorProto]:
    """The plan as one float32 table (a row per step, sampling order; see `_rows`) plus small constants.

    One Gather of row `step` and one Split (two levels of them past SPLIT_WIDTH columns) give every
    coefficient of a step: a few nodes per step whatever K is, which matters in a Loop body around
    a tiny denoiser.
    """
    options = options or GraphOptions()
    cols = _columns(plan, noise, options.edit)
    tabs = [numpy_helper.from_array(np.ascontiguousarray(_rows(plan, noise, options)), "plan/table"),
            *_split_tables(len(cols)),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "plan/zero1"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "plan/one1")]
    if plan.clip is not None:
        tabs += [_scalar("plan/clip_lo", plan.clip[0]), _scalar("plan/clip_hi", plan.clip[1])]
    if plan.depth >= 2 or plan.cached_calls:  # past outputs / the kept feature passed on as x·1 (_step_nodes)
        tabs.append(_scalar("plan/one", 1.0))
    if options.edit:
        tabs += [_scalar("plan/depth", plan.depth, np.int64), _scalar("plan/stride", plan.depth + 1, np.int64)]
    if options.guided:
        tabs += [_scalar("plan/two", 2, np.int64), _scalar("plan/one_f", 1.0),
                 *(numpy_helper.from_array(np.full([1] * (1 + len(c.shape)), c.null, dtype=c.np_dtype),
                                           f"plan/null_{c.name}") for c in options.cond)]
    return tabs


def _batch_nodes(x: str, batch: str, tag: str) -> list[onnx.NodeProto]:
    """batch = Shape(x)[0:1], an int64 [1] tensor."""
    return [helper.make_node("Shape", [x], [f"x_shape{tag}"], name=f"shape{tag}"),
            helper.make_node("Slice", [f"x_shape{tag}", "plan/zero1", "plan/one1"], [batch], name=f"batch{tag}")]


def _reduce_mean(x: str, out: str, axes: list[int], opset: int, tag: str) -> list[onnx.NodeProto]:
    """ReduceMean over `axes`, keepdims (axes an attribute before opset 18, an input from 18 on)."""
    if opset < 18:
        return [helper.make_node("ReduceMean", [x], [out], axes=axes, keepdims=1, name=out)]
    axes_name = f"{out}/axes"
    return [helper.make_node("Constant", [], [axes_name], name=axes_name,
                             value=numpy_helper.from_array(np.array(axes, np.int64))),
            helper.make_node("ReduceMean", [x, axes_name], [out], keepdims=1, name=out)]


def _std_nodes(x: str, out: str, axes: list[int], opset: int) -> list[onnx.NodeProto]:
    """Per-sample standard deviation (ddof 0), keepdims: sqrt(mean((x - mean(x))²))."""
    return [*_reduce_mean(x, f"{out}/mean", axes, opset, ""),
            helper.make_node("Sub", [x, f"{out}/mean"], [f"{out}/dev"], name=f"{out}/dev"),
            helper.make_node("Mul", [f"{out}/dev", f"{out}/dev"], [f"{out}/sq"], name=f"{out}/sq"),
            *_reduce_mean(f"{out}/sq", f"{out}/var", axes, opset, ""),
            helper.make_node("Sqrt", [f"{out}/var"], [out], name=out)]


def _denoise_nodes(denoiser: onnx.ModelProto, x: str, t: str, out: str, batch: str, tag: str,
                   options: GraphOptions, opset: int, ndim: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """out = the denoiser's output at (x, t); for a guided graph the CFG combination (as
    `runtime.guidance`): one call on [x; x], [t; t], [given; null], then u + w·(c − u), rescaled by φ."""
    n = lambda s: f"{s}{tag}"  # noqa: E731 - a local naming helper
    if not options.guided:
        return _denoiser_parts(denoiser, x, t, out)
    nodes = [helper.make_node("Concat", [x, x], [n("x2")], axis=0, name=n("x2")),  # (2B, ...)
             helper.make_node("Concat", [t, t], [n("t2")], axis=0, name=n("t2"))]  # (2B,)
    cond = {}
    for c in options.cond:  # [given; null]
        nodes += [helper.make_node("Shape", [c.name], [n(f"{c.name}/shape")], name=n(f"{c.name}/shape")),
                  helper.make_node("Expand", [f"plan/null_{c.name}", n(f"{c.name}/shape")], [n(f"{c.name}/null")],
                                   name=n(f"{c.name}/null")),
                  helper.make_node("Concat", [c.name, n(f"{c.name}/null")], [n(f"{c.name}2")], axis=0,
                                   name=n(f"{c.name}2"))]
        cond[c.name] = n(f"{c.name}2")
    den_nodes, den_inits = _denoiser_parts(denoiser, n("x2"), n("t2"), n("out2"), cond)
    axes = list(range(1, ndim))
    nodes += [
        *den_nodes,
        helper.make_node("Mul", [batch, "plan/two"], [n("b2")], name=n("b2")),
        helper.make_node("Slice", [n("out2"), "plan/zero1", batch, "plan/zero1"], [n("c")], name=n("c")),
        helper.make_node("Slice", [n("out2"), batch, n("b2"), "plan/zero1"], [n("u")], name=n("u")),
        # u + w·(c − u)
        helper.make_node("Sub", [n("c"), n("u")], [n("c-u")], name=n("c-u")),
        helper.make_node("Mul", [n("c-u"), "guidance_scale"], [n("w(c-u)")], name=n("w(c-u)")),
        helper.make_node("Add", [n("w(c-u)"), n("u")], [n("cfg")], name=n("cfg")),
        # rescale (φ = 0: the plain combination, exactly)
        *_std_nodes(n("c"), n("std_c"), axes, opset),
        *_std_nodes(n("cfg"), n("std_cfg"), axes, opset),
        helper.make_node("Div", [n("std_c"), n("std_cfg")], [n("factor")], name=n("factor")),
        helper.make_node("Mul", [n("factor"), "guidance_rescale"], [n("phi_f")], name=n("phi_f")),
        helper.make_node("Sub", ["plan/one_f", "guidance_rescale"], [n("1-phi")], name=n("1-phi")),
        helper.make_node("Add", [n("phi_f"), n("1-phi")], [n("mix")], name=n("mix")),
        helper.make_node("Mul", [n("cfg"), n("mix")], [n("rescaled")], name=n("rescaled")),
        helper.make_node("Equal", ["guidance_rescale", "plan/zero_f"], [n("no_rescale")], name=n("no_rescale")),
        helper.make_node("Where", [n("no_rescale"), n("cfg"), n("rescaled")], [out], name=n("guided")),
    ]
    return nodes, den_inits


def _cache_nodes(cache: CacheGraphs, x: str, t: str, out: str, feature: tuple[str, str],
                 n: Callable[[str], str]) -> list[onnx.NodeProto]:
    """If(full[step]): (out, feature_out) = full(x, t), else (shallow(x, t, feature_in), feature_in·1).
    Each branch holds its graph's weights as its own initializers (as the Loop body does: ORT re-packs
    a Conv's weights only in the Conv's own graph)."""
    f_in, f_out = feature
    info = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None)  # noqa: E731
    g_full = copy.deepcopy(cache.full.graph)
    _rename_graph(g_full, {CONTRACT.x_name: x, CONTRACT.t_name: t, CONTRACT.out_name: n("out_full"),
                           cache.feature_name: n("feat_full")}, prefix=PREFIX)
    then = helper.make_graph(list(g_full.node), n("full"), [], [info(n("out_full")), info(n("feat_full"))],
                             initializer=list(g_full.initializer))
    g_sh = copy.deepcopy(cache.shallow.graph)
    _rename_graph(g_sh, {CONTRACT.x_name: x, CONTRACT.t_name: t, CONTRACT.out_name: n("out_shallow"),
                         cache.feature_name: f_in}, prefix="shallow/")
    kept = helper.make_node("Mul", [f_in, "plan/one"], [n("feat_kept")], name=n("feat_kept"))
    other = helper.make_graph([*g_sh.node, kept], n("cached"), [], [info(n("out_shallow")), info(n("feat_kept"))],
                              initializer=list(g_sh.initializer))
    return [helper.make_node("Cast", [n("c_full")], [n("is_full")], to=TensorProto.BOOL, name=n("is_full")),
            helper.make_node("If", [n("is_full")], [out, f_out], then_branch=then, else_branch=other,
                             name=n("full_or_cached"))]


def _step_nodes(
    plan: SamplingPlan, x: str, step: str, noise: str | None, x_prev: str, batch: str, tag: str,
    hist: tuple[list[str], list[str]] = ([], []), *, denoiser: onnx.ModelProto, opset: int, ndim: int,
    options: GraphOptions | None = None, noise_start: bool = False, feature: tuple[str, str] | None = None,
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes of one step, the denoiser call included, and the initializers they need.

    `batch` is an int64 [1] tensor holding B. For multistep plans `hist` = (inputs d_{i-1}..d_{i-H},
    outputs d_i..d_{i-H+1}) moves on by one step. Edit graphs read ``start``, ``image``, ``mask``;
    with `noise_start` (the step graph) x is the noise z at step == start and is noised here.
    Names are suffixed with `tag` so the same builder serves the main graph and a Loop body.
    With `options.cache`, `feature` = (the kept feature in, the feature out): the step runs the full
    graph (a new feature) or the shallow one (the kept feature passed on) inside an ``If``.
    """
    options = options or GraphOptions()
    n = lambda s: f"{s}{tag}"  # noqa: E731 - a local naming helper
    t, out = n("t"), n("out")
    cols = _columns(plan, noise is not None, options.edit)
    hist_in, hist_out = hist
    row = step
    before: list[onnx.NodeProto] = []
    if options.edit:  # row i·(H + 1) + min(i − start, H) of the start-aware table
        row = n("row_index")
        before += [helper.make_node("Sub", [step, "start"], [n("since")], name=n("since")),
                   helper.make_node("Min", [n("since"), "plan/depth"], [n("warmup")], name=n("warmup")),
                   helper.make_node("Mul", [step, "plan/stride"], [n("base")], name=n("base")),
                   helper.make_node("Add", [n("base"), n("warmup")], [row], name=row)]
    before += [
        # the coefficients of row `step`, each float32 [1] (broadcasts over (B, ...))
        helper.make_node("Gather", ["plan/table", row], [n("row")], name=n("row")),          # (K,)
        *_split_row(n("row"), [n(f"c_{c}") for c in cols], n("coefficients")),
        # t = Expand(timesteps[step], [B])                                    # (B,)
        helper.make_node("Expand", [n("c_timesteps"), batch], [t], name=n("t")),
    ]
    if noise_start:  # at step == start, x is z: x = qx·image + qn·z
        x_in = n("x_in")
        before += [helper.make_node("Equal", [step, "start"], [n("first")], name=n("first")),
                   helper.make_node("Mul", [x, n("c_qn")], [n("qz")], name=n("qz")),
                   helper.make_node("Mul", ["image", n("c_qx")], [n("qi")], name=n("qi")),
                   helper.make_node("Add", [n("qz"), n("qi")], [n("noised")], name=n("noised")),
                   helper.make_node("Where", [n("first"), n("noised"), x], [x_in], name=x_in)]
        x = x_in
    den_nodes, inits = _denoise_nodes(denoiser, x, t, out, batch, tag, options, opset, ndim)
    if options.cache is not None:
        assert feature is not None and not options.guided and not options.edit
        den_nodes, inits = _cache_nodes(options.cache, x, t, out, feature, n), []
    if options.edit and np.any(plan.calls == 0):  # RePaint undo rows: no call, out = 0 (b = p0 = 0 there)
        then = helper.make_graph(den_nodes, n("call"), [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                                 initializer=inits)
        other = helper.make_graph(
            [helper.make_node("Shape", [x], [n("x_shape_undo")], name=n("x_shape_undo")),
             helper.make_node("ConstantOfShape", [n("x_shape_undo")], [n("out_undo")], name=n("out_undo"),
                              value=numpy_helper.from_array(np.zeros(1, np.float32)))],
            n("undo"), [], [helper.make_tensor_value_info(n("out_undo"), TensorProto.FLOAT, None)])
        den_nodes, inits = [helper.make_node("Cast", [n("c_called")], [n("calls")], to=TensorProto.BOOL,
                                             name=n("calls")),
                            helper.make_node("If", [n("calls")], [out], then_branch=then, else_branch=other,
                                             name=n("call_or_undo"))], []
    nodes = []
    if plan.converts:
        # d = [clip](cx·x + co·out), before the update (same order as the host loop)
        nodes += [
            helper.make_node("Mul", [x, n("c_cx")], [n("cxx")], name=n("cxx")),
            helper.make_node("Mul", [out, n("c_co")], [n("coo")], name=n("coo")),
            helper.make_node("Add", [n("cxx"), n("coo")], [n("d_raw")], name=n("d_raw")),
            helper.make_node("Clip", [n("d_raw"), "plan/clip_lo", "plan/clip_hi"], [n("d")], name=n("clip"))
            if plan.clip is not None else helper.make_node("Identity", [n("d_raw")], [n("d")], name=n("d")),
        ]
    nodes += [
        # x_prev = a·x + b·out ...                                            # (B, ...)
        helper.make_node("Mul", [x, n("c_a")], [n("ax")], name=n("ax")),
        helper.make_node("Mul", [out, n("c_b")], [n("bo")], name=n("bo")),
        helper.make_node("Add", [n("ax"), n("bo")], [n("lin")], name=n("lin")),
    ]
    acc = n("lin")
    if plan.converts:
        # ... + p0·d + Σ_j hist_j·d_{i-j}
        terms = [(n("d"), "p0")] + [(h, f"hist_{j}") for j, h in enumerate(hist_in, start=1)]
        for value, col in terms:
            nodes += [helper.make_node("Mul", [value, n(f"c_{col}")], [n(f"w_{col}")], name=n(f"w_{col}")),
                      helper.make_node("Add", [acc, n(f"w_{col}")], [n(f"acc_{col}")], name=n(f"acc_{col}"))]
            acc = n(f"acc_{col}")
        # the history moves on one step: d_i first, then d_{i-1} .. d_{i-H+1}. A past output passed
        # on is multiplied by 1 rather than copied by an Identity: onnxruntime-web 1.30's WebGPU EP
        # corrupts the other reader of a graph input that an Identity hands straight to an output
        # (wrong digits samples, no error; measured), and x·1 is exact.
        for src, dst in zip([n("d"), *hist_in][: len(hist_out)], hist_out, strict=True):
            nodes.append(helper.make_node("Identity", [src], [dst], name=f"shift/{dst}") if src == n("d")
                         else helper.make_node("Mul", [src, "plan/one"], [dst], name=f"shift/{dst}"))
    updated = x_prev if not options.edit else n("x_unmasked")
    if noise is not None:
        # ... + sigma·z  (sigma = 0 on deterministic rows: z is read but adds exactly 0)
        nodes += [
            helper.make_node("Mul", [noise, n("c_sigma")], [n("sz")], name=n("sz")),
            helper.make_node("Add", [acc, n("sz")], [updated], name=n("x_prev")),
        ]
    else:
        nodes.append(helper.make_node("Identity", [acc], [updated], name=n("x_prev")))
    if options.edit:
        # the known region after a calling row: kx·image + kn·z (the row's own noise)
        assert noise is not None, "edit graphs take the per-step noise"
        nodes += [helper.make_node("Mul", ["image", n("c_kx")], [n("ki")], name=n("ki")),
                  helper.make_node("Mul", [noise, n("c_kn")], [n("kz")], name=n("kz")),
                  helper.make_node("Add", [n("ki"), n("kz")], [n("known")], name=n("known")),
                  helper.make_node("Greater", ["mask", "plan/half"], [n("mask_b")], name=n("mask_b")),
                  helper.make_node("Cast", [n("c_called")], [n("called_b")], to=TensorProto.BOOL, name=n("called_b")),
                  helper.make_node("And", [n("mask_b"), n("called_b")], [n("keep")], name=n("keep")),
                  helper.make_node("Where", [n("keep"), n("known"), updated], [x_prev], name=n("masked"))]
    return [*before, *den_nodes, *nodes], inits


def _tensor_info(name: str, sample_shape: Iterable[int], dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, ["batch", *sample_shape])


def _model(graph: onnx.GraphProto, denoiser: onnx.ModelProto, opset: int,
           metadata: dict[str, str]) -> onnx.ModelProto:
    others = [o for o in denoiser.opset_import if o.domain not in ("", "ai.onnx")]
    opsets = [helper.make_opsetid("", opset), *others]
    # the lowest IR version the opsets allow (8 for model-local functions), so that older
    # ONNX Runtime builds in hosts (Node, C++) load it; not the newest the onnx package writes
    ir = max(helper.find_min_ir_version_for(opsets, ignore_unknown=True), 8 if denoiser.functions else 0)
    model = helper.make_model(graph, opset_imports=opsets, producer_name="ddpm-rt export-sampler",
                              ir_version=ir)
    model.functions.extend(denoiser.functions)  # model-local functions the denoiser calls
    helper.set_model_props(model, metadata)
    return model


def _extra_inputs(options: GraphOptions, sample_shape: tuple[int, ...]) -> list[onnx.ValueInfoProto]:
    """The graph inputs a guided / edit graph adds, in the documented order."""
    infos = [helper.make_tensor_value_info(c.name, _ONNX_TYPE[c.dtype], ["batch", *c.shape]) for c in options.cond]
    if options.guided:
        infos += [helper.make_tensor_value_info(name, TensorProto.FLOAT, []) for name in GUIDANCE_INPUTS]
    if options.edit:
        infos += [helper.make_tensor_value_info("start", TensorProto.INT64, []),
                  _tensor_info("image", sample_shape), _tensor_info("mask", sample_shape)]
    return infos


def _extra_constants(options: GraphOptions) -> list[onnx.TensorProto]:
    consts = []
    if options.guided:
        consts.append(_scalar("plan/zero_f", 0.0))
    if options.edit:
        consts.append(_scalar("plan/half", 0.5))
    return consts


def build_step_graph(
    denoiser: onnx.ModelProto, plan: SamplingPlan, sample_shape: tuple[int, ...], metadata: dict[str, str],
    options: GraphOptions | None = None,
) -> onnx.ModelProto:
    """One fused reverse step: (x, step, noise, ...) -> x_prev."""
    options = options or GraphOptions()
    opset = _check_denoiser(denoiser, options.cond)
    hist = history_names(plan)
    nodes, den_inits = _step_nodes(plan, "x", "step", "noise", "x_prev", "batch", tag="", hist=hist,
                                   denoiser=denoiser, opset=opset, ndim=1 + len(sample_shape), options=options,
                                   noise_start=options.edit)
    graph = helper.make_graph(
        [*_batch_nodes("x", "batch", ""), *nodes],
        "ddpm_rt_step",
        inputs=[_tensor_info("x", sample_shape),
                helper.make_tensor_value_info("step", TensorProto.INT64, []),
                _tensor_info("noise", sample_shape),
                *(_tensor_info(h, sample_shape) for h in hist[0]),
                *_extra_inputs(options, sample_shape)],
        outputs=[_tensor_info("x_prev", sample_shape), *(_tensor_info(h, sample_shape) for h in hist[1])],
        initializer=[*_plan_tables(plan, noise=True, options=options), *_extra_constants(options), *den_inits],
    )
    return _model(graph, denoiser, opset, metadata)


def build_loop_graph(
    denoiser: onnx.ModelProto, plan: SamplingPlan, sample_shape: tuple[int, ...], metadata: dict[str, str],
    options: GraphOptions | None = None,
) -> onnx.ModelProto:
    """Every step in one ONNX Loop (loop-carried x): x_init -> x_0.

    A plain graph is for deterministic plans only (sigma = 0 on every row; the caller checks). An
    edit graph takes the per-step noise as an input and runs steps start..N-1 from
    x_start = qx·image + qn·x_init.
    """
    options = options or GraphOptions()
    assert options.edit or not plan.stochastic, "the plain full-loop graph has no noise input"
    opset = _check_denoiser(denoiser, options.cond)
    # Loop body: (iteration i, cond, x_i) -> (cond, x_{i+1}). The denoiser's weights are
    # initializers of the body itself, not read from the outer scope: ONNX Runtime's CPU
    # layout rewrite (NCHWc convolutions) must re-pack a Conv's weights in the Conv's own
    # graph, so with outer-scope weights a Loop body would run slower, different kernels
    # than a plain denoiser session. The small plan table and B (computed once, from x_init)
    # stay in the main graph.
    h_in, h_out = (["body/" + h for h in names] for names in history_names(plan))
    step, noise, pre = "body/i", None, []
    if options.edit:  # step = start + i; z = noise[step]
        step, noise = "body/step", "body/z"
        pre = [helper.make_node("Add", ["body/i", "start"], [step], name="body/step"),
               helper.make_node("Gather", ["noise", step], [noise], name="body/z")]
    cache = options.cache
    f_in, f_out = (["body/feat"], ["body/feat_next"]) if cache is not None else ([], [])
    nodes, den_inits = _step_nodes(plan, "body/x", step, noise, "body/x_next", "loop/batch", tag="@body",
                                   hist=(h_in, h_out), denoiser=denoiser, opset=opset, ndim=1 + len(sample_shape),
                                   options=options, feature=(f_in[0], f_out[0]) if cache is not None else None)
    feat_info = lambda name: helper.make_tensor_value_info(  # noqa: E731
        name, TensorProto.FLOAT, ["batch", *cache.feature_shape])  # type: ignore[union-attr]
    body = helper.make_graph(
        [*pre, *nodes, helper.make_node("Identity", ["body/cond"], ["body/cond_out"], name="body/cond")],
        "ddpm_rt_loop_body",
        inputs=[helper.make_tensor_value_info("body/i", TensorProto.INT64, []),
                helper.make_tensor_value_info("body/cond", TensorProto.BOOL, []),
                _tensor_info("body/x", sample_shape), *(_tensor_info(h, sample_shape) for h in h_in),
                *(feat_info(f) for f in f_in)],
        outputs=[helper.make_tensor_value_info("body/cond_out", TensorProto.BOOL, []),
                 _tensor_info("body/x_next", sample_shape), *(_tensor_info(h, sample_shape) for h in h_out),
                 *(feat_info(f) for f in f_out)],
        initializer=den_inits,
    )
    # multistep: hist_1..hist_H are loop-carried state, zeros before the first step
    zeros = [helper.make_node("Shape", ["x_init"], ["loop/x_shape"], name="loop/x_shape"),
             helper.make_node("ConstantOfShape", ["loop/x_shape"], ["loop/zeros"], name="loop/zeros",
                              value=numpy_helper.from_array(np.zeros(1, np.float32)))] if h_in else []
    start_nodes, x0, trip = [], "x_init", "loop/trip_count"
    if options.edit:  # x_start = qx[start]·image + qn[start]·x_init; N - start steps
        cols = _columns(plan, True, True)
        x0, trip = "loop/x_start", "loop/trips"
        start_nodes = [
            helper.make_node("Mul", ["start", "plan/stride"], ["loop/start_row"], name="loop/start_row"),
            helper.make_node("Gather", ["plan/table", "loop/start_row"], ["loop/row"], name="loop/row"),
            *_split_row("loop/row", [f"loop/c_{c}" for c in cols], "loop/coefficients"),
            helper.make_node("Mul", ["x_init", "loop/c_qn"], ["loop/qz"], name="loop/qz"),
            helper.make_node("Mul", ["image", "loop/c_qx"], ["loop/qi"], name="loop/qi"),
            helper.make_node("Add", ["loop/qz", "loop/qi"], [x0], name="loop/x_start"),
            helper.make_node("Sub", ["loop/trip_count", "start"], [trip], name="loop/trips"),
        ]
    feat0, feat_consts = [], []
    if cache is not None:  # the kept feature: zeros [B, *feature_shape] before the first (full) step
        zeros += [helper.make_node("Concat", ["loop/batch", "loop/feat_dims"], ["loop/feat_shape"], axis=0,
                                   name="loop/feat_shape"),
                  helper.make_node("ConstantOfShape", ["loop/feat_shape"], ["loop/feat0"], name="loop/feat0",
                                   value=numpy_helper.from_array(np.zeros(1, np.float32)))]
        feat0 = ["loop/feat0"]
        feat_consts = [numpy_helper.from_array(np.array(cache.feature_shape, np.int64), "loop/feat_dims")]
    loop = helper.make_node("Loop", [trip, "loop/cond", x0, *(["loop/zeros"] * len(h_in)), *feat0],
                            ["x_0", *(f"loop/hist_{j}_final" for j in range(1, len(h_in) + 1)),
                             *(["loop/feat_final"] if feat0 else [])],
                            name="sampler_loop", body=body)
    inputs = [_tensor_info("x_init", sample_shape)]
    extra = _extra_inputs(options, sample_shape)
    if options.edit:
        extra.append(helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["steps", "batch", *sample_shape]))
    graph = helper.make_graph(
        [*_batch_nodes("x_init", "loop/batch", "@main"), *zeros, *start_nodes, loop],
        "ddpm_rt_full_loop",
        inputs=[*inputs, *extra],
        outputs=[_tensor_info("x_0", sample_shape)],
        initializer=[_scalar("loop/trip_count", plan.steps, np.int64),
                     numpy_helper.from_array(np.array(True), "loop/cond"),
                     *_plan_tables(plan, noise=options.edit, options=options), *_extra_constants(options),
                     *feat_consts],
    )
    return _model(graph, denoiser, opset, metadata)


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker on the fused model, as an ExportError."""
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid model"
        raise ExportError(f"the fused sampler graph is not valid ONNX: {first}") from None

